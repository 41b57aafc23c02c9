"""`devid crl build`: sign one CRL now, for publishing elsewhere (object storage, a CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from devid.cli.common import HomeOpt, PassphraseOpt, authority, console
from devid.revocation import crl

app = typer.Typer(help="Certificate revocation lists: build one for publishing.", no_args_is_help=True)


@app.command("build")
def build(
    ca: Annotated[str, typer.Option("--ca", help="the issuing CA (manufacturing, operational, root)")],
    delta: Annotated[bool, typer.Option("--delta", help="a delta CRL against the latest full one")] = False,
    shard: Annotated[
        int | None, typer.Option("--shard", help="one partition (its certificates name it)")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write here (default: stdout as PEM)")] = None,
    pem: Annotated[bool, typer.Option("--pem", help="PEM instead of DER in --out")] = False,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Build, sign and record a CRL (the server publishes the same ones on its own)."""
    built = crl.build(authority(home, passphrase_file), ca, shard=shard, delta=delta)
    if out is None:
        typer.echo(built.pem.decode(), nl=False)
        return
    out.write_bytes(built.pem if pem else built.der)
    kind = "delta CRL" if delta else "CRL"
    where = f"{ca} shard {shard}" if shard is not None else ca
    console.print(
        f"{kind} {built.number} of {escape(where)}: {built.entries} entries, {len(built.der)} bytes, "
        f"next update {built.next_update.isoformat()} → {escape(str(out))}",
        highlight=False,
    )
