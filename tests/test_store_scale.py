"""The store at scale: no listing or count on a request or CLI path scans a table, and every write
transaction queues on the store's write lock."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event

import devid
from devid.store import repo
from devid.store.engine import make_engine
from devid.store.schema import migrate
from devid.store.states import DeviceState

SRC = Path(devid.__file__).parent


def test_every_write_transaction_takes_the_write_lock() -> None:
    """A bare `begin()` would wait in SQLite's sleeping busy handler behind the queue of writers:
    every transaction opens through `store.engine`: `writing` (with the write lock) or
    `consistent_read` (a read snapshot), the only places that begin."""
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if re.search(r"\.begin\(\)", line):
                bare.append((str(path.relative_to(SRC)), line.strip()))
    assert bare == [
        ("store/engine.py", "with conn, conn.begin():"),
        ("store/engine.py", "with write_lock(engine), engine.begin() as conn:"),
    ]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'devid.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def _plan(engine: Engine, query: Callable[[Connection], Any]) -> list[str]:
    """The query plan SQLite chose for each statement `query` ran."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        query(conn)
        event.remove(conn, "before_cursor_execute", capture)
        assert seen
        return [
            row[-1]
            for statement, params in seen
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
        ]


#: Each listing's first page, and the index search that must answer it (its filter, in id order).
QUERIES: dict[str, tuple[Callable[[Connection], Any], str]] = {
    "device list --state": (
        lambda c: repo.list_devices(c, state=DeviceState.INACTIVE),
        "SEARCH devices USING INDEX ix_devices_state_id (state=?",
    ),
    "device list --hub": (
        lambda c: repo.list_devices(c, hub="eu1"),
        "SEARCH devices USING INDEX ix_devices_hub_id (hub_id=?",
    ),
    "device list --manufacturer": (
        lambda c: repo.list_devices(c, manufacturer="acme"),
        "SEARCH devices USING INDEX ix_devices_manufacturer_id (manufacturer_id=?",
    ),
    "hub in use (hub remove)": (
        lambda c: repo.hub_in_use(c, 3),
        "SEARCH devices USING COVERING INDEX ix_devices_hub_id (hub_id=?",
    ),
    "cert list --profile": (
        lambda c: repo.list_certificates(c, profile="ldevid"),
        "SEARCH certificates USING INDEX ix_certificates_profile_id (profile=?",
    ),
    "cert list --device": (
        lambda c: repo.list_certificates(c, device_serial="SN-1"),
        "SEARCH certificates USING INDEX ix_certificates_device (device_id=?",
    ),
    "renewal: the device's valid certificates": (
        lambda c: repo.valid_certificates_of(c, [1]),
        "SEARCH certificates USING INDEX ix_certificates_device_status (device_id=? AND status=?)",
    ),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_filtered_listings_and_counts_search_an_index(engine: Engine, name: str) -> None:
    query, search = QUERIES[name]
    plan = _plan(engine, query)
    assert any(step.startswith(search) for step in plan), f"{name}: {plan}"
    assert not any(re.match(r"SCAN (devices|certificates)\b", step) for step in plan), f"{name} scans: {plan}"
    assert not any("TEMP B-TREE" in step for step in plan), f"{name} sorts: {plan}"
