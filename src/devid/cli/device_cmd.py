"""`devid device`: enrollment secrets, approval, activation, enabling and disabling, showing and
listing devices with what they came through (manufacturer, enrollment, hub)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlalchemy import Engine

from devid.authority import devices
from devid.authority.requests import NewDevice
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    VersionOpt,
    authority,
    console,
    print_json,
    print_listing,
    print_record,
    print_result,
    print_table,
    store,
)
from devid.errors import NotFoundError, PolicyError
from devid.registry import hubs, manufacturers
from devid.store import repo
from devid.store.engine import reading
from devid.store.states import DeviceState

app = typer.Typer(help="Manage devices: enrollment secrets, approval, state.", no_args_is_help=True)


@app.command("add")
def add(
    serial: str,
    model: Annotated[str | None, typer.Option("--model", help="device model")] = None,
    lot: Annotated[str | None, typer.Option("--lot", help="production lot")] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a device that has no IDevID (ACTIVE, no certificate yet), so that `devid device
    enroll-secret SERIAL` can give it a secret for HTTP Basic EST enrollment."""
    auth = authority(home, passphrase_file)
    devices.add(auth, NewDevice(serial, model=model, lot=lot), "cli")
    print_result(_device(auth.engine, serial), f"device {serial} added", as_json)


@app.command("enroll-secret")
def enroll_secret(
    serial: str,
    ttl_hours: Annotated[float, typer.Option(help="hours until the secret expires")] = 24 * 7,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """A new single-use secret for HTTP Basic EST enrollment (user = SERIAL). Printed once, alone
    on the last line; only its hash is stored. The device must exist: `devid device add SERIAL`."""
    if ttl_hours <= 0:
        raise PolicyError("secret-ttl", "--ttl-hours must be positive")
    auth = authority(home, passphrase_file)
    try:
        secret = devices.create_enrollment_secret(auth, serial, "cli", timedelta(hours=ttl_hours))
    except NotFoundError as exc:
        raise NotFoundError(
            exc.code, f"{exc.message}: record it first with `devid device add {serial}`"
        ) from None
    expires = auth.clock.now() + timedelta(hours=ttl_hours)
    console.print(
        f"enrollment secret for device {escape(serial)} (single use, expires {expires.isoformat()}):",
        highlight=False,
    )
    print(secret)


@app.command("approve")
def approve(serial: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """Approve a device's enrollment under a policy that holds enrollments for approval."""
    devices.approve(authority(home, passphrase_file), serial, "cli")
    console.print(f"device {escape(serial)} approved", highlight=False)


ReasonOpt = Annotated[str, typer.Option(help="recorded in the audit log")]
LIST_COLUMNS = ["id", "serial", "state", "model", "lot", "manufacturer", "enrollment", "hub", "properties"]


def _device_info(row: Any) -> dict[str, Any]:
    """A device as `repo.device_view` reads it: its record and what it came through."""

    def when(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "serial": row.serial,
        "state": row.state,
        "model": row.model,
        "lot": row.lot,
        "line": row.line,
        "se_backend": row.se_backend,
        "manufacturer": row.manufacturer,
        "enrollment": f"{row.enrollment_kind}:{row.enrollment_name}" if row.enrollment_name else None,
        "hub": row.hub,
        "properties": json.loads(row.properties) if row.properties else {},
        "created_at": when(row.created_at),
        "updated_at": when(row.updated_at),
        "registered_at": when(row.registered_at),
        "approval_requested_at": when(row.approval_requested_at),
        "approved_at": when(row.approved_at),
        "version": row.version,
    }


def _device(engine: Engine, serial: str) -> dict[str, Any]:
    with reading(engine) as conn:
        row = repo.device_view(conn, serial)
    if row is None:
        raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
    return _device_info(row)


def _set_state(
    serial: str,
    state: DeviceState,
    reason: str,
    home: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
    version: int | None,
    from_states: tuple[DeviceState, ...] | None = None,
) -> None:
    auth = authority(home, passphrase_file)
    devices.set_state(auth, serial, state, "cli", reason, version=version, from_states=from_states)
    print_result(_device(auth.engine, serial), f"device {serial} is now {state}", as_json)


@app.command("activate")
def activate(
    serial: str,
    reason: ReasonOpt = "",
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activate a device that is PENDING_ACTIVATION (registered just in time) or INACTIVE."""
    _set_state(
        serial,
        DeviceState.ACTIVE,
        reason,
        home,
        passphrase_file,
        as_json,
        version,
        (DeviceState.PENDING_ACTIVATION, DeviceState.INACTIVE),
    )


@app.command("disable")
def disable(
    serial: str,
    reason: ReasonOpt = "",
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a device INACTIVE: it is refused enrollment and renewal until enabled again."""
    _set_state(serial, DeviceState.INACTIVE, reason, home, passphrase_file, as_json, version)


@app.command("enable")
def enable(
    serial: str,
    reason: ReasonOpt = "",
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a device ACTIVE again (not a REVOKED one: revocation is final)."""
    _set_state(serial, DeviceState.ACTIVE, reason, home, passphrase_file, as_json, version)


@app.command("show")
def show(serial: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """One device: its state, registration, approval and certificates."""
    engine = store(home)
    info = _device(engine, serial)
    with reading(engine) as conn:
        certs = repo.list_certificates(conn, device_serial=serial, limit=10_000)
    info["certificates"] = [
        {
            "serial": c.serial,
            "profile": c.profile,
            "issuer": c.issuer_name,
            "status": c.status,
            "not_before": c.not_before.isoformat(),
            "not_after": c.not_after.isoformat(),
            "fingerprint": c.fingerprint,
        }
        for c in certs
    ]
    if as_json:
        print_json([info])
        return
    print_record({k: v for k, v in info.items() if k != "certificates"})
    print_table(["serial", "profile", "issuer", "not after", "status"], info["certificates"])


def _known(engine: Engine, hub: str | None, manufacturer: str | None) -> None:
    """A filter naming a hub or manufacturer that does not exist is a typo, not an empty fleet."""
    with reading(engine) as conn:
        if hub is not None:
            hubs.get(conn, hub)
        if manufacturer is not None:
            manufacturers.get(conn, manufacturer)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option("--state", help="only devices in this state")] = None,
    hub: Annotated[str | None, typer.Option("--hub", help="only devices allocated to this hub")] = None,
    manufacturer: Annotated[
        str | None, typer.Option("--manufacturer", help="only devices of this manufacturer")
    ] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 100,
    after: Annotated[int, typer.Option(help="continue after this row id (paging)")] = 0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Devices in creation order, optionally filtered, one page at a time."""
    wanted = devices.device_state(state) if state is not None else None
    engine = store(home)
    _known(engine, hub, manufacturer)
    with reading(engine) as conn:
        rows = repo.list_devices(
            conn,
            state=wanted,
            hub=hub,
            manufacturer=manufacturer,
            after_id=after,
            limit=max(1, min(limit, 10_000)),
        )
    print_listing([{"id": r.id, **_device_info(r)} for r in rows], LIST_COLUMNS, as_json)
