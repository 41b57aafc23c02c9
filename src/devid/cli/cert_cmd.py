"""`devid cert`: issue from a CSR, show and list certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.markup import escape

from devid.authority.requests import NewDevice
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    console,
    print_json,
    print_one,
    print_table,
    read_file,
    store,
)
from devid.errors import NotFoundError, PolicyError
from devid.pki import c509
from devid.pki.der import hardware_module_names
from devid.pki.profiles import ProfileName
from devid.pki.serials import parse_serial, serial_hex
from devid.store import repo
from devid.store.engine import reading

app = typer.Typer(help="Issue, show and list certificates.", no_args_is_help=True)
ISSUABLE = {"idevid": ProfileName.IDEVID, "ldevid": ProfileName.LDEVID, "server": ProfileName.SERVER}


@app.command("issue")
def issue(
    csr: Annotated[Path, typer.Option("--csr", help="CSR file, PEM or DER")],
    profile: Annotated[str, typer.Option("--profile", help="idevid, ldevid or server")],
    device_serial: Annotated[str | None, typer.Option("--device-serial")] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="DNS name (server)")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="IP address (server)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="certificate PEM file (default stdout)")] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Issue a certificate from a CSR under a profile. The profile, not the CSR, decides its content.

    idevid registers a new device with --device-serial; ldevid is for an existing device.
    """
    if profile not in ISSUABLE:
        raise PolicyError(
            "unknown-profile", f"profile {profile!r} cannot be issued here; use one of {', '.join(ISSUABLE)}"
        )
    name = ISSUABLE[profile]
    if name in (ProfileName.IDEVID, ProfileName.LDEVID) and not device_serial:
        raise PolicyError("device-required", f"--profile {profile} needs --device-serial")
    data = read_file(csr, "CSR")
    auth = authority(home, passphrase_file)
    issued = auth.issue_csr(
        data,
        name,
        device_serial=device_serial if name != ProfileName.IDEVID else None,
        new_device=NewDevice(device_serial) if name == ProfileName.IDEVID and device_serial else None,
        dns=dns or [],
        ips=ip or [],
        actor="cli",
    )
    if out:
        out.write_bytes(issued.pem)
        console.print(
            f"issued {profile} serial {serial_hex(issued.serial)} -> {escape(str(out))}", highlight=False
        )
    else:
        print(issued.pem.decode(), end="")


@app.command("show")
def show(
    serial: str,
    home: HomeOpt = None,
    pem: Annotated[bool, typer.Option("--pem")] = False,
    show_c509: Annotated[
        bool, typer.Option("--c509", help="also its C509 encoding (hex, diagnostic) and size beside DER")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """One certificate by serial (hex)."""
    engine = store(home)
    with reading(engine) as conn:
        rows = repo.certificates_by_serial(conn, serial_hex(parse_serial(serial)))
    if not rows:
        raise NotFoundError("unknown-certificate", f"no certificate with serial {serial}")
    for row in rows:
        cert = x509.load_der_x509_certificate(row.der)
        if pem:
            print(cert.public_bytes(serialization.Encoding.PEM).decode(), end="")
            continue
        info = {
            "serial": row.serial,
            "profile": row.profile,
            "issuer": row.issuer_name,
            "subject": row.subject,
            "device": row.device_serial,
            "status": row.status,
            "not_before": row.not_before.isoformat(),
            "not_after": row.not_after.isoformat(),
            "fingerprint": row.fingerprint,
            "hardware_module_names": [
                f"{h.hw_type}:{h.hw_serial.decode(errors='replace')}" for h in hardware_module_names(cert)
            ],
        }
        if show_c509:
            info.update(c509_sizes(row.der))
        print_one(info, as_json)


def c509_sizes(der: bytes) -> dict[str, object]:
    """The C509 (type 3) encoding of a certificate and its size beside the DER's."""
    encoded = c509.encode_certificate(der)
    return {
        "der_bytes": len(der),
        "c509_bytes": len(encoded),
        "c509_ratio": round(len(encoded) / len(der), 3),
        "c509": encoded.hex(),
        "c509_diagnostic": c509.diagnostic(encoded),
    }


@app.command("list")
def list_(
    device: Annotated[str | None, typer.Option("--device", help="device serial")] = None,
    profile: Annotated[str | None, typer.Option("--profile")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 100,
    after: Annotated[int, typer.Option(help="continue after this row id (paging)")] = 0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Certificates in issue order, filtered by device and profile, one page at a time."""
    engine = store(home)
    with reading(engine) as conn:
        rows = repo.list_certificates(
            conn, device_serial=device, profile=profile, after_id=after, limit=max(1, min(limit, 10_000))
        )
    if as_json:
        print_json([dict(r._mapping) for r in rows])
        return
    columns = ["id", "serial", "profile", "issuer", "device", "not after", "status"]
    print_table(
        columns,
        [
            {
                "id": r.id,
                "serial": r.serial,
                "profile": r.profile,
                "issuer": r.issuer_name,
                "device": r.device_serial,
                "not_after": r.not_after.isoformat(),
                "status": r.status,
            }
            for r in rows
        ],
    )
