"""Engines for the two supported stores (schema migrations: `devid.store.schema`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from devid.errors import ConfigError, StoreUnavailable

#: Seconds a request waits for a pooled connection, and for a new one to connect (libpq's least:
#: it reads 1 as 2), before it is refused with StoreUnavailable: an outage answers 503 at once
#: instead of holding every request until the client gives up.
POOL_TIMEOUT = 1
CONNECT_TIMEOUT = 2


#: SQLite connections a process keeps, as many again in a burst (one writer at a time; readers
#: never wait under WAL), and the page cache of each, in KiB: together they bound a server's memory
#: for the store (128 MiB). A soak with a 64 MiB cache per connection and no bound grew a worker by
#: ~600 MB/h as the caches filled with a growing store.
SQLITE_POOL = 8
SQLITE_CACHE_KIB = 8192


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" hook below (pysqlite's own is broken).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before issue() returns, so a power cut cannot forget a certificate
    # that was handed out. In WAL mode this costs about the same as NORMAL here.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    # The page cache is per connection and never shrinks: SQLITE_POOL connections of this size are
    # what a process may hold. Index pages missed here are a read from the OS's page cache away.
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock at BEGIN: two processes that read then write would otherwise
    # deadlock on the lock upgrade and one would fail with "database is locked". Readers (opened
    # with `reading()`) begin deferred, so under WAL they never wait for a writer.
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


READ_ONLY = "devid_read_only"


def reading(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READ_ONLY: True})


@contextlib.contextmanager
def consistent_read(engine: Engine, isolation: str | None = None) -> Iterator[Connection]:
    """One read transaction, every statement in it seeing the same state of the store (a backup's
    snapshot, a copy's comparison); `isolation` e.g. REPEATABLE READ on PostgreSQL. It writes
    nothing, so it takes no write lock."""
    conn = reading(engine)
    if isolation is not None:
        conn = conn.execution_options(isolation_level=isolation)
    with conn, conn.begin():
        yield conn


class _WriteLock:
    """Queues the writers of one SQLite file, across threads and processes, on a sidecar lock file.

    SQLite's own busy handler polls with sleeps (1, 2, 5, 10... ms) while another connection holds
    the write lock; blocking on `flock` instead wakes the next writer as soon as the lock is free.
    It only orders writers that use it, which is every writer in devid (`writing`). A thread that
    already holds it passes through: a nested writer is SQLite's to refuse, not a deadlock here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._owner: int | None = None
        self._fd: int | None = None
        self._pid = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        with self._threads:  # flock does not exclude threads sharing one open file
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._owner = me
            try:
                yield
            finally:
                self._owner = None
                fcntl.flock(self._fd, fcntl.LOCK_UN)


# Keyed by the database file, not owned by an authority: the lock stands for the file, which every
# engine and authority of this process opening it shares, and it keeps one descriptor per file for
# the process's life (engines come and go; their locks would each leave a descriptor to close).
_write_locks: dict[str, _WriteLock] = {}
_write_locks_guard = threading.Lock()


@contextlib.contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Queue on the database's write lock: on a SQLite file, writers queue on a lock file instead
    of SQLite's sleeping busy handler; elsewhere a no-op. Writers use `writing`, which takes it."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    path = os.path.abspath(database)
    with _write_locks_guard:
        lock = _write_locks.get(path)
        if lock is None:
            lock = _write_locks[path] = _WriteLock(Path(f"{path}-devid-write.lock"))
    with lock.hold():
        yield


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed on leaving (rolled back on an exception), holding the store's
    write lock. Every writer in devid opens its transaction here, never with a bare begin: one that
    did would wait in SQLite's sleeping busy handler behind the queue (a test keeps it so)."""
    with write_lock(engine), engine.begin() as conn:
        yield conn


def make_engine(url: str) -> Engine:
    """An engine for `url`: `sqlite:///path` (WAL) or `postgresql+psycopg://...`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("db-url", f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=SQLITE_POOL,
            max_overflow=SQLITE_POOL,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql":
        connect = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT}
        return create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=POOL_TIMEOUT,
            connect_args=connect,
        )
    raise ConfigError(
        "db-url", f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable that `exc` (or an exception it was raised from) stands for, None when
    it is no outage: the driver's OperationalError (refused, lost or shut-down connection, lock
    timeout), a connection the driver invalidated, or the pool's timeout."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, StoreUnavailable):
            return seen
        if isinstance(seen, PoolTimeout):
            return StoreUnavailable("no free database connection")
        if isinstance(seen, OperationalError) or (
            isinstance(seen, DBAPIError) and seen.connection_invalidated
        ):
            return StoreUnavailable(f"{type(seen.orig).__name__} from the database")
        seen = seen.__cause__ or seen.__context__
    return None
