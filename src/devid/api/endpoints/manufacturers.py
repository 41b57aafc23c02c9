"""Manufacturer CAs: registration codes, proof-of-possession registration, state and JITR settings.

Registration takes the CA certificate and the verification certificate (whose CN is a code from
`POST /registration-codes`, signed by the CA's key) as PEM strings in the JSON body.
"""

from __future__ import annotations

from typing import Any

from devid.api.routes import (
    LIMIT,
    NAME_AFTER,
    NAME_PATH,
    STRING,
    TIME,
    VERSION_SCHEMA,
    Call,
    Param,
    Reply,
    Route,
    obj,
    page_by_name,
    page_of,
    versioned,
)
from devid.authority.roles import Permission
from devid.registry import manufacturers
from devid.registry.hubs import NAME as NAME_RE
from devid.store.engine import reading
from devid.store.states import ManufacturerState

STATE: dict[str, Any] = {"type": "string", "enum": [s.value for s in ManufacturerState]}
BOOL: dict[str, Any] = {"type": "boolean"}
PEM: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 65536, "description": "PEM"}
MANUFACTURER = obj(
    {
        "name": STRING,
        "state": STATE,
        "auto_register": BOOL,
        "auto_activate": BOOL,
        "subject": STRING,
        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "not_after": TIME,
        "version": {"type": "integer"},
    }
)
REGISTRATION = obj(
    {
        "name": {"type": "string", "pattern": NAME_RE.pattern},
        "ca_certificate": PEM,
        "verification_certificate": PEM,
        "auto_register": BOOL,
        "auto_activate": BOOL,
    },
    optional=["auto_register", "auto_activate"],
)
CHANGE = obj(
    {
        "state": STATE,
        "auto_register": BOOL,
        "auto_activate": BOOL,
        "version": VERSION_SCHEMA,
    },
    optional=["state", "auto_register", "auto_activate", "version"],
)
CODE = obj({"code": {"type": "string", "pattern": "^[0-9a-f]{64}$"}})


def _reply(info: manufacturers.ManufacturerInfo, status: int | None = None) -> Reply:
    return versioned(info.to_json(), info.version, status)


def list_manufacturers(call: Call) -> dict[str, Any]:
    """Registered manufacturer CAs in name order, optionally in one state."""
    with reading(call.authority.engine) as conn:
        found = manufacturers.list_all(conn)
    state = call.query.get("state")
    return page_by_name([m.to_json() for m in found if state in (None, m.state)], call)


def get_manufacturer(call: Call) -> Reply:
    """One manufacturer CA; its ETag is its version."""
    with reading(call.authority.engine) as conn:
        return _reply(manufacturers.get(conn, call.path["name"]))


def new_code(call: Call) -> Reply:
    """A one-time registration code (valid 24 hours) for a verification certificate's CN."""
    return Reply({"code": manufacturers.create_registration_code(call.authority, call.actor)}, 201)


def register(call: Call) -> Reply:
    """Register a manufacturer CA if the verification certificate proves possession of its key."""
    body = call.body
    info = manufacturers.register(
        call.authority,
        body["name"],
        body["ca_certificate"].encode(),
        body["verification_certificate"].encode(),
        auto_register=body.get("auto_register", False),
        auto_activate=body.get("auto_activate", False),
        actor=call.actor,
    )
    return _reply(info, 201)


def change(call: Call) -> Reply:
    """Activate or deactivate a manufacturer CA, or change its JITR settings."""
    fields = {k: v for k, v in call.body.items() if k != "version"}
    info = manufacturers.update_settings(
        call.authority, call.path["name"], **fields, version=call.version, actor=call.actor
    )
    return _reply(info)


R, W = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE
ROUTES = [
    Route(
        "GET",
        "/manufacturers",
        R,
        "List manufacturer CAs",
        list_manufacturers,
        page_of(MANUFACTURER),
        query=[Param("state", STATE, "only in this state"), NAME_AFTER, LIMIT],
    ),
    Route(
        "GET",
        "/manufacturers/{name}",
        R,
        "Show a manufacturer CA",
        get_manufacturer,
        MANUFACTURER,
        path_params=[NAME_PATH],
    ),
    Route("POST", "/registration-codes", W, "Create a registration code", new_code, CODE, status=201),
    Route(
        "POST",
        "/manufacturers",
        W,
        "Register a manufacturer CA",
        register,
        MANUFACTURER,
        status=201,
        body=REGISTRATION,
        conflicts=True,
    ),
    Route(
        "PATCH",
        "/manufacturers/{name}",
        W,
        "Change a manufacturer CA",
        change,
        MANUFACTURER,
        path_params=[NAME_PATH],
        body=CHANGE,
        versioned=True,
    ),
]
