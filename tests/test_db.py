"""Schema migrations: an old store is refused with the command that fixes it, which then works."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from conftest import PASSPHRASE

from devid.authority.setup import open_authority
from devid.cli.db_cmd import upgrade
from devid.config import Home
from devid.errors import ConfigError
from devid.store.engine import make_engine
from devid.store.schema import HEAD, alembic_config, current_revision


def test_old_schema_is_refused_then_upgraded(home: Home) -> None:
    engine = make_engine(home.config.db_url)
    command.downgrade(alembic_config(engine), "0001")
    with pytest.raises(ConfigError) as refused:
        open_authority(home, PASSPHRASE)
    assert refused.value.code == "db-schema"
    assert "devid db upgrade" in refused.value.message

    upgrade(home=home.path)

    authority = open_authority(home, PASSPHRASE)
    assert set(authority.cas) >= {"root", "manufacturing", "operational"}
    authority.engine.dispose()
    engine.dispose()


def test_head_constant_is_alembics_head(home: Home) -> None:
    """`check_schema` compares with HEAD without importing Alembic: it must name the newest migration."""
    engine = make_engine(home.config.db_url)
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == HEAD
    assert current_revision(engine) == HEAD
    engine.dispose()
