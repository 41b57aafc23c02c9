"""Copying a whole store from one database to another: SQLite to PostgreSQL (`devid store
migrate`) and a PostgreSQL snapshot into an SQLite file (`devid backup`).

The target's schema is made by the project's Alembic migrations (stamped at the same head), then
every table is copied in foreign-key order, in primary-key order, in batches, keeping primary keys.
The copy is one transaction on the target: a failure leaves no half-copied store. Afterwards every
table is compared row by row (a digest of its rows as SQLAlchemy reads them on either side).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text
from sqlalchemy.exc import OperationalError

from devid.errors import ConfigError, ConflictError
from devid.store import counters
from devid.store.models import audit_head, metadata, registry_state
from devid.store.schema import migrate

#: One-row tables the migrations seed (the audit head, the registry generation): the copy replaces
#: their rows, and a target holding only these seeds counts as empty.
SEEDED = (audit_head, registry_state)
#: Rows per INSERT batch.
BATCH = 2000


@dataclass(frozen=True)
class TableCopy:
    name: str
    rows: int


@dataclass(frozen=True)
class Transfer:
    """What a copy moved, table by table in the order it copied them."""

    tables: tuple[TableCopy, ...]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


def _ordered(table: Table) -> Any:
    return select(table).order_by(*table.primary_key.columns)


def occupied_tables(conn: Connection) -> dict[str, int]:
    """devid's tables that hold rows, with their counts (the migrations' seed rows do not count)."""
    existing = set(conn.dialect.get_table_names(conn))
    counts = {}
    for table in metadata.sorted_tables:
        if table.name in existing and not any(table is seeded for seeded in SEEDED):
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
            if count:
                counts[table.name] = count
    return counts


def prepare_target(target: Engine) -> None:
    """Refuse a target that cannot be reached or already holds a devid store, then give it the schema."""
    try:
        with target.connect() as conn:
            occupied = occupied_tables(conn)
    except OperationalError as exc:
        raise ConfigError("db-unreachable", f"cannot reach the target database: {exc.orig}") from None
    if occupied:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in occupied.items())
        raise ConflictError(
            "target-not-empty", f"the target database already holds devid data: {listed}; nothing was copied"
        )
    migrate(target)


def _fix_sequences(conn: Connection) -> None:
    """PostgreSQL: move each serial column's sequence past the ids copied in (they were given)."""
    for table in metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        # Only a single integer key has a sequence (a text key, e.g. a fingerprint, has none).
        if len(keys) != 1 or keys[0].autoincrement is False or keys[0].type.python_type is not int:
            continue
        pk = keys[0]
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk.name}'), "
                f"COALESCE(MAX({pk.name}), 1), MAX({pk.name}) IS NOT NULL) FROM {table.name}"
            )
        )


def copy_tables(source: Connection, target: Connection, batch: int = BATCH) -> Transfer:
    """Copy every table from `source` (read in its current transaction) into `target`'s, whose
    schema is at the same head and which holds no devid data (see `prepare_target`)."""
    copied = []
    for table in SEEDED:
        target.execute(delete(table))
    # The counters are copied as they are: the counting triggers would add to them (`counters`).
    counters.uninstall(target)
    for table in metadata.sorted_tables:
        rows = 0
        result = source.execution_options(yield_per=batch).execute(_ordered(table))
        for part in result.partitions():
            target.execute(insert(table), [row._asdict() for row in part])
            rows += len(part)
        copied.append(TableCopy(table.name, rows))
    counters.install(target)
    if target.dialect.name == "postgresql":
        _fix_sequences(target)
    return Transfer(tuple(copied))


def table_digest(conn: Connection, table: Table, batch: int = BATCH) -> tuple[int, str]:
    """Row count and SHA-256 of `table`'s rows in primary-key order, as SQLAlchemy reads them
    (the same Python values on SQLite and PostgreSQL: aware UTC times, bools, bytes)."""
    digest, count = hashlib.sha256(), 0
    for row in conn.execution_options(yield_per=batch).execute(_ordered(table)):
        digest.update(repr(tuple(row)).encode())
        count += 1
    return count, digest.hexdigest()


def differences(source: Connection, target: Connection) -> list[str]:
    """Tables whose rows differ between the two stores, each with both row counts."""
    found = []
    for table in metadata.sorted_tables:
        (a, da), (b, db) = table_digest(source, table), table_digest(target, table)
        if da != db:
            found.append(f"{table.name} ({a} rows, {b} in the copy)")
    return found
