"""The registry generation: one counter every registry change bumps in its own transaction.

Server processes cache the registry (trust anchors, enrollments, hubs) and compare the generation
they cached with the store's: a change made by any process (CLI, API, another replica) reaches
all of them without a restart or a signal.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from devid.store.models import registry_state as state

_CURRENT = select(state.c.generation).where(state.c.id == 1)
#: Changes made by this process: a cache compares it to skip waiting for its next store check.
_local = 0


def bump(conn: Connection) -> None:
    global _local
    conn.execute(update(state).where(state.c.id == 1).values(generation=state.c.generation + 1))
    _local += 1


def local_changes() -> int:
    """How many registry changes this process has made (committed or not): a cheap hint."""
    return _local


def current(conn: Connection) -> int:
    return int(conn.execute(_CURRENT).scalar_one())
