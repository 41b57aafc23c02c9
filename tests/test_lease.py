"""The store lease and presence count (`devid.store.lease`) on SQLite and PostgreSQL: one holder at
a time, taken over once released, and the server processes counted for shared rate limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from devid.config import Home
from devid.store.engine import make_engine
from devid.store.lease import Lease, Presence


def _engines(home: Home) -> tuple[Engine, Engine]:
    """Two engines on the store, as two processes would have."""
    return make_engine(home.config.db_url), make_engine(home.config.db_url)


def test_one_holder_at_a_time_and_a_takeover_after_release(home: Home) -> None:
    first, second = _engines(home)
    a, b = Lease(first, "duties"), Lease(second, "duties")
    try:
        assert a.held() and a.held()  # taken, then kept
        assert not b.held()
        assert Lease(second, "other").held()  # another name is another lease
        a.release()
        assert b.held() and not a.held()
    finally:
        a.release()
        b.release()
        first.dispose()
        second.dispose()


def test_a_dead_holder_loses_the_lease(home: Home) -> None:
    """A holder killed with SIGKILL: its session (or file lock) ends with it."""
    script = (
        "import sys, time\n"
        "from devid.store.engine import make_engine\n"
        "from devid.store.lease import Lease\n"
        "lease = Lease(make_engine(sys.argv[1]), 'duties')\n"
        "print(lease.held(), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, home.config.db_url], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    engine = make_engine(home.config.db_url)
    lease = Lease(engine, "duties")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "True"
        assert not lease.held()
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 10
        while not lease.held():
            assert time.monotonic() < deadline, "the lease stayed with a dead process"
            time.sleep(0.1)
    finally:
        child.kill()
        lease.release()
        engine.dispose()


def test_a_holder_whose_session_is_ended_gives_up_the_lease_quietly(home: Home) -> None:
    """The database ends the holder's session (an outage, a failover): the next check says the lease
    is lost without raising, and it is taken again once the store answers."""
    if home.config.db_url is None or not home.config.db_url.startswith("postgresql"):
        pytest.skip("a session only the database can end: PostgreSQL")
    holder, admin = _engines(home)
    lease = Lease(holder, "duties")
    try:
        assert lease.held()
        with admin.connect() as conn:
            ended = (
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                        " JOIN pg_database d ON d.oid = l.database"
                        " WHERE l.locktype = 'advisory' AND l.granted"
                        " AND d.datname = current_database()"
                    )
                )
                .scalars()
                .all()
            )
        assert ended and all(ended)
        assert not lease.held()  # noticed on the dead session, and nothing raised
        lease.release()  # twice is harmless
        assert lease.held()  # a fresh session takes it again
    finally:
        lease.release()
        holder.dispose()
        admin.dispose()


def test_presence_counts_the_processes_on_the_store(home: Home, tmp_path: Path) -> None:
    first, second = _engines(home)
    one, two = Presence(first), Presence(second)
    try:
        assert one.present()
        assert one.count() == 1
        assert two.present()
        assert one.count() == two.count() == 2
        two.leave()
        assert one.count() == 1
    finally:
        one.leave()
        two.leave()
        first.dispose()
        second.dispose()
