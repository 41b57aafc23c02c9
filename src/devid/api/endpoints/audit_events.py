"""Audit events: the hash-chained log, read in chain order, filtered by action prefix.

Every API call appears here too (`api.<METHOD> <route>`), after the call it describes; a page
of events therefore never contains the event of the call that read it.
"""

from __future__ import annotations

import json
from typing import Any

from devid.api.routes import AFTER, LIMIT, STRING, TIME, Call, Param, Route, obj, page, page_of
from devid.authority.roles import Permission
from devid.store import audit
from devid.store.engine import reading

HASH: dict[str, Any] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
EVENT = obj(
    {
        "seq": {"type": "integer", "minimum": 1},
        "at": TIME,
        "actor": STRING,
        "action": STRING,
        "outcome": STRING,
        "subject": STRING,
        "detail": {},
        "prev_hash": HASH,
        "hash": HASH,
    }
)


def event_json(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "outcome": row.outcome,
        "subject": row.subject,
        "detail": json.loads(row.detail),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def list_events(call: Call) -> dict[str, Any]:
    """Audit events in chain order, optionally only actions starting with `action`."""
    limit = call.query["limit"]
    with reading(call.authority.engine) as conn:
        rows = audit.page(
            conn, after=call.query.get("after", 0), limit=limit, action_prefix=call.query.get("action")
        )
    return page(rows, event_json, limit, lambda row: row.seq)


ROUTES = [
    Route(
        "GET",
        "/audit-events",
        Permission.AUDIT_READ,
        "List audit events",
        list_events,
        page_of(EVENT),
        query=[
            Param(
                "action", {"type": "string", "minLength": 1, "maxLength": 64}, "action prefix, e.g. `device.`"
            ),
            AFTER,
            LIMIT,
        ],
    ),
]
