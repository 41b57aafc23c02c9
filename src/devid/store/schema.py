"""The store's schema: migrations through Alembic, and the cheap check every command makes.

Alembic is imported only to migrate: checking the revision is one query against
`alembic_version`, so a command that reads the store does not pay Alembic's import (~0.1 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from devid.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest migration's revision; a test checks it is Alembic's head.
HEAD = "0012"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision."""
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise ConfigError("db-unreachable", f"cannot reach the database: {exc.orig}") from None


def current_revision(engine: Engine) -> str | None:
    """The store's revision, None for a store never migrated."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError) as exc:
        if "alembic_version" in str(exc.orig):  # no such table: nothing migrated yet
            return None
        raise ConfigError("db-unreachable", f"cannot reach the database: {exc.orig}") from None


def check_schema(engine: Engine) -> None:
    """Refuse to run on a store whose schema is not at the newest revision."""
    current = current_revision(engine)
    if current != HEAD:
        raise ConfigError(
            "db-schema", f"store schema is at {current}, expected {HEAD}: run `devid db upgrade`"
        )
