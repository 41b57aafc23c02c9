"""Leases and presence among the server processes that share one store, without a table.

A `Lease` names a duty only one process of a deployment may do at a time (event delivery, status
publishing): on PostgreSQL it is a session advisory lock held on a connection of its own, so it
ends when its holder stops, crashes or loses the database (the server drops the session), and
another replica takes it at its next try. On a SQLite file, whose writers all run on one machine,
it is an exclusive `flock` on a file beside the database, which the kernel releases when the
holder dies.

`Presence` counts the server processes on the store (each holds a shared advisory lock on
PostgreSQL; a locked file each in a directory beside a SQLite database), so that limits kept in
memory can each take their share of a deployment-wide limit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

#: Advisory-lock class of devid's leases (the first key of the two-key form): keeps them apart
#: from any other application's advisory locks on the same database.
_LOCK_CLASS = 0x64657669  # "devi"


def _key(name: str) -> int:
    """A stable 31-bit key for `name` (the second key of the two-key advisory lock)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") & 0x7FFFFFFF


def _sqlite_file(engine: Engine) -> str | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return os.path.abspath(database)


class Lease:
    """Whether this process holds the store-wide lease `name`; taken when free, kept until
    `release`, the process's end, or the loss of its database session."""

    def __init__(self, engine: Engine, name: str, *, shared: bool = False) -> None:
        self._engine = engine
        self._name = name
        self._shared = shared
        self._conn: Connection | None = None
        self._fd: int | None = None

    def held(self) -> bool:
        """True while this process holds the lease (taking it if it is free); False if another
        process holds it or the store cannot be reached. Safe to call repeatedly."""
        path = _sqlite_file(self._engine)
        if self._engine.dialect.name == "postgresql":
            return self._held_pg()
        if path is None:  # an in-memory store: this process is the only one
            return True
        return self._held_file(Path(f"{path}-devid-{self._name}.lease"))

    def _held_pg(self) -> bool:
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))  # the session, and so the lock, is still there
                return True
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            take = "pg_advisory_lock_shared" if self._shared else "pg_try_advisory_lock"
            got = conn.execute(text(f"SELECT {take}(:c, :k)"), {"c": _LOCK_CLASS, "k": _key(self._name)})
            if self._shared or got.scalar():
                self._conn = conn
                return True
            conn.close()
            return False
        except DBAPIError:
            self.release()
            return False

    def _held_file(self, path: Path) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self._shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the lease up (closing the session or file that holds it)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if not conn.invalidated:  # a lost session holds nothing any more
                with contextlib.suppress(SQLAlchemyError):  # it may be lost just now
                    conn.execute(
                        text("SELECT pg_advisory_unlock_all()")
                    )  # at once, not at the backend's exit
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()  # never back to the pool: a fresh session for the next user
                conn.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: Seconds a `Presence.share` count is reused: the limits follow processes joining or leaving
#: this fast, at one query per interval.
SHARE_EVERY = 5.0


class Presence:
    """This process counted among the server processes on the store while it is `present`."""

    NAME = "servers"

    def __init__(self, engine: Engine, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._monotonic = monotonic
        self._guard = threading.Lock()
        self._counted = (float("-inf"), 1)
        path = _sqlite_file(engine)
        self._dir = Path(f"{path}-devid-{self.NAME}") if path is not None else None
        self._file = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lease = Lease(engine, self.NAME, shared=True) if self._dir is None else None
        self._fd: int | None = None

    def present(self) -> bool:
        """Be counted (again, after a lost session); False if the store cannot be reached."""
        if self._lease is not None:
            return self._lease.held()
        if self._dir is None or self._fd is not None:
            return True
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._fd = os.open(self._dir / self._file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        return True

    def share(self) -> int:
        """How many processes a deployment-wide limit is shared by: `count()`, at most
        `SHARE_EVERY` seconds old (the last known count while the store cannot be reached)."""
        now = self._monotonic()
        with self._guard:
            at, found = self._counted
            if now - at < SHARE_EVERY:
                return found
            self._counted = (now, found)  # one thread counts; the others use the last count
        try:
            found = self.count()
        except (DBAPIError, OSError):
            return found
        with self._guard:
            self._counted = (now, found)
        return found

    def count(self) -> int:
        """Server processes counted now (at least 1: this one)."""
        if self._engine.dialect.name == "postgresql":
            with self._engine.connect() as conn:
                found = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                        " WHERE l.locktype = 'advisory' AND l.classid::bigint = :c AND l.objid::bigint = :k"
                        " AND l.objsubid = 2 AND l.granted AND d.datname = current_database()"
                    ),
                    {"c": _LOCK_CLASS, "k": _key(self.NAME)},
                ).scalar()
            return max(1, int(found or 0))
        if self._dir is None:
            return 1
        live = 0
        for entry in self._dir.iterdir():
            try:
                fd = os.open(entry, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # its process left meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                live += 1  # its process holds it
            else:
                entry.unlink(missing_ok=True)  # left by a process that is gone
            finally:
                os.close(fd)
        return max(1, live)

    def leave(self) -> None:
        if self._lease is not None:
            self._lease.release()
        if self._fd is not None and self._dir is not None:
            (self._dir / self._file).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
