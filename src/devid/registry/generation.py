"""The registry generation: one counter every registry change bumps in its own transaction.

Server processes cache the registry (trust anchors, enrollments, hubs) and compare the generation
they cached with the store's: a change made by any process (CLI, API, another replica) reaches
all of them without a restart or a signal.
"""

from __future__ import annotations

import threading

from sqlalchemy import Connection, select, update

from devid.authority.core import Authority
from devid.store.models import registry_state as state

_CURRENT = select(state.c.generation).where(state.c.id == 1)


class LocalChanges:
    """How many registry changes one authority has committed: a cache on that authority compares
    it to skip waiting for its next store check. The authority owns it (`Authority.owned`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        return self._count


def bump(conn: Connection) -> None:
    conn.execute(update(state).where(state.c.id == 1).values(generation=state.c.generation + 1))


def committed(authority: Authority) -> None:
    """Note a committed registry change made through `authority`."""
    authority.owned(LocalChanges, LocalChanges).add()


def local_changes(authority: Authority) -> int:
    """How many registry changes `authority` has committed: a cheap hint."""
    return authority.owned(LocalChanges, LocalChanges).count


def current(conn: Connection) -> int:
    return int(conn.execute(_CURRENT).scalar_one())
