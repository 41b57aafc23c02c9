"""`devid device`: enrollment secrets, approval, enabling and disabling, showing and listing devices."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from devid.authority import devices
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, authority, console, print_json, store
from devid.errors import NotFoundError, PolicyError
from devid.store import repo
from devid.store.engine import reading

app = typer.Typer(help="Manage devices: enrollment secrets, approval, state.", no_args_is_help=True)


@app.command("enroll-secret")
def enroll_secret(
    serial: str,
    ttl_hours: Annotated[float, typer.Option(help="hours until the secret expires")] = 24 * 7,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """A new single-use secret for HTTP Basic EST enrollment (user = SERIAL). Printed once, alone
    on the last line; only its hash is stored."""
    if ttl_hours <= 0:
        raise PolicyError("secret-ttl", "--ttl-hours must be positive")
    auth = authority(home, passphrase_file)
    secret = devices.create_enrollment_secret(auth, serial, "cli", timedelta(hours=ttl_hours))
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


def _set_state(serial: str, state: str, reason: str, home: Any, passphrase_file: Any) -> None:
    devices.set_state(authority(home, passphrase_file), serial, state, "cli", reason)
    console.print(f"device {escape(serial)} is now {state}", highlight=False)


@app.command("disable")
def disable(
    serial: str,
    reason: Annotated[str, typer.Option(help="recorded in the audit log")] = "",
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Set a device INACTIVE: it is refused enrollment and renewal until enabled again."""
    _set_state(serial, "INACTIVE", reason, home, passphrase_file)


@app.command("enable")
def enable(
    serial: str,
    reason: Annotated[str, typer.Option(help="recorded in the audit log")] = "",
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Set a device ACTIVE again."""
    _set_state(serial, "ACTIVE", reason, home, passphrase_file)


def _device_info(row: Any) -> dict[str, Any]:
    return {
        "serial": row.serial,
        "state": row.state,
        "model": row.model,
        "lot": row.lot,
        "line": row.line,
        "se_backend": row.se_backend,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "approval_requested_at": row.approval_requested_at.isoformat() if row.approval_requested_at else None,
        "approved_at": row.approved_at.isoformat() if row.approved_at else None,
    }


@app.command("show")
def show(serial: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """One device: its state, approval and certificates."""
    engine = store(home)
    with reading(engine) as conn:
        row = repo.device_by_serial(conn, serial)
        if row is None:
            raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
        certs = repo.list_certificates(conn, device_serial=serial, limit=10_000)
    info = _device_info(row)
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
    for key, value in info.items():
        if key != "certificates":
            console.print(f"[bold]{key:>22}[/]  {escape(str(value))}", highlight=False)
    table = Table("serial", "profile", "issuer", "not after", "status")
    for c in info["certificates"]:
        table.add_row(*(escape(str(c[k])) for k in ("serial", "profile", "issuer", "not_after", "status")))
    console.print(table)


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option("--state", help="only devices in this state")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 100,
    after: Annotated[int, typer.Option(help="continue after this row id (paging)")] = 0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Devices in creation order, optionally in one state, one page at a time."""
    if state is not None and state not in devices.DEVICE_STATES:
        raise PolicyError(
            "device-state", f"unknown device state {state!r}; known: {', '.join(devices.DEVICE_STATES)}"
        )
    engine = store(home)
    with reading(engine) as conn:
        rows = repo.list_devices(conn, state=state, after_id=after, limit=max(1, min(limit, 10_000)))
    if as_json:
        print_json([{"id": r.id, **_device_info(r)} for r in rows])
        return
    table = Table("id", "serial", "state", "model", "lot", "approved")
    for r in rows:
        table.add_row(
            *(
                escape(str(v))
                for v in (r.id, r.serial, r.state, r.model or "", r.lot or "", "yes" if r.approved_at else "")
            )
        )
    console.print(table)
