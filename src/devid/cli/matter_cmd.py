"""`devid matter`: Matter attestation CAs (PAA, PAI per product line) and a commissioner's check of
a DAC chain."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from devid.authority.matter import create_paa, create_pai, stored_paas
from devid.authority.requests import MatterIds
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    print_one,
    print_result,
    read_file,
    store,
)
from devid.errors import NotFoundError, PolicyError
from devid.pki.encoding import load_certificates
from devid.pki.matter import Certificate, load_certificate, parse_id, verify_attestation

app = typer.Typer(
    help="Matter device attestation: PAA and PAI CAs, verifying a DAC chain.", no_args_is_help=True
)
paa_app = typer.Typer(help="Product Attestation Authorities: a Matter trust anchor.", no_args_is_help=True)
pai_app = typer.Typer(
    help="Product Attestation Intermediates: one per vendor and product line.", no_args_is_help=True
)
app.add_typer(paa_app, name="paa")
app.add_typer(pai_app, name="pai")

#: The files of a PAA store directory that are read (PEM, possibly several certificates, or DER).
PAA_SUFFIXES = frozenset({".pem", ".der", ".crt", ".cer"})


@paa_app.command("create")
def paa_create(
    vid: Annotated[
        str | None, typer.Option("--vid", help="Vendor ID the PAA names (hex); none: any vendor")
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a Matter PAA (self-signed, pathLen 1), stored with the home's CAs."""
    made = create_paa(
        authority(home, passphrase_file),
        None if vid is None else parse_id(vid, "VID"),
        "devid matter paa create",
    )
    print_result(made.as_dict(), f"created {made.name}: {made.subject} (serial {made.serial})", as_json)


@pai_app.command("create")
def pai_create(
    vid: Annotated[str, typer.Option("--vid", help="Vendor ID (hex)")],
    pid: Annotated[str, typer.Option("--pid", help="Product ID of the product line (hex)")],
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the PAI of a product line (pathLen 0), certified by the vendor's PAA."""
    ids = MatterIds(parse_id(vid, "VID"), parse_id(pid, "PID"))
    made = create_pai(authority(home, passphrase_file), ids, "devid matter pai create")
    print_result(made.as_dict(), f"created {made.name}: {made.subject} (serial {made.serial})", as_json)


def _paa_store(directory: Path) -> list[x509.Certificate]:
    """Every certificate of the PAA files in `directory` (a commissioner's PAA trust store)."""
    if not directory.is_dir():
        raise NotFoundError("matter-paa-store", f"PAA store {directory} is not a directory")
    found: list[x509.Certificate] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in PAA_SUFFIXES:
            continue
        try:
            found.extend(load_certificates(read_file(path, "PAA")))
        except PolicyError as exc:
            raise PolicyError("matter-paa-store-unreadable", f"PAA file {path}: {exc.message}") from None
    if not found:
        raise NotFoundError(
            "matter-paa-store-empty", f"PAA store {directory} holds no certificate (*.pem, *.der)"
        )
    return found


def _time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise PolicyError(
            "bad-time", f"--at {text!r} is not an ISO 8601 time such as 2026-12-01T00:00:00Z"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@app.command("verify")
def verify(
    dac: Annotated[Path, typer.Option("--dac", help="the device's DAC (PEM or DER)")],
    pai: Annotated[Path, typer.Option("--pai", help="its PAI (PEM or DER)")],
    paa_store: Annotated[
        Path | None,
        typer.Option("--paa-store", help="folder of trusted PAA certificates (default: the home's PAAs)"),
    ] = None,
    vid: Annotated[str | None, typer.Option("--vid", help="the Vendor ID the device reports (hex)")] = None,
    pid: Annotated[str | None, typer.Option("--pid", help="the Product ID the device reports (hex)")] = None,
    at: Annotated[str | None, typer.Option("--at", help="check at this ISO 8601 time (default: now)")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A commissioner's attestation checks of DAC and PAI: profiles, VID/PID, chain to a trusted
    PAA, validity. A failed rule exits 2 with `error: <message> [matter-<certificate>-<rule>]`."""
    dac_cert = load_certificate(read_file(dac, "DAC"), Certificate.DAC)
    pai_cert = load_certificate(read_file(pai, "PAI"), Certificate.PAI)
    paas = _paa_store(paa_store) if paa_store is not None else stored_paas(store(home))
    result = verify_attestation(
        dac_cert,
        pai_cert,
        paas,
        _time(at),
        reported_vid=None if vid is None else parse_id(vid, "VID"),
        reported_pid=None if pid is None else parse_id(pid, "PID"),
    )
    print_one(result.as_dict(), as_json)
