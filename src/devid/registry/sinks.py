"""Event sinks: where registry events are delivered (a webhook URL, or an MQTT broker and topic).

Adding, enabling, disabling and removing a sink is a registry change like any other: audited and
generation-bumping in one transaction, so every dispatcher sharing the store picks it up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Row, Table, delete, func, insert, select, update

from devid.errors import ConflictError, NotFoundError, PolicyError
from devid.registry import generation
from devid.registry.transports import check_mqtt_url, check_topic, check_webhook_url, redact
from devid.store import audit
from devid.store.engine import writing
from devid.store.models import EventRecord, EventSink

sinks = cast(Table, EventSink.__table__)
events = cast(Table, EventRecord.__table__)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KINDS = ("webhook", "mqtt")


@dataclass(frozen=True)
class Sink:
    """A sink as stored. `secret` (if set) signs webhook bodies."""

    id: int
    name: str
    kind: str
    url: str
    topic: str | None
    enabled: bool
    cursor: int
    failures: int
    last_error: str | None
    created_at: datetime
    secret: bytes | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Sink:
        return cls(
            row.id,
            row.name,
            row.kind,
            row.url,
            row.topic,
            row.enabled,
            row.cursor,
            row.failures,
            row.last_error,
            row.created_at,
            row.secret,
        )

    def to_json(self, last_event: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "url": redact(self.url),
            "topic": self.topic,
            "enabled": self.enabled,
            "cursor": self.cursor,
            "pending": max(0, last_event - self.cursor),
            "failures": self.failures,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
        }


def last_event_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())


def list_sinks(conn: Connection, *, enabled_only: bool = False) -> list[Sink]:
    query = select(sinks).order_by(sinks.c.name)
    if enabled_only:
        query = query.where(sinks.c.enabled.is_(True))
    return [Sink.from_row(row) for row in conn.execute(query)]


def _check(name: str, kind: str, url: str, topic: str | None) -> None:
    if not NAME.match(name):
        raise PolicyError(
            "sink-name", f"sink name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )
    if kind == "webhook":
        check_webhook_url(url)
        if topic is not None:
            raise PolicyError("sink-topic", "a webhook sink has no topic")
    elif kind == "mqtt":
        check_mqtt_url(url)
        if topic is None:
            raise PolicyError("sink-topic", "an MQTT sink needs --topic")
        check_topic(topic)
    else:
        raise PolicyError("sink-kind", f"sink kind {kind!r}: one of {', '.join(KINDS)}")
    if len(url) > 512:
        raise PolicyError("sink-url", "sink URL longer than 512 characters")


def add(
    engine: Engine,
    name: str,
    kind: str,
    url: str,
    topic: str | None,
    *,
    actor: str,
    now: datetime,
    from_start: bool = False,
    secret: bytes | None = None,
) -> Sink:
    """A new enabled sink. It receives events emitted from now on, or every event still in the
    outbox when `from_start`."""
    _check(name, kind, url, topic)
    with writing(engine) as conn:
        if conn.execute(select(sinks.c.id).where(sinks.c.name == name)).first() is not None:
            raise ConflictError("sink-exists", f"an event sink named {name!r} exists")
        cursor = 0 if from_start else last_event_id(conn)
        conn.execute(
            insert(sinks).values(
                name=name,
                kind=kind,
                url=url,
                topic=topic,
                enabled=True,
                cursor=cursor,
                failures=0,
                created_at=now,
                secret=secret,
            )
        )
        detail = {"kind": kind, "url": redact(url), "topic": topic, "cursor": cursor, "signed": bool(secret)}
        generation.bump(conn)
        audit.append(conn, [audit.Event("event-sink.add", name, actor, "ok", detail)], now)
        row = conn.execute(select(sinks).where(sinks.c.name == name)).one()
    return Sink.from_row(row)


def _existing(conn: Connection, name: str) -> Row[Any]:
    row = conn.execute(select(sinks).where(sinks.c.name == name)).first()
    if row is None:
        raise NotFoundError("unknown-sink", f"no event sink named {name!r}")
    return row


def remove(engine: Engine, name: str, *, actor: str, now: datetime) -> None:
    with writing(engine) as conn:
        row = _existing(conn, name)
        conn.execute(delete(sinks).where(sinks.c.id == row.id))
        generation.bump(conn)
        detail = {"kind": row.kind, "url": redact(row.url), "cursor": row.cursor}
        audit.append(conn, [audit.Event("event-sink.remove", name, actor, "ok", detail)], now)


def set_enabled(engine: Engine, name: str, enabled: bool, *, actor: str, now: datetime) -> None:
    """A disabled sink keeps its cursor: enabled again, it resumes where it stopped."""
    with writing(engine) as conn:
        row = _existing(conn, name)
        conn.execute(update(sinks).where(sinks.c.id == row.id).values(enabled=enabled))
        generation.bump(conn)
        action = "event-sink.enable" if enabled else "event-sink.disable"
        audit.append(conn, [audit.Event(action, name, actor, "ok", {"cursor": row.cursor})], now)
