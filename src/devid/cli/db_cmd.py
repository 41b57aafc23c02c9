"""`devid db`: the store's schema."""

from __future__ import annotations

import typer

from devid.cli.common import HomeOpt, console, load_home
from devid.store.engine import make_engine
from devid.store.schema import migrate

app = typer.Typer(help="The store: schema migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(home: HomeOpt = None) -> None:
    """Migrate the store to the newest schema (Alembic); safe to run again."""
    engine = make_engine(load_home(home).config.db_url)
    migrate(engine)
    console.print(f"store at the newest schema ({engine.dialect.name})", highlight=False)
