"""`devid ca`: the CA hierarchy and the trust bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.markup import escape

from devid.cli.common import HomeOpt, JsonOpt, console, print_json, print_table, store
from devid.errors import NotFoundError, PolicyError
from devid.pki.encoding import fingerprint
from devid.store import repo
from devid.store.engine import reading

app = typer.Typer(help="Inspect the CA hierarchy and export the trust bundle.", no_args_is_help=True)


def _rows(home: Path | None) -> list[dict[str, object]]:
    engine = store(home)
    with reading(engine) as conn:
        cas = repo.all_cas(conn)
    by_id = {ca.id: ca.name for ca in cas}
    return [
        {
            "name": ca.name,
            "role": ca.role,
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
        ["name", "role", "issuer", "subject", "serial", "not after"],
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
    for key in ("name", "role", "parent", "subject", "serial", "not_after", "key", "fingerprint"):
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
    """The trust bundle: every CA certificate as PEM, root first."""
    if not pem:
        raise PolicyError("format", "only --pem export is supported")
    bundle = b"".join(
        x509.load_der_x509_certificate(r["der"]).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]
        for r in _rows(home)
        if include_ocsp or r["role"] != "ocsp-signer"
    )
    if out:
        out.write_bytes(bundle)
        console.print(f"wrote {escape(str(out))}", highlight=False)
    else:
        print(bundle.decode(), end="")
