"""Alembic environment: runs on the engine devid hands over in `config.attributes`."""

from __future__ import annotations

from alembic import context

from devid.store.models import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
