"""Hubs: the allocation targets (endpoint URL, region, weight, per-region latencies)."""

from __future__ import annotations

from typing import Any

from devid.api.routes import (
    LIMIT,
    NAME_AFTER,
    NAME_PATH,
    STRING,
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
from devid.registry import hubs
from devid.store.engine import reading

NAME: dict[str, Any] = {"type": "string", "pattern": hubs.NAME.pattern}
_EDITABLE: dict[str, dict[str, Any]] = {
    "url": {"type": "string", "minLength": 1, "maxLength": 512, "description": "e.g. mqtts://host:8883"},
    "region": {"type": "string", "maxLength": 64},
    "weight": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "latencies": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
}
HUB = obj({"name": STRING, **_EDITABLE, "enabled": {"type": "boolean"}, "version": {"type": "integer"}})
NEW_HUB = obj({"name": NAME, **_EDITABLE}, optional=["region", "weight", "latencies"])
HUB_CHANGE = obj(
    {**_EDITABLE, "enabled": {"type": "boolean"}, "version": VERSION_SCHEMA},
    optional=[*_EDITABLE, "enabled", "version"],
)


def _reply(info: hubs.HubInfo, status: int | None = None) -> Reply:
    return versioned(info.to_json(), info.version, status)


def list_hubs(call: Call) -> dict[str, Any]:
    """Hubs in name order, optionally of one region."""
    with reading(call.authority.engine) as conn:
        found = hubs.list_all(conn)
    region = call.query.get("region")
    return page_by_name([h.to_json() for h in found if region in (None, h.region)], call)


def get_hub(call: Call) -> Reply:
    """One hub; its ETag is its version."""
    with reading(call.authority.engine) as conn:
        return _reply(hubs.get(conn, call.path["name"]))


def create_hub(call: Call) -> Reply:
    """A new hub devices can be allocated to."""
    body = call.body
    info = hubs.create(
        call.authority,
        body["name"],
        body["url"],
        body.get("region", ""),
        body.get("weight", 1),
        body.get("latencies"),
        actor=call.actor,
    )
    return _reply(info, 201)


def change_hub(call: Call) -> Reply:
    """Change a hub's endpoint, region, weight, latencies, or enable/disable it."""
    fields = {k: v for k, v in call.body.items() if k != "version"}
    info = hubs.update(call.authority, call.path["name"], **fields, version=call.version, actor=call.actor)
    return _reply(info)


def remove_hub(call: Call) -> Reply:
    """Delete a hub no device is allocated to (409 otherwise: disable it instead)."""
    hubs.remove(call.authority, call.path["name"], actor=call.actor)
    return Reply(None, 204)


W = Permission.REGISTRY_WRITE
ROUTES = [
    Route(
        "GET",
        "/hubs",
        Permission.REGISTRY_READ,
        "List hubs",
        list_hubs,
        page_of(HUB),
        query=[Param("region", {"type": "string", "maxLength": 64}, "only this region"), NAME_AFTER, LIMIT],
    ),
    Route(
        "GET", "/hubs/{name}", Permission.REGISTRY_READ, "Show a hub", get_hub, HUB, path_params=[NAME_PATH]
    ),
    Route("POST", "/hubs", W, "Create a hub", create_hub, HUB, status=201, body=NEW_HUB, conflicts=True),
    Route(
        "PATCH",
        "/hubs/{name}",
        W,
        "Change a hub",
        change_hub,
        HUB,
        path_params=[NAME_PATH],
        body=HUB_CHANGE,
        versioned=True,
    ),
    Route(
        "DELETE",
        "/hubs/{name}",
        W,
        "Delete a hub",
        remove_hub,
        {},
        status=204,
        path_params=[NAME_PATH],
        conflicts=True,
    ),
]
