"""Event sinks: where registry events are delivered (a webhook URL, or an MQTT broker and topic).

Adding, enabling, disabling and removing a sink is a registry change like any other: audited and
generation-bumping in one transaction, so every dispatcher sharing the store picks it up.

A sink's connection secrets, the URL as given (with any password in it) and the webhook signing
key, are sealed together (AES-256-GCM under the credential key, bound to the sink's name) in the
`secret` column; `url` holds the URL with its password masked, for listings. Only a process with
the CA secret unlocked (`devid serve`, `devid events deliver`) can open them, and a sink row written
into the database without it (no sealed secrets, or sealed under another key or for another name)
is never delivered to.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, delete, func, insert, select, update

from devid.authority.credential_key import SEALED_PREFIX, CredentialKey, Purpose
from devid.errors import ConflictError, KeyAccessError, NotFoundError, PolicyError
from devid.registry import generation
from devid.registry.transports import check_mqtt_url, check_topic, check_webhook_url, redact
from devid.store import audit
from devid.store.engine import writing
from devid.store.models import event_sinks as sinks
from devid.store.models import events

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KINDS = ("webhook", "mqtt")


@dataclass(frozen=True)
class SinkConnection:
    """What a transport needs to reach a sink, unsealed: the URL as given and the signing key."""

    url: str
    signing_key: bytes | None


def _seal(key: CredentialKey, name: str, url: str, signing_key: bytes | None) -> bytes:
    plain = {"url": url, "signing_key": base64.b64encode(signing_key).decode() if signing_key else None}
    return key.seal(Purpose.SINK_SECRET, json.dumps(plain).encode(), name.encode())


@dataclass(frozen=True)
class Sink:
    """A sink as stored: `url` with its password masked, `secret` its sealed connection secrets."""

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

    def connection(self, key: CredentialKey) -> SinkConnection:
        """The URL (with its password) and webhook signing key. KeyAccessError for a sink without
        sealed secrets (stored by an older devid, or not by devid at all) or one that does not open."""
        if self.secret is None or not self.secret.startswith(SEALED_PREFIX):
            raise KeyAccessError(
                "sink-not-sealed",
                f"event sink {self.name!r} has no sealed URL and secret (added by an older devid, or "
                "written into the store directly): remove it and add it again",
            )
        plain = json.loads(key.open(Purpose.SINK_SECRET, self.secret, self.name.encode()))
        signing_key = plain["signing_key"]
        return SinkConnection(plain["url"], base64.b64decode(signing_key) if signing_key else None)

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
    key: CredentialKey,
    actor: str,
    now: datetime,
    from_start: bool = False,
    secret: bytes | None = None,
) -> Sink:
    """A new enabled sink. It receives events emitted from now on, or every event still in the
    outbox when `from_start`. `secret` signs webhook bodies; it and the URL are sealed under `key`."""
    _check(name, kind, url, topic)
    sealed = _seal(key, name, url, secret)
    with writing(engine) as conn:
        if conn.execute(select(sinks.c.id).where(sinks.c.name == name)).first() is not None:
            raise ConflictError("sink-exists", f"an event sink named {name!r} exists")
        cursor = 0 if from_start else last_event_id(conn)
        conn.execute(
            insert(sinks).values(
                name=name,
                kind=kind,
                url=redact(url),
                topic=topic,
                enabled=True,
                cursor=cursor,
                failures=0,
                created_at=now,
                secret=sealed,
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
