"""Shared fixtures: real SoftHSM2 tokens, real PostgreSQL databases, fresh devid homes."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

sys.path.insert(0, str(Path(__file__).parent))

from est_helpers import EstServer, running_server
from softhsm import SoftToken, make_token

from devid.authority.core import Authority
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.config import Home

PASSPHRASE = b"correct horse battery staple"
PG_ADMIN_URL = os.environ.get(
    "DEVID_TEST_PG_URL", "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres"
)
#: Every token the session uses. SoftHSM lists tokens once, when first loaded in a process, so all
#: of them are made up front by the autouse session fixture below.
TOKENS = {
    "ca": ("devid-ca", "1234"),
    "se": ("devid-se", "se-pin-7f3a9c"),
    "fresh": ("devid-never-logged-in", "1234"),
    "cached": ("devid-cached-pin", "1234"),
    "home": ("devid-home", "4321"),
    "line": ("devid-line", "2468"),
    "tls": ("devid-tls", "tls-pin-5150"),
}


@pytest.fixture(scope="session", autouse=True)
def tokens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SoftToken]:
    base = tmp_path_factory.mktemp("softhsm")
    return {name: make_token(base, label=label, pin=pin) for name, (label, pin) in TOKENS.items()}


@pytest.fixture(autouse=True)
def _passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVID_PASSPHRASE", PASSPHRASE.decode())
    monkeypatch.delenv("DEVID_HOME", raising=False)


def _fresh_pg_database() -> Iterator[str]:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"devid_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig}); scripts/test.sh starts it")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped after the test."""
    yield from _fresh_pg_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Each store test runs on the embedded default (SQLite) and on PostgreSQL."""
    if request.param == "sqlite":
        yield None
    else:
        yield from _fresh_pg_database()


@pytest.fixture
def home(tmp_path: Path, db_url: str | None) -> Home:
    """A new software-key home on SQLite and on PostgreSQL."""
    return init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE, db_url=db_url)


@pytest.fixture
def sqlite_home(tmp_path: Path) -> Home:
    """A new software-key home on the embedded default store only."""
    return init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE)


@pytest.fixture
def authority(home: Home) -> Iterator[Authority]:
    auth = open_authority(home, PASSPHRASE)
    yield auth
    auth.close()


@pytest.fixture
def clock() -> FixedClock:
    """The authority's injected clock, for tests that move time."""
    return FixedClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def auth(sqlite_home: Home, clock: FixedClock) -> Iterator[Authority]:
    """An authority on the embedded store that reads `clock`."""
    authority = open_authority(sqlite_home, PASSPHRASE, clock=clock)
    yield authority
    authority.close()


@pytest.fixture
def server(auth: Authority, tmp_path: Path) -> Iterator[EstServer]:
    """The real EST server over TLS on a loopback port, for `auth`."""
    with running_server(auth, tmp_path / "server") as srv:
        yield srv


#: The longest modules (tens of seconds each), started first: with `--dist loadfile` a module runs
#: on one worker, and one of these collected last would leave the other worker idle at the end.
SLOWEST_FIRST = ("test_api_schemathesis.py", "test_sim.py", "test_registry_cli.py", "test_cli.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
