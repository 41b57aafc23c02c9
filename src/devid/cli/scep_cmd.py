"""`devid scep`: the SCEP server's settings and its registration authority."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from cryptography.hazmat.primitives import hashes, serialization

from devid.authority.scep_ra import registration_authority
from devid.authority.scep_rsa import set_scep_rsa
from devid.cli.common import HomeOpt, PassphraseOpt, authority, console, load_home, store

app = typer.Typer(no_args_is_help=True, add_completion=False)
LabelArg = Annotated[str, typer.Argument(help="the label (`''` for the base path /scep)")]


def _set(label: str, allowed: bool, home: HomeOpt) -> None:
    changed = set_scep_rsa(load_home(home), store(home), label, allowed, actor="cli", now=datetime.now(UTC))
    state = "accepts RSA-2048/3072 device keys" if allowed else "accepts ECDSA P-256 device keys only"
    suffix = "" if changed else " (unchanged)"
    console.print(f"SCEP on label {label!r} {state}{suffix}; restart `devid serve` to apply", highlight=False)


@app.command("allow-rsa")
def allow_rsa(label: LabelArg, home: HomeOpt = None) -> None:
    """Accept RSA-2048/3072 device keys over SCEP on LABEL (legacy clients; certificates of profile
    scep-rsa, 30 days by default). Audited; undo with deny-rsa."""
    _set(label, True, home)


@app.command("deny-rsa")
def deny_rsa(label: LabelArg, home: HomeOpt = None) -> None:
    """Accept only ECDSA P-256 device keys over SCEP on LABEL again (the default). Audited."""
    _set(label, False, home)


@app.command("ra")
def ra(home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """Print the SCEP RA certificate (PEM) and its SHA-256 fingerprint (`scepclient -ca-fingerprint`)."""
    current = registration_authority(authority(home, passphrase_file))
    console.print(
        current.certificate.public_bytes(serialization.Encoding.PEM).decode(), end="", highlight=False
    )
    console.print(f"sha256: {current.certificate.fingerprint(hashes.SHA256()).hex()}", highlight=False)
