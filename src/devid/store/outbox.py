"""Events (device registrations, state changes, registry edits): written to the outbox table in
the transaction of the change they describe.

Delivery (webhook, MQTT) reads the outbox afterwards, per sink and in order, so an event is never
announced for a change that rolled back, and never lost for one that committed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, insert

from devid.store.models import EventRecord

events = cast(Table, EventRecord.__table__)


def emit(conn: Connection, at: datetime, type_: str, subject: str, payload: dict[str, Any]) -> None:
    """Queue one event (e.g. `device.registered`) inside the caller's transaction."""
    body = {"type": type_, "subject": subject, "at": at.isoformat(), **payload}
    conn.execute(
        insert(events).values(at=at, type=type_, subject=subject, payload=json.dumps(body, sort_keys=True))
    )
