"""Devices: list (by state, keyset-paged), show, and change state with optimistic concurrency.

A state change names the version the client read (If-Match or `version`); a device changed by
someone else since answers 409 and stays as it is. The answer carries the new version as ETag.
"""

from __future__ import annotations

import json
from typing import Any

from devid.api.routes import (
    AFTER,
    LIMIT,
    MAYBE_STRING,
    MAYBE_TIME,
    STRING,
    TIME,
    VERSION_SCHEMA,
    Call,
    Param,
    Reply,
    Route,
    iso,
    obj,
    page,
    page_of,
    versioned,
)
from devid.authority.devices import set_state
from devid.authority.roles import Permission
from devid.errors import NotFoundError
from devid.store import repo
from devid.store.engine import reading
from devid.store.states import DeviceState

STATE: dict[str, Any] = {"type": "string", "enum": [s.value for s in DeviceState]}
DEVICE = obj(
    {
        "serial": STRING,
        "state": STATE,
        "version": VERSION_SCHEMA,
        "model": MAYBE_STRING,
        "lot": MAYBE_STRING,
        "line": MAYBE_STRING,
        "properties": {"type": ["object", "null"]},
        "created_at": TIME,
        "updated_at": TIME,
        "registered_at": MAYBE_TIME,
        "approval_requested_at": MAYBE_TIME,
        "approved_at": MAYBE_TIME,
    }
)
SERIAL = Param("serial", {"type": "string", "minLength": 1, "maxLength": 128}, "device serial")
STATE_CHANGE = obj(
    {
        "state": STATE,
        "reason": {"type": "string", "maxLength": 512, "description": "recorded in the audit log"},
        "version": VERSION_SCHEMA,
    },
    optional=["reason", "version"],
)


def _properties(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def device_json(row: Any) -> dict[str, Any]:
    return {
        "serial": row.serial,
        "state": row.state,
        "version": row.version,
        "model": row.model,
        "lot": row.lot,
        "line": row.line,
        "properties": _properties(row.properties),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "registered_at": iso(row.registered_at),
        "approval_requested_at": iso(row.approval_requested_at),
        "approved_at": iso(row.approved_at),
    }


def _read(call: Call, serial: str) -> Reply:
    with reading(call.authority.engine) as conn:
        row = repo.device_by_serial(conn, serial)
    if row is None:
        raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
    return versioned(device_json(row), row.version)


def list_devices(call: Call) -> dict[str, Any]:
    """Devices in creation order, optionally in one state."""
    limit = call.query["limit"]
    with reading(call.authority.engine) as conn:
        rows = repo.list_devices(
            conn, state=call.query.get("state"), after_id=call.query.get("after", 0), limit=limit
        )
    return page(rows, device_json, limit, lambda row: row.id)


def get_device(call: Call) -> Reply:
    """One device by serial; its ETag is its version."""
    return _read(call, call.path["serial"])


def change_device(call: Call) -> Reply:
    """Change a device's state (INACTIVE blocks enrollment and renewal at once; REVOKED is final)."""
    serial, state = call.path["serial"], call.body["state"]
    set_state(call.authority, serial, state, call.actor, call.body.get("reason", ""), version=call.version)
    return _read(call, serial)


ROUTES = [
    Route(
        "GET",
        "/devices",
        Permission.DEVICES_READ,
        "List devices",
        list_devices,
        page_of(DEVICE),
        query=[Param("state", STATE, "only devices in this state"), AFTER, LIMIT],
    ),
    Route(
        "GET",
        "/devices/{serial}",
        Permission.DEVICES_READ,
        "Show a device",
        get_device,
        DEVICE,
        path_params=[SERIAL],
    ),
    Route(
        "PATCH",
        "/devices/{serial}",
        Permission.DEVICES_WRITE,
        "Change a device's state",
        change_device,
        DEVICE,
        path_params=[SERIAL],
        body=STATE_CHANGE,
        versioned=True,
    ),
]
