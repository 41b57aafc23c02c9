"""Counters of certificates and devices, kept by database triggers in the changing transaction.

Certificates are written by issuance (group commit), renewal (superseding), set-based revocation
and its undoing, status signers; devices by the factory, the registry's JIT registration and
state changes. Triggers count them all in the same transaction whatever the code path, so the
dashboard reads a few thousand counter rows instead of scanning millions. SQLite fires a trigger
per row; PostgreSQL fires one per statement over its transition tables, so revoking a lot of
100k certificates adds one grouped upsert, not 100k updates of the same counter rows.

They also note public keys certified for more than one device (`shared_public_keys`), which
`devid health` re-checks instead of reading the whole public-key index.

`install` creates the triggers for the connection's dialect; `rebuild` recounts from the tables
(the migration's backfill, and a bulk loader's shortcut).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Connection


class Dimension(StrEnum):
    """What `device_counts.ref` is the id of."""

    HUB = "hub"
    ENROLLMENT = "enrollment"
    MANUFACTURER = "manufacturer"


@dataclass(frozen=True)
class _Key:
    """One counter row per source row: (counter column, SQL of the source row `{r}`) pairs."""

    counts: str
    source: str
    columns: tuple[tuple[str, str], ...]
    #: Source columns the key reads: an update of others changes no count (SQLite's UPDATE OF).
    reads: tuple[str, ...]

    def values(self, row: str) -> list[str]:
        return [expr.format(r=row) for _, expr in self.columns]

    @property
    def names(self) -> str:
        return ", ".join(name for name, _ in self.columns)


def _keys(dialect: str) -> tuple[_Key, ...]:
    day = "date({r}.not_after)" if dialect == "sqlite" else "CAST({r}.not_after AS DATE)"
    certificate = _Key(
        "certificate_counts",
        "certificates",
        (("profile", "{r}.profile"), ("status", "{r}.status"), ("expiry", day)),
        ("profile", "status", "not_after"),
    )
    devices = tuple(
        _Key(
            "device_counts",
            "devices",
            (
                ("dimension", f"'{dim.value}'"),
                ("ref", f"coalesce({{r}}.{dim.value}_id, 0)"),
                ("state", "{r}.state"),
            ),
            ("state", f"{dim.value}_id"),
        )
        for dim in Dimension
    )
    return (certificate, *devices)


def _sqlite_triggers() -> list[str]:
    def bump(key: _Key, row: str, by: str) -> str:
        return (
            f"INSERT INTO {key.counts} ({key.names}, n) VALUES ({', '.join(key.values(row))}, {by}) "
            f"ON CONFLICT ({key.names}) DO UPDATE SET n = n + excluded.n;"
        )

    out = []
    keys = _keys("sqlite")
    for source in ("certificates", "devices"):
        mine = [k for k in keys if k.source == source]
        out.append(
            f"CREATE TRIGGER {source}_count_insert AFTER INSERT ON {source} BEGIN "
            + " ".join(bump(k, "NEW", "1") for k in mine)
            + " END"
        )
        out.append(
            f"CREATE TRIGGER {source}_count_delete AFTER DELETE ON {source} BEGIN "
            + " ".join(bump(k, "OLD", "-1") for k in mine)
            + " END"
        )
        for i, key in enumerate(mine):
            changed = " OR ".join(
                f"{old} IS NOT {new}" for old, new in zip(key.values("OLD"), key.values("NEW"), strict=True)
            )
            out.append(
                f"CREATE TRIGGER {source}_count_update_{i} AFTER UPDATE OF {', '.join(key.reads)} "
                f"ON {source} WHEN {changed} BEGIN {bump(key, 'OLD', '-1')} {bump(key, 'NEW', '1')} END"
            )
    for op, columns in (("insert", ""), ("update", " OF public_key_fingerprint, device_id")):
        out.append(
            f"CREATE TRIGGER certificates_shared_key_{op} AFTER {op.upper()}{columns} ON certificates "
            f"WHEN NEW.device_id IS NOT NULL AND EXISTS (SELECT 1 FROM certificates c "
            f"WHERE c.public_key_fingerprint = NEW.public_key_fingerprint AND c.device_id <> NEW.device_id) "
            f"BEGIN INSERT INTO shared_public_keys (fingerprint) VALUES (NEW.public_key_fingerprint) "
            f"ON CONFLICT DO NOTHING; END"
        )
    return out


#: PostgreSQL: every statement writing certificates or devices first takes this transaction lock,
#: so writers of counted rows take the counter rows' locks one transaction at a time, never in
#: crossed orders (issuance writes devices then certificates, revocation the reverse: with row
#: locks alone the two would deadlock). Taken before the statement locks any row of its own.
#: Audited writers already queue on the audit head; this moves their queue to their first write.
_PG_LOCK = "pg_advisory_xact_lock(1684371049)"
#: A key written for a device is shared if another device's certificate has it. Under the lock,
#: a racing writer of the same key waits for the first to commit, and this statement (a fresh
#: snapshot) sees its row. `{rows}`: the rows written.
_PG_SHARED = (
    "INSERT INTO shared_public_keys (fingerprint) SELECT DISTINCT n.public_key_fingerprint FROM {rows} n "
    "JOIN certificates c ON c.public_key_fingerprint = n.public_key_fingerprint "
    "AND c.device_id <> n.device_id ON CONFLICT DO NOTHING;"
)
#: The rows an UPDATE gave another key or device.
_PG_REKEYED = (
    "(SELECT n.* FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE "
    "(n.public_key_fingerprint, n.device_id) IS DISTINCT FROM (o.public_key_fingerprint, o.device_id))"
)


def _postgresql_triggers() -> list[str]:
    def bump(key: _Key, *rows: tuple[str, str]) -> str:
        names = [name for name, _ in key.columns]
        parts = " UNION ALL ".join(
            f"SELECT {', '.join(f'{v} AS {n}' for v, n in zip(key.values('r'), names, strict=True))}, "
            f"{by} AS d FROM {table} r"
            for table, by in rows
        )
        return (
            f"INSERT INTO {key.counts} ({key.names}, n) SELECT {key.names}, sum(d) FROM ({parts}) x "
            f"GROUP BY {key.names} HAVING sum(d) <> 0 "
            f"ON CONFLICT ({key.names}) DO UPDATE SET n = {key.counts}.n + EXCLUDED.n;"
        )

    out = [
        f"CREATE FUNCTION devid_count_lock() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"PERFORM {_PG_LOCK}; RETURN NULL; END $$"
    ]
    keys = _keys("postgresql")
    shared = (
        f"IF TG_OP = 'INSERT' THEN {_PG_SHARED.format(rows='new_rows')} "
        f"ELSIF TG_OP = 'UPDATE' THEN {_PG_SHARED.format(rows=_PG_REKEYED)} END IF; "
    )
    for source in ("certificates", "devices"):
        mine = [k for k in keys if k.source == source]
        new, old = ("new_rows", "1"), ("old_rows", "-1")
        out.append(
            f"CREATE FUNCTION devid_count_{source}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'INSERT' THEN {' '.join(bump(k, new) for k in mine)} "
            f"ELSIF TG_OP = 'DELETE' THEN {' '.join(bump(k, old) for k in mine)} "
            f"ELSE {' '.join(bump(k, new, old) for k in mine)} END IF; "
            f"{shared if source == 'certificates' else ''}RETURN NULL; END $$"
        )
        out.append(
            f"CREATE TRIGGER {source}_count_lock BEFORE INSERT OR UPDATE OR DELETE ON {source} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION devid_count_lock()"
        )
        for op, tables in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
        ):
            out.append(
                f"CREATE TRIGGER {source}_count_{op.lower()} AFTER {op} ON {source} "
                f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION devid_count_{source}()"
            )
    return out


def install(conn: Connection) -> None:
    """Create the counting triggers (the counter tables exist and are filled: `rebuild`)."""
    sqlite = conn.dialect.name == "sqlite"
    for statement in _sqlite_triggers() if sqlite else _postgresql_triggers():
        conn.exec_driver_sql(statement)


def uninstall(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        for statement in _sqlite_triggers():  # CREATE TRIGGER <name> ...
            conn.exec_driver_sql(f"DROP TRIGGER {statement.split()[2]}")
        return
    for name in ("certificates", "devices", "lock"):
        conn.exec_driver_sql(f"DROP FUNCTION devid_count_{name}() CASCADE")


def rebuild(conn: Connection) -> None:
    """Recount every counter from the tables (one grouped pass over each)."""
    keys = _keys(conn.dialect.name)
    for table in (*{k.counts for k in keys}, "shared_public_keys"):
        conn.exec_driver_sql(f"DELETE FROM {table}")
    for key in keys:
        conn.exec_driver_sql(
            f"INSERT INTO {key.counts} ({key.names}, n) SELECT {', '.join(key.values(key.source))}, "
            f"count(*) FROM {key.source} GROUP BY {', '.join(str(i + 1) for i in range(len(key.columns)))}"
        )
    conn.exec_driver_sql(
        "INSERT INTO shared_public_keys (fingerprint) SELECT public_key_fingerprint FROM certificates "
        "WHERE public_key_fingerprint IS NOT NULL AND device_id IS NOT NULL "
        "GROUP BY public_key_fingerprint HAVING min(device_id) <> max(device_id)"
    )
