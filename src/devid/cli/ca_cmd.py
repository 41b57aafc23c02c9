"""`devid ca`: the CA hierarchy, the trust bundle, and rolling an issuing CA over."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.markup import escape

from devid.authority.core import RETIRED_ROLE, ca_states
from devid.authority.matter import MATTER_ROLES
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    console,
    print_json,
    print_table,
    store,
)
from devid.errors import NotFoundError, PolicyError
from devid.pki.encoding import fingerprint
from devid.store import repo
from devid.store.engine import reading

app = typer.Typer(
    help="Inspect the CA hierarchy, export the trust bundle, roll an issuing CA over.", no_args_is_help=True
)


def _rows(home: Path | None) -> list[dict[str, object]]:
    engine = store(home)
    with reading(engine) as conn:
        cas = repo.all_cas(conn)
    by_id = {ca.id: ca.name for ca in cas}
    states = ca_states(cas)
    return [
        {
            "name": ca.name,
            "role": ca.role,
            "state": states[ca.name].value,
            "parent": by_id.get(ca.parent_id),
            "subject": ca.subject,
            "serial": ca.serial,
            "not_after": ca.not_after.isoformat(),
            "key": ca.key_label,
            "fingerprint": fingerprint(ca.der),
            "der": ca.der,
        }
        for ca in cas
    ]


@app.command("list")
def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The CA hierarchy: root, manufacturing, operational and OCSP signers."""
    rows = _rows(home)
    if as_json:
        print_json([{k: v for k, v in r.items() if k != "der"} for r in rows])
        return
    print_table(
        ["name", "role", "state", "issuer", "subject", "serial", "not after"],
        [{**r, "issuer": r["parent"] or "(self)"} for r in rows],
    )


@app.command("show")
def show(name: str, home: HomeOpt = None, pem: Annotated[bool, typer.Option("--pem")] = False) -> None:
    """One CA in detail (or its certificate as PEM)."""
    row = next((r for r in _rows(home) if r["name"] == name), None)
    if row is None:
        raise NotFoundError("unknown-ca", f"no CA named {name!r}: see `devid ca list`")
    assert isinstance(row["der"], bytes)
    cert = x509.load_der_x509_certificate(row["der"])
    if pem:
        print(cert.public_bytes(serialization.Encoding.PEM).decode(), end="")
        return
    for key in ("name", "role", "state", "parent", "subject", "serial", "not_after", "key", "fingerprint"):
        console.print(f"[bold]{key:>12}[/]  {escape(str(row[key]))}", highlight=False)
    console.print(f"[bold]{'not_before':>12}[/]  {cert.not_valid_before_utc.isoformat()}")
    for ext in cert.extensions:
        console.print(
            f"[bold]{'extension':>12}[/]  {ext.oid._name}{' (critical)' if ext.critical else ''}: "
            f"{escape(str(ext.value))}",
            highlight=False,
        )


@app.command("export")
def export(
    home: HomeOpt = None,
    pem: Annotated[bool, typer.Option("--pem", help="PEM bundle (the only format for now)")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="write to a file instead of stdout")] = None,
    include_ocsp: Annotated[bool, typer.Option(help="include OCSP signer certificates")] = False,
) -> None:
    """The trust bundle: every CA certificate as PEM, root first. Matter PAAs and PAIs are not in
    it: they anchor Matter attestation only (`devid ca show NAME --pem`); nor are retired CAs, which
    authenticate no one (their certificates' status is still served)."""
    if not pem:
        raise PolicyError("format", "only --pem export is supported")
    left_out = {*MATTER_ROLES, RETIRED_ROLE} | (set() if include_ocsp else {"ocsp-signer"})
    bundle = b"".join(
        x509.load_der_x509_certificate(r["der"]).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
        for r in _rows(home)
        if r["role"] not in left_out
    )
    if out:
        out.write_bytes(bundle)
        console.print(f"wrote {escape(str(out))}", highlight=False)
    else:
        print(bundle.decode(), end="")


@app.command("rotate")
def rotate(
    ca: Annotated[str, typer.Option("--ca", help="the role to roll over: operational or manufacturing")],
    overlap_days: Annotated[
        int | None,
        typer.Option(
            "--overlap-days",
            help="how long both CAs stay trusted (the schedule for `devid ca retire`); default and "
            "advice: the LDevID lifetime, in which every device renews under the new CA at a due check-in",
        ),
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a successor of the operational or manufacturing CA, signed by the root; it issues from
    the next start of `devid serve` on (SIGHUP to a `--workers` server's supervisor: a rolling reload),
    while the old one stays trusted until `devid ca retire`."""
    from devid.authority.rotation import rotate as rotate_ca

    overlap = None if overlap_days is None else timedelta(days=overlap_days)
    done = rotate_ca(authority(home, passphrase_file), ca, overlap, "devid ca rotate")
    if as_json:
        print_json(
            [
                {
                    "role": done.role,
                    "previous": done.previous,
                    "new": done.new,
                    "serial": done.serial,
                    "not_after": done.not_after.isoformat(),
                    "retire_after": done.retire_after.isoformat(),
                }
            ]
        )
        return
    console.print(
        f"CA {escape(done.new)} (serial {done.serial}) is the {done.role} CA from the next start of "
        "`devid serve` on (or its rolling reload: `kill -HUP` a `--workers` server's supervisor); "
        f"{escape(done.previous)} stays trusted: retire it after "
        f"{done.retire_after:%Y-%m-%d} with `devid ca retire --ca {escape(done.previous)}`",
        highlight=False,
    )


@app.command("retire")
def retire(
    ca: Annotated[str, typer.Option("--ca", help="the CA to retire (by name, see `devid ca list`)")],
    force: Annotated[
        bool, typer.Option("--force", help="retire even though devices still hold certificates of it")
    ] = False,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """End a rotated CA's overlap: it no longer issues or authenticates clients; its CRLs and OCSP
    answers go on being served. Refused while devices hold unexpired certificates of it, unless --force."""
    from devid.authority.rotation import retire as retire_ca

    left = retire_ca(authority(home, passphrase_file), ca, force=force, actor="devid ca retire")
    stranded = (
        f"; {left.total} certificate(s) not renewed ({left.text()}) are no longer accepted"
        if left.total
        else ""
    )
    until = (
        f"; its status is served for certificates valid until {left.last_expiry:%Y-%m-%d}"
        if left.last_expiry
        else ""
    )
    console.print(
        f"CA {escape(ca)} is retired (restart `devid serve`, or `kill -HUP` a `--workers` server's "
        f"supervisor, to apply){stranded}{until}",
        highlight=False,
    )
