"""The hash-chained audit log.

Each event's hash is SHA-256 over the previous hash and the event's canonical JSON, so editing,
deleting or reordering any event breaks every later link. Appending locks the single head row
inside the caller's transaction: events commit together with the change they describe, and
concurrent writers (processes, PostgreSQL replicas) line up on that lock.

A chain alone can be rewritten whole by whoever can write the database (recompute every hash).
Checkpoints anchor it: the authority signs (event seq, its hash, time) with the audit key, which
lives with the CA keys, and `verify` checks each checkpoint against the chain; this module only
stores them and builds the bytes that are signed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, bindparam, insert, select, update

from devid.store.models import audit_checkpoints as _checkpoints
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


def head(conn: Connection) -> tuple[int, str]:
    """The last event's seq and hash (0 and the genesis hash for an empty log)."""
    seq, digest = conn.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
    return int(seq), str(digest)


def checkpoint_message(seq: int, digest: str, at: datetime) -> bytes:
    """The bytes a checkpoint signs: a fixed prefix (it signs nothing else), the seq, hash and time."""
    return f"devid audit checkpoint\n{seq}\n{digest}\n{at.astimezone(UTC).isoformat()}".encode()


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: datetime
    key_label: str
    signature: bytes


def add_checkpoint(conn: Connection, checkpoint: Checkpoint) -> None:
    conn.execute(insert(_checkpoints).values(**asdict(checkpoint)))


def last_checkpoint(conn: Connection) -> Checkpoint | None:
    row = conn.execute(select(_checkpoints).order_by(_checkpoints.c.id.desc()).limit(1)).first()
    return None if row is None else Checkpoint(row.seq, row.hash, row.at, row.key_label, row.signature)


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    broken_seq: int | None = None
    reason: str = ""
    checkpoints: int = 0
    #: The last event a valid checkpoint vouches for (0: none), and how many events follow it.
    anchored_seq: int = 0
    unanchored: int = 0


def _signed(key: ec.EllipticCurvePublicKey, row: Any) -> bool:
    try:
        key.verify(row.signature, checkpoint_message(row.seq, row.hash, row.at), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def checkpoint_holds(conn: Connection, audit_key: ec.EllipticCurvePublicKey, checkpoint: Checkpoint) -> bool:
    """Whether `checkpoint` is signed by the audit key and names the hash the chain has at its seq:
    one signature and one event read, showing the chain was not rewritten whole up to it (an edit
    of one event that leaves its stored hash shows only to `verify`, which rehashes every event)."""
    stored = conn.execute(select(_events.c.hash).where(_events.c.seq == checkpoint.seq)).scalar()
    return stored == checkpoint.hash and _signed(audit_key, checkpoint)


def verify(
    conn: Connection, audit_key: ec.EllipticCurvePublicKey | None = None, batch: int = 5000
) -> Verification:
    """Walk the whole chain in order; name the first broken link and why it is broken.

    With `audit_key`, every checkpoint must also carry its signature and name the hash the chain
    has at its seq: a chain rewritten whole (every hash recomputed) fails at its first checkpoint.
    """
    anchors: dict[int, list[Any]] = {}
    checkpoints = list(conn.execute(select(_checkpoints).order_by(_checkpoints.c.id))) if audit_key else []
    for row in checkpoints:
        if not _signed(cast(ec.EllipticCurvePublicKey, audit_key), row):
            return Verification(
                False, 0, row.seq, f"checkpoint {row.id} is not signed by the audit key", len(checkpoints)
            )
        anchors.setdefault(row.seq, []).append(row)
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
        for anchor in anchors.get(row.seq, ()):
            if anchor.hash != digest:
                return Verification(
                    False,
                    count,
                    row.seq,
                    f"its hash is not the one checkpoint {anchor.id} signed (the chain was rewritten)",
                    len(checkpoints),
                )
        prev, expected_seq, last_seq, count = digest, expected_seq + 1, row.seq, count + 1
    head_seq, head_hash = head(conn)
    if head_seq != last_seq or head_hash != prev:
        return Verification(
            False, count, last_seq + 1, f"the head names event {head_seq}: events were removed"
        )
    beyond = [seq for seq in anchors if seq > last_seq]
    if beyond:
        return Verification(
            False, count, max(beyond), f"a checkpoint names event {max(beyond)}: events were removed"
        )
    anchored = max(anchors, default=0)
    return Verification(
        True, count, checkpoints=len(checkpoints), anchored_seq=anchored, unanchored=last_seq - anchored
    )


def page(
    conn: Connection,
    *,
    after: int = 0,
    limit: int = 100,
    action_prefix: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
) -> list[Any]:
    """Events after `after` in chain order (keyset on the primary key), optionally only actions
    starting with `action_prefix` (e.g. `device.` or `api.`), only `action` exactly, only events at
    or after `since`; each filter has an index (`action, seq` and `at`)."""
    query = select(_events).where(_events.c.seq > after).order_by(_events.c.seq).limit(limit)
    if action_prefix:
        query = query.where(_events.c.action.startswith(action_prefix, autoescape=True))
    if action:
        query = query.where(_events.c.action == action)
    if since is not None:
        query = query.where(_events.c.at >= since)
    return list(conn.execute(query).all())
