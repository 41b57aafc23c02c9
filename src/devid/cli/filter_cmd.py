"""`devid filter`: the signed revocation filter of a CA: build, check a serial, diff two versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from rich.markup import escape

from devid.authority.status_signing import blob_signer
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, print_one, store
from devid.errors import PolicyError
from devid.fsutil import read_file
from devid.pki.serials import parse_serial
from devid.revocation import records
from devid.revocation.filter import diff_filters, load_filter
from devid.revocation.publisher import FILTER, build_filter_version
from devid.revocation.signed import peek
from devid.store import repo
from devid.store.engine import reading

app = typer.Typer(help="Revocation filters: build, check, diff.", no_args_is_help=True)
_MAX_FILTER = 64 * 1024 * 1024


@app.command("build")
def build(
    ca: Annotated[str, typer.Option("--ca", help="the issuing CA")],
    out: Annotated[Path, typer.Option("--out", help="file to write the signed filter to")],
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Build and sign a new version of CA's filter over every index it has issued (recorded, so
    versions keep growing with the server's)."""
    auth = authority(home, passphrase_file)
    now = auth.clock.now()
    with reading(auth.engine) as conn:
        state = records.ca_state(conn, ca)
        found = records.latest(conn, FILTER, ca)
        revoked = records.revoked_indices(conn, state, now)
    data = build_filter_version(auth, state, revoked, (found.number + 1) if found else 1, now)
    out.write_bytes(data)
    typer.echo(
        f"filter v{(found.number + 1) if found else 1} of {ca}: {len(revoked)} revoked of {state.next_index} "
        f"issued, {len(data)} bytes -> {out}"
    )


def _ca_key(
    home: Path | None, ca: str | None, ca_cert: Path | None, data: bytes
) -> ec.EllipticCurvePublicKey:
    """The key a filter must verify with: from --ca-cert, or the home's CA the filter names."""
    if ca_cert is not None:
        cert = x509.load_pem_x509_certificate(read_file(ca_cert, "CA certificate"))
    else:
        with reading(store(home)) as conn:
            name = ca or _named_ca(data)
            row = next((r for r in repo.all_cas(conn) if r.name == name), None)
        if row is None:
            raise PolicyError("unknown-ca", f"no CA named {name!r} in this home: give --ca-cert")
        cert = x509.load_der_x509_certificate(row.der)
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PolicyError("filter-key", "the CA certificate's key is not an EC key")
    return key


def _named_ca(data: bytes) -> str:
    return peek(data).scope


@app.command("check")
def check(
    serial: Annotated[str, typer.Argument(help="certificate serial (hex)")],
    filter_file: Annotated[Path, typer.Option("--filter", help="a signed filter file")],
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="CA certificate PEM to verify with")
    ] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is SERIAL revoked? Verifies the filter's signature first. Exit 0 good, 1 revoked, 2 not covered."""
    data = read_file(filter_file, "filter", limit=_MAX_FILTER)
    view = load_filter(data, _ca_key(home, None, ca_cert, data))
    answer = view.check_serial(parse_serial(serial))
    print_one(
        {"serial": serial, "answer": answer.value, "ca": view.ca_name, "version": view.version}, as_json
    )
    raise typer.Exit({"good": 0, "revoked": 1}.get(answer.value, 2))


@app.command("diff")
def diff(
    old: Annotated[Path, typer.Argument(help="the older signed filter")],
    new: Annotated[Path, typer.Argument(help="the newer signed filter")],
    out: Annotated[Path, typer.Option("--out", help="file to write the signed delta to")],
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """A signed delta that turns OLD into NEW (both verified first); signed by their CA."""
    old_data = read_file(old, "filter", limit=_MAX_FILTER)
    new_data = read_file(new, "filter", limit=_MAX_FILTER)
    auth = authority(home, passphrase_file)
    key = _ca_key(home, None, None, new_data)
    older, newer = load_filter(old_data, key), load_filter(new_data, key)
    delta = diff_filters(older, newer, sign=blob_signer(auth, newer.ca_name))
    out.write_bytes(delta)
    typer.echo(
        f"delta v{older.version} -> v{newer.version} of {escape(newer.ca_name)}: {len(delta)} bytes -> {out}"
    )
