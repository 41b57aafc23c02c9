"""Events (device registrations, state changes, registry edits): written to the outbox table in
the transaction of the change they describe.

Delivery (webhook, MQTT; `devid.registry.delivery`) reads the outbox afterwards, per sink and in
order, so an event is never announced for a change that rolled back, and never lost for one that
committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, insert, select

from devid.store.models import audit_head as _audit_head
from devid.store.models import events

#: Set in the connection's info by `emit`; `devid.registry.delivery` wakes its dispatcher when a
#: transaction carrying this flag has committed.
EMITTED = "devid.events.emitted"
# The audit head's row lock, held until commit: the lock every audited change already takes
# (`devid.store.audit.append`), so emitting adds no new lock and no new deadlock order. A no-op on
# SQLite, whose writers hold the database write lock from BEGIN IMMEDIATE.
_SERIALIZE = select(_audit_head.c.id).where(_audit_head.c.id == 1).with_for_update()


def emit(conn: Connection, at: datetime, type_: str, subject: str, payload: dict[str, Any]) -> None:
    """Queue one event (e.g. `device.registered`) inside the caller's transaction.

    Event ids must become visible in id order: delivery advances a sink's cursor past every id it
    has delivered, so an id that committed after a larger one would be skipped for ever. On
    PostgreSQL, two transactions could take ids 5 and 6 and commit 6 first; the row lock taken here
    (the audit head's, which the change's own audit event takes anyway) makes event-writing
    transactions take their ids and commit one after the other.
    """
    emit_many(conn, at, [(type_, subject, payload)])


def emit_many(conn: Connection, at: datetime, items: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Queue events (type, subject, payload) in one statement: a batch of thousands of devices."""
    if not items:
        return
    conn.execute(_SERIALIZE)
    stamp = at.isoformat()
    rows = [
        {
            "at": at,
            "type": type_,
            "subject": subject,
            "payload": json.dumps(
                {"type": type_, "subject": subject, "at": stamp, **payload}, sort_keys=True
            ),
        }
        for type_, subject, payload in items
    ]
    conn.execute(insert(events), rows)
    conn.info[EMITTED] = True


def emit_from(conn: Connection, query: Select[Any]) -> None:
    """Queue the events a SELECT of (at, type, subject, payload) yields, in one INSERT ... SELECT:
    a mass revocation announces 100,000 certificates without a round trip per row."""
    conn.execute(_SERIALIZE)
    conn.execute(insert(events).from_select(["at", "type", "subject", "payload"], query))
    conn.info[EMITTED] = True
