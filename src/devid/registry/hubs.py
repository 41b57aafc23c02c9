"""Hubs: the named targets (an MQTT endpoint URL, a region, a weight) devices are allocated to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row, delete, insert, select

from devid.authority.core import Authority
from devid.errors import ConflictError, PolicyError
from devid.registry.rows import by_name, change, update_versioned
from devid.store import repo
from devid.store.models import hubs as hubs

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class HubInfo:
    name: str
    url: str
    region: str
    weight: int = 1
    enabled: bool = True
    latencies: dict[str, float] = field(default_factory=dict)
    version: int = 1
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> HubInfo:
        return cls(
            row.name,
            row.url,
            row.region,
            row.weight,
            row.enabled,
            json.loads(row.latencies),
            row.version,
            row.updated_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "region": self.region,
            "weight": self.weight,
            "enabled": self.enabled,
            "latencies": self.latencies,
            "version": self.version,
        }


def check_name(name: str, what: str) -> str:
    if not NAME.match(name):
        raise PolicyError(
            f"{what}-name", f"{what} name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )
    return name


def _check(url: str | None, weight: int | None, latencies: dict[str, float] | None) -> None:
    if url is not None:
        parts = urlsplit(url)
        if (
            parts.scheme not in ("mqtt", "mqtts", "ssl", "tcp", "ws", "wss", "https", "http")
            or not parts.hostname
        ):
            raise PolicyError("hub-url", f"hub URL {url!r} is not an endpoint URL like mqtts://host:8883")
    if weight is not None and not 1 <= weight <= 10_000:
        raise PolicyError("hub-weight", "hub weight must be an integer from 1 to 10000")
    if latencies is not None:
        for region, ms in latencies.items():
            if not isinstance(ms, (int, float)) or isinstance(ms, bool) or ms < 0:
                raise PolicyError("hub-latency", f"latency for region {region!r} must be a number of ms >= 0")


def create(
    authority: Authority,
    name: str,
    url: str,
    region: str = "",
    weight: int = 1,
    latencies: dict[str, float] | None = None,
    actor: str = "cli",
) -> HubInfo:
    check_name(name, "hub")
    _check(url, weight, latencies or {})
    now = authority.clock.now()
    with change(
        authority, "hub.create", name, actor, {"url": url, "region": region, "weight": weight}
    ) as conn:
        if conn.execute(select(hubs.c.id).where(hubs.c.name == name)).first():
            raise ConflictError("duplicate-hub", f"a hub named {name!r} already exists")
        conn.execute(
            insert(hubs).values(
                name=name,
                url=url,
                region=region,
                weight=weight,
                latencies=json.dumps(latencies or {}, sort_keys=True),
                enabled=True,
                created_at=now,
                updated_at=now,
                version=1,
            )
        )
        return HubInfo.from_row(by_name(conn, hubs, name, "hub"))


def update(
    authority: Authority,
    name: str,
    *,
    url: str | None = None,
    region: str | None = None,
    weight: int | None = None,
    latencies: dict[str, float] | None = None,
    enabled: bool | None = None,
    version: int | None = None,
    actor: str = "cli",
) -> HubInfo:
    _check(url, weight, latencies)
    values: dict[str, Any] = {
        k: v
        for k, v in (("url", url), ("region", region), ("weight", weight), ("enabled", enabled))
        if v is not None
    }
    if latencies is not None:
        values["latencies"] = json.dumps(latencies, sort_keys=True)
    with change(authority, "hub.update", name, actor, values) as conn:
        row = by_name(conn, hubs, name, "hub")
        update_versioned(conn, hubs, row, version, {**values, "updated_at": authority.clock.now()})
        return HubInfo.from_row(by_name(conn, hubs, name, "hub"))


def remove(authority: Authority, name: str, actor: str = "cli") -> None:
    """Delete a hub no device is allocated to (disable it first and reprovision otherwise)."""
    with change(authority, "hub.remove", name, actor, {}) as conn:
        row = by_name(conn, hubs, name, "hub")
        if repo.hub_in_use(conn, row.id):
            raise ConflictError("hub-in-use", f"devices are allocated to hub {name!r}: disable it instead")
        conn.execute(delete(hubs).where(hubs.c.id == row.id))


def get(conn: Connection, name: str) -> HubInfo:
    return HubInfo.from_row(by_name(conn, hubs, name, "hub"))


def list_all(conn: Connection) -> list[HubInfo]:
    return [HubInfo.from_row(r) for r in conn.execute(select(hubs).order_by(hubs.c.id))]
