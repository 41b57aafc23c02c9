"""`devid revocation report`: how big CRLs, OCSP responses, compact (COSE) status answers, filters
and allowlists are for this store, and how long each takes to reach a device over NB-IoT and
LoRaWAN. `devid revocation status-request` / `status-check`: a device's side of compact status
(the request body for `FETCH /st`, and the verification of the answer)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from rich.markup import escape
from rich.table import Table

from devid.authority.core import Authority
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, console, print_json, print_one
from devid.errors import DevidError, PolicyError, StatusAnswerInvalid
from devid.fsutil import read_file
from devid.pki.serials import parse_serial, serial_hex
from devid.publish.service import status_service
from devid.revocation.cose_status import (
    StatusQuery,
    answer_kid,
    encode_request,
    issuer_key_hash,
    signer_kid,
    verify_status,
)
from devid.revocation.report import (
    FRAME_AIRTIME_S,
    LORAWAN_DUTY_CYCLE,
    LORAWAN_PAYLOAD,
    NBIOT_BITS_PER_S,
    Row,
    StatusSigners,
    size_report,
)

app = typer.Typer(help="Revocation at IoT scale: what status data costs a device.", no_args_is_help=True)


def report_rows(opened: Authority) -> list[Row]:
    """The size report of `opened`, with OCSP responses and allowlists from its status service."""
    service = status_service(opened)

    def allowlist(name: str) -> bytes:
        status, _, body = service.files.handle("GET", f"/allowlist/{name}", {}, b"")
        if status != 200:
            raise DevidError("allowlist-unavailable", f"the allowlist of {name!r} answered {status}")
        return body

    def compact(ca_name: str, serial: int) -> bytes:
        query = StatusQuery(issuer_key_hash(opened.cas[ca_name].certificate), serial)
        return service.compact.answer(query).answer

    return size_report(
        opened, StatusSigners(lambda der: service.responder.respond(der).der, allowlist, compact)
    )


@app.command("report")
def report(home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False) -> None:
    """Sizes of the status data devid publishes (per issuing CA) and its delivery time over NB-IoT
    and LoRaWAN (SF12, 1 % duty cycle); publishes first if nothing was published yet."""
    rows = report_rows(authority(home, passphrase_file))
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    table = Table("name", "bytes", "NB-IoT s", "LoRaWAN frames", "LoRaWAN h", "detail")
    for column in table.columns[1:5]:
        column.justify = "right"
    for row in rows:
        table.add_row(
            escape(row.name),
            f"{row.bytes:,}",
            f"{row.nbiot_s:.2f}",
            str(row.lorawan_frames),
            f"{row.lorawan_hours:.2f}",
            escape(row.detail),
        )
    # One line per row, even past the terminal's width (80 columns when piped), like `print_table`.
    width = console.width
    console.width = max(width, console.measure(table, options=console.options.update_width(1 << 16)).maximum)
    try:
        console.print(table)
    finally:
        console.width = width
    hourly = 3600 * LORAWAN_DUTY_CYCLE / FRAME_AIRTIME_S * LORAWAN_PAYLOAD
    console.print(
        f"NB-IoT at {NBIOT_BITS_PER_S / 1000:g} kbit/s; LoRaWAN {LORAWAN_PAYLOAD}-byte frames at SF12, "
        f"{FRAME_AIRTIME_S:.2f} s on air, {LORAWAN_DUTY_CYCLE:.0%} duty cycle: about {hourly:.0f} B per hour",
        highlight=False,
    )


def _pem_certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = read_file(path, what)
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificates(data)
        return pkcs7.load_der_pkcs7_certificates(data)
    except ValueError as exc:
        raise PolicyError(
            "certificate-file", f"{path}: not PEM certificates or a DER PKCS#7 bag: {exc}"
        ) from None


CaCertOpt = Annotated[Path, typer.Option("--ca-cert", help="the issuing CA's certificate (PEM)")]


@app.command("status-request")
def status_request(
    serial: Annotated[str, typer.Argument(help="serial of the certificate to ask about (hex)")],
    ca_cert: CaCertOpt,
    out: Annotated[Path, typer.Option("--out", help="file to write the CBOR request to")],
) -> None:
    """Write the body of a compact status request (`FETCH /st` over CoAP, Content-Format 60)."""
    (ca,) = _pem_certificates(ca_cert, "CA certificate")[:1]
    out.write_bytes(encode_request(ca, parse_serial(serial)))


@app.command("status-check")
def status_check(
    answer: Annotated[Path, typer.Argument(help="a compact status answer (COSE_Sign1)")],
    ca_cert: CaCertOpt,
    signers: Annotated[
        Path, typer.Option("--signers", help="the responder certificates (/st/signers: PEM or DER PKCS#7)")
    ],
    serial: Annotated[
        str | None, typer.Option("--serial", help="the serial the answer must be about")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a compact status answer as a device would and print what it says; exit 2 if it does
    not verify (wrong signer, bad signature, another serial, not current)."""
    data = read_file(answer, "status answer")
    (ca,) = _pem_certificates(ca_cert, "CA certificate")[:1]
    kid = answer_kid(data)
    signer = next(
        (c for c in _pem_certificates(signers, "signer certificates") if signer_kid(c) == kid), None
    )
    if signer is None:
        raise StatusAnswerInvalid(f"no signer certificate has kid {kid.hex()}")
    wanted = parse_serial(serial) if serial is not None else None
    found = verify_status(data, signer, ca, datetime.now(UTC), wanted)
    info: dict[str, object] = {
        "serial": serial_hex(found.serial),
        "status": found.status.value,
        "this_update": found.this_update.isoformat(),
        "next_update": found.next_update.isoformat(),
        "bytes": len(data),
    }
    if found.revoked_at is not None:
        info |= {
            "revoked_at": found.revoked_at.isoformat(),
            "reason": found.reason.rfc_name if found.reason else "",
        }
    print_one(info, as_json)
