"""`devid revoke` and `devid unrevoke`: end trust in a certificate, a device, a lot, a model or
every device of a manufacturer CA; lift a certificateHold."""

from __future__ import annotations

from typing import Annotated

import typer

from devid.authority.revocation import RevocationResult, RevokeRequest, Selector, revoke, unrevoke
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, print_result
from devid.errors import RequestInvalid
from devid.pki.reasons import Reason

_Serial = Annotated[str | None, typer.Option("--serial", help="one certificate, by serial (hex)")]
_Device = Annotated[str | None, typer.Option("--device", help="a device and all its certificates")]
_Lot = Annotated[str | None, typer.Option("--lot", help="every device of a production lot")]
_Model = Annotated[str | None, typer.Option("--model", help="every device of a model")]
_Maker = Annotated[
    str | None,
    typer.Option("--manufacturer", help="every device under a registered manufacturer CA (or devid's own)"),
]
_DryRun = Annotated[bool, typer.Option("--dry-run", help="count what would change; change nothing")]


def _selector(**given: str | None) -> tuple[Selector, str]:
    chosen = [(Selector(name), value) for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise RequestInvalid(
            "revocation-selector", "name exactly one of --serial, --device, --lot, --model, --manufacturer"
        )
    return chosen[0]


def _report(result: RevocationResult, verb: str, as_json: bool) -> None:
    info = {
        "revocation": result.id,
        "certificates": result.certificates,
        "devices": result.devices,
        "dry_run": result.dry_run,
        "cas": list(result.cas),
    }
    done = "would be " + verb if result.dry_run else verb
    print_result(info, f"{result.certificates} certificate(s) and {result.devices} device(s) {done}", as_json)


def revoke_command(
    serial: _Serial = None,
    device: _Device = None,
    lot: _Lot = None,
    model: _Model = None,
    manufacturer: _Maker = None,
    reason: Annotated[
        str,
        typer.Option("--reason", help="RFC 5280 reason (keyCompromise, certificateHold, ...)"),
    ] = "unspecified",
    note: Annotated[str, typer.Option("--note", help="why, for the audit log")] = "",
    dry_run: _DryRun = False,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one certificate, a device, a lot, a model or a manufacturer's devices, in one
    audited transaction. keyCompromise of a device's certificate revokes the device;
    certificateHold suspends it until `devid unrevoke`."""
    selector, value = _selector(serial=serial, device=device, lot=lot, model=model, manufacturer=manufacturer)
    request = RevokeRequest(selector, value, Reason.parse(reason), note, dry_run)
    _report(revoke(authority(home, passphrase_file), request, "cli"), "revoked", as_json)


def unrevoke_command(
    serial: _Serial = None,
    device: _Device = None,
    lot: _Lot = None,
    model: _Model = None,
    manufacturer: _Maker = None,
    dry_run: _DryRun = False,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lift a certificateHold (nothing else can be lifted): the certificates are good again and
    their devices ACTIVE."""
    selector, value = _selector(serial=serial, device=device, lot=lot, model=model, manufacturer=manufacturer)
    _report(
        unrevoke(authority(home, passphrase_file), selector, value, "cli", dry_run=dry_run),
        "released",
        as_json,
    )
