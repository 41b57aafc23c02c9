"""`devid store` (also `devid db`): the store's schema, and moving it to PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import make_url

from devid.cli.common import HomeOpt, PassphraseOpt, console, load_home
from devid.config import Home, resolve_passphrase
from devid.errors import ConfigError, ConflictError
from devid.store import transfer
from devid.store.engine import consistent_read, make_engine, write_lock, writing
from devid.store.schema import check_schema, migrate

app = typer.Typer(help="The store: schema migrations, moving it to PostgreSQL.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(home: HomeOpt = None) -> None:
    """Migrate the store to the newest schema (Alembic); safe to run again."""
    engine = make_engine(load_home(home).config.db_url)
    migrate(engine)
    console.print(f"store at the newest schema ({engine.dialect.name})", highlight=False)


@app.command("migrate")
def migrate_store(
    to: Annotated[
        str,
        typer.Option("--to", metavar="URL", help="an empty PostgreSQL database: postgresql+psycopg://..."),
    ],
    batch: Annotated[int, typer.Option("--batch", min=1, help="rows per INSERT")] = transfer.BATCH,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Move the home's embedded SQLite store to PostgreSQL and point the home at it.

    Stop the home's servers first (they keep the file open); writers wait on the store's write lock
    while it moves. Every table is compared row by row and the audit chain is verified against the
    audit key before the home's db_url is rewritten; the SQLite file is kept, read-only (0400)."""
    loaded = load_home(home)
    source = make_engine(loaded.config.db_url)
    if source.dialect.name != "sqlite":
        raise ConfigError(
            "store-not-sqlite",
            f"the store of {loaded.path} is already on {source.dialect.name}: only an embedded SQLite "
            "store is moved",
        )
    target = make_engine(to)
    if target.dialect.name != "postgresql":
        raise ConfigError("target-not-postgresql", f"--to must name a PostgreSQL database, not {to!r}")
    check_schema(source)
    passphrase = resolve_passphrase(passphrase_file)
    started = time.perf_counter()
    transfer.prepare_target(target)
    with write_lock(source):
        with consistent_read(source) as src, writing(target) as dst:
            moved = transfer.copy_tables(src, dst, batch)
            mismatched = transfer.differences(src, dst)
            if mismatched:  # leaving the block rolls the copy back
                raise ConflictError(
                    "copy-mismatch", f"the copy differs from the store: {', '.join(mismatched)}"
                )
        moved_home = Home(loaded.path, dataclasses.replace(loaded.config, db_url=to))
        _verify_audit(moved_home, passphrase)
        raw = source.raw_connection()  # outside any transaction: fold the WAL into the file kept
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
        source.dispose()
        moved_home.save()
        database = Path(str(make_url(loaded.config.db_url).database))
        os.chmod(database, 0o400)
    seconds = time.perf_counter() - started
    for table in moved.tables:
        console.print(f"  {table.name:<20} {table.rows:>9} rows", highlight=False)
    console.print(
        f"moved {moved.rows} rows in {len(moved.tables)} tables to PostgreSQL in {seconds:.1f} s; every "
        f"table compared, audit chain verified; {loaded.path} now uses it; {database} kept read-only",
        highlight=False,
    )


def _verify_audit(home: Home, passphrase: bytes) -> None:
    """The moved store's audit chain, checked by the authority as `devid audit verify` does."""
    from devid.authority.setup import open_authority

    authority = open_authority(home, passphrase)
    try:
        result = authority.verify_audit()
    finally:
        authority.close()
    if not result.ok:
        raise ConflictError(
            "copy-audit-broken",
            f"the copied audit chain does not verify at event {result.broken_seq}: {result.reason}; "
            "the home still uses its SQLite store",
        )
