"""What every registry table shares: audited, generation-bumping writes with optimistic concurrency.

An edit names the version it read; the UPDATE matches on it, so of two operators editing the same
group the second gets a ConflictError (HTTP 409) and nothing of either is lost or half-applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Row, Table, select, update

from devid.authority.core import Authority
from devid.errors import ConflictError, NotFoundError
from devid.registry import generation
from devid.store import audit
from devid.store.engine import writing


@contextmanager
def change(
    authority: Authority, action: str, subject: str, actor: str, detail: dict[str, Any]
) -> Iterator[Connection]:
    """A write transaction that records its audit event and bumps the registry generation."""
    with writing(authority.engine) as conn:
        yield conn
        # The audit head first, like every audited change and every event: one lock order.
        audit.append(conn, [audit.Event(action, subject, actor, "ok", detail)], authority.clock.now())
        generation.bump(conn)
    generation.committed(authority)


def by_name(conn: Connection, table: Table, name: str, what: str, **where: Any) -> Row[Any]:
    query = select(table).where(table.c.name == name)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    row = conn.execute(query).first()
    if row is None:
        raise NotFoundError(f"unknown-{what}", f"no {what} named {name!r}")
    return row


def update_versioned(
    conn: Connection, table: Table, row: Row[Any], version: int | None, values: dict[str, Any]
) -> int:
    """Apply `values` to `row` if it is still at `version` (None: whatever it is now); the new version."""
    expected = row.version if version is None else version
    result = conn.execute(
        update(table)
        .where(table.c.id == row.id, table.c.version == expected)
        .values(**values, version=table.c.version + 1)
    )
    if result.rowcount != 1:
        raise ConflictError(
            "stale-version",
            f"{row.name!r} changed since version {expected} was read (now {row.version}): "
            "read it again and reapply the change",
        )
    return expected + 1
