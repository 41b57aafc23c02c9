"""The one path by which a device record comes into being or changes state.

Each runs inside the caller's write transaction and does what every such change must: the row's
version moves on (so an API edit that read an older version is refused), and the change is queued
on the outbox in the same transaction (so sinks hear of it exactly when it commits). Batches take
one statement per step, not one per device: the factory creates thousands per transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from devid.errors import ConflictError, NotFoundError, PolicyError
from devid.store import audit, outbox, repo
from devid.store.states import DeviceState

_devices = repo.devices
_INSERT = insert(_devices)
_FOR_CHANGE = (
    select(_devices.c.id, _devices.c.serial, _devices.c.state, _devices.c.version)
    .where(_devices.c.serial.in_(bindparam("serials", expanding=True)))
    .with_for_update()
)
_SET_STATE = (
    update(_devices)
    .where(_devices.c.id.in_(bindparam("ids", expanding=True)))
    .values(state=bindparam("state"), updated_at=bindparam("now"), version=_devices.c.version + 1)
)


def create(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
    details: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Insert devices (each row names at least `serial` and `state`) at version 1, each announced
    as `device.registered` with its state and `details`. A serial that exists raises IntegrityError."""
    if not rows:
        return
    conn.execute(_INSERT, [{**row, "created_at": now, "updated_at": now, "version": 1} for row in rows])
    extra = details or [{}] * len(rows)
    outbox.emit_many(
        conn,
        now,
        [
            ("device.registered", row["serial"], {"state": str(row["state"]), **more})
            for row, more in zip(rows, extra, strict=True)
        ],
    )


def change_state(
    conn: Connection,
    serials: Sequence[str],
    state: DeviceState,
    now: datetime,
    actor: str,
    *,
    reason: str = "",
    version: int | None = None,
    from_states: Sequence[DeviceState] | None = None,
) -> None:
    """Move devices to `state`, audited and announced as `device.state`, each with its old state.

    The rows are locked for the change. Refused, changing nothing: an unknown serial
    (NotFoundError), a REVOKED device (revocation is final), a device in none of `from_states`
    (PolicyError), and with `version` (one device) a device changed since that version was read
    (ConflictError).
    """
    found = {
        row.serial: row for chunk in _chunks(serials) for row in conn.execute(_FOR_CHANGE, {"serials": chunk})
    }
    for serial in serials:
        row = found.get(serial)
        if row is None:
            raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
        if row.state == DeviceState.REVOKED and state != DeviceState.REVOKED:
            raise PolicyError(
                "device-revoked",
                f"device {serial!r} is REVOKED: revocation is final, it cannot become {state}",
            )
        if row.state == DeviceState.SUSPENDED:
            raise PolicyError(
                "device-on-hold",
                f"device {serial!r} is SUSPENDED (certificateHold): `devid unrevoke --device {serial}` "
                "lifts the hold",
            )
        if from_states is not None and row.state not in from_states:
            raise PolicyError(
                "device-state-transition",
                f"device {serial!r} is {row.state}: only a device {' or '.join(from_states)} "
                f"can become {state}",
            )
        if version is not None and row.version != version:
            raise ConflictError(
                "stale-version", f"device {serial!r} changed since version {version} (now {row.version})"
            )
    rows = [found[serial] for serial in dict.fromkeys(serials)]
    for chunk in _chunks([row.id for row in rows]):
        conn.execute(_SET_STATE, {"ids": chunk, "state": state, "now": now})
    changes = [(row.serial, {"from": row.state, "to": str(state), "reason": reason}) for row in rows]
    outbox.emit_many(conn, now, [("device.state", serial, detail) for serial, detail in changes])
    audit.append(
        conn, [audit.Event("device.state", serial, actor, "ok", detail) for serial, detail in changes], now
    )


def _chunks(items: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
