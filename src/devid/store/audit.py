"""The hash-chained audit log.

Each event's hash is SHA-256 over the previous hash and the event's canonical JSON, so editing,
deleting or reordering any event breaks every later link. Appending locks the single head row
inside the caller's transaction: events commit together with the change they describe, and
concurrent writers (processes, PostgreSQL replicas) line up on that lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from devid.store.models import audit_events as _events
from devid.store.models import audit_head as _head

GENESIS = "0" * 64

# Built once: every issuing transaction appends, and building the statements cost more than running them.
_READ_HEAD = select(_head.c.seq, _head.c.hash).where(_head.c.id == 1).with_for_update()
_INSERT_EVENTS = insert(_events)
_MOVE_HEAD = update(_head).where(_head.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))


@dataclass(frozen=True)
class Event:
    """An audit event before it is chained; `outcome` is `ok` or `refused`."""

    action: str
    subject: str
    actor: str = "system"
    outcome: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)


def _digest(
    prev: str, seq: int, at: datetime, actor: str, action: str, outcome: str, subject: str, detail: str
) -> str:
    # Length-prefixed fields: unambiguous whatever the fields contain, and cheaper than JSON.
    fields = (str(seq), at.isoformat(), actor, action, outcome, subject, detail)
    body = "".join(f"{len(f)}:{f}" for f in fields)
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def append(conn: Connection, events: Sequence[Event], at: datetime) -> None:
    """Chain `events` onto the log inside the caller's transaction."""
    if not events:
        return
    at = at.astimezone(UTC)  # the store gives times back in UTC; hash the time as it will be read
    seq, prev = conn.execute(_READ_HEAD).one()
    rows = []
    for ev in events:
        seq += 1
        # The stored text is what is hashed, so it need not be canonical: plain dumps is enough.
        detail = json.dumps(ev.detail, separators=(",", ":"), default=str)
        # Cut to the column sizes before hashing: the hash covers exactly what is stored.
        actor, action, subject = ev.actor[:128], ev.action[:64], ev.subject[:256]
        digest = _digest(prev, seq, at, actor, action, ev.outcome, subject, detail)
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "outcome": ev.outcome,
                "subject": subject,
                "detail": detail,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    conn.execute(_INSERT_EVENTS, rows)
    conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    broken_seq: int | None = None
    reason: str = ""


def verify(conn: Connection, batch: int = 5000) -> Verification:
    """Walk the whole chain in order; name the first broken link and why it is broken."""
    prev, expected_seq, count = GENESIS, 1, 0
    last_seq = 0
    stream: Iterable[Any] = conn.execution_options(yield_per=batch).execute(
        select(_events).order_by(_events.c.seq)
    )
    for row in stream:
        if row.seq != expected_seq:
            return Verification(False, count, expected_seq, f"event {expected_seq} is missing")
        if row.prev_hash != prev:
            return Verification(False, count, row.seq, "its prev_hash does not match the previous event")
        digest = _digest(prev, row.seq, row.at, row.actor, row.action, row.outcome, row.subject, row.detail)
        if digest != row.hash:
            return Verification(False, count, row.seq, "its content does not match its hash (edited)")
        prev, expected_seq, last_seq, count = digest, expected_seq + 1, row.seq, count + 1
    head_seq, head_hash = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
    if head_seq != last_seq or head_hash != prev:
        return Verification(
            False, count, last_seq + 1, f"the head names event {head_seq}: events were removed"
        )
    return Verification(True, count)


def page(
    conn: Connection, *, after: int = 0, limit: int = 100, action_prefix: str | None = None
) -> list[Any]:
    """Events after `after` in chain order (keyset on the primary key), optionally only actions
    starting with `action_prefix` (e.g. `device.` or `api.`)."""
    query = select(_events).where(_events.c.seq > after).order_by(_events.c.seq).limit(limit)
    if action_prefix:
        query = query.where(_events.c.action.startswith(action_prefix, autoescape=True))
    return list(conn.execute(query).all())
