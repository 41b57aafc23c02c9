"""Schema migrations: an old store is refused with the command that fixes it, which then works."""

from __future__ import annotations

import pytest
from alembic import command
from conftest import PASSPHRASE

from devid.authority.setup import open_authority
from devid.cli.db_cmd import upgrade
from devid.config import Home
from devid.errors import ConfigError
from devid.store.engine import _alembic_config, make_engine


def test_old_schema_is_refused_then_upgraded(home: Home) -> None:
    engine = make_engine(home.config.db_url)
    command.downgrade(_alembic_config(engine), "0001")
    with pytest.raises(ConfigError) as refused:
        open_authority(home, PASSPHRASE)
    assert refused.value.code == "db-schema"
    assert "devid db upgrade" in refused.value.message

    upgrade(home=home.path)

    authority = open_authority(home, PASSPHRASE)
    assert set(authority.cas) >= {"root", "manufacturing", "operational"}
    authority.engine.dispose()
    engine.dispose()
