"""The registry generation: one counter every registry change bumps in its own transaction.

Server processes cache the registry (trust anchors, enrollments, hubs) and compare the generation
they cached with the store's: a change made by any process (CLI, API, another replica) reaches
all of them without a restart or a signal.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Connection, Table, select, update

from devid.store.models import RegistryState

state = cast(Table, RegistryState.__table__)
_CURRENT = select(state.c.generation).where(state.c.id == 1)


def bump(conn: Connection) -> None:
    conn.execute(update(state).where(state.c.id == 1).values(generation=state.c.generation + 1))


def current(conn: Connection) -> int:
    return int(conn.execute(_CURRENT).scalar_one())
