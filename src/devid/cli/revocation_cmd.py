"""`devid revocation report`: how big CRLs, OCSP responses, compact (COSE) status answers, filters
and allowlists are for this
store, and how long each takes to reach a device over NB-IoT and LoRaWAN."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from devid.authority.core import Authority
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, console, print_json
from devid.errors import DevidError
from devid.publish.service import status_service
from devid.revocation.cose_status import StatusQuery, issuer_key_hash
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
