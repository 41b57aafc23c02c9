"""Backups of a devid home: one tar.gz (mode 0600) holding a consistent snapshot of the store, the
home's files as they are (CA keys stay sealed under the passphrase; nothing is decrypted) and a
manifest of the marks that must never go back: each CA's next certificate index (inside every
serial) and last CRL number, and the audit chain's head.

The store snapshot is an SQLite file either way: an embedded store through SQLite's online backup
API (one step under a read transaction: consistent while writers go on, which WAL lets them), a
PostgreSQL store copied table by table inside one REPEATABLE READ transaction (`devid.store.transfer`).
A restore makes a new home on that file (`devid store migrate` moves it to PostgreSQL again).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, make_url, select

from devid.config import CONFIG_FILE, Home
from devid.errors import ConfigError, ConflictError, NotFoundError
from devid.store import audit, transfer
from devid.store.engine import consistent_read, make_engine, writing
from devid.store.models import cas, certificates
from devid.store.schema import check_schema, migrate

FORMAT = 1
MANIFEST = "manifest.json"
STORE = "devid.db"
#: The home's files sit under this folder of the archive.
FILES = "home"
#: Files beside an SQLite store that are never part of a backup (the snapshot stands for them).
_STORE_SIDECARS = ("", "-wal", "-shm", "-journal", "-devid-write.lock")


class SnapshotMethod(StrEnum):
    SQLITE_ONLINE_BACKUP = "sqlite-online-backup"
    POSTGRESQL_REPEATABLE_READ = "postgresql-repeatable-read-copy"


@dataclass(frozen=True)
class CaMark:
    name: str
    serial: str
    #: The next index to reserve (indices go out in blocks) and one past the highest issued.
    next_index: int
    issued: int
    crl_number: int


@dataclass(frozen=True)
class Marks:
    """What serials, CRL numbers and the audit chain have reached."""

    cas: tuple[CaMark, ...]
    audit_seq: int
    audit_hash: str

    def passed(self, older: Marks) -> list[str]:
        """Where this store went past `older` (for the same CAs): each as `what: older -> this`."""
        ahead = []
        mine = {(ca.name, ca.serial): ca for ca in self.cas}
        for old in older.cas:
            now = mine.get((old.name, old.serial))
            if now is not None and now.issued > old.issued:
                ahead.append(f"CA {old.name} certificate index {old.issued} -> {now.issued}")
            if now is not None and now.next_index > old.next_index:
                ahead.append(f"CA {old.name} next index block {old.next_index} -> {now.next_index}")
            if now is not None and now.crl_number > old.crl_number:
                ahead.append(f"CA {old.name} CRL number {old.crl_number} -> {now.crl_number}")
        if self.audit_seq > older.audit_seq:
            ahead.append(f"audit event {older.audit_seq} -> {self.audit_seq}")
        return ahead


def read_marks(engine: Engine) -> Marks:
    issued = (
        select(func.coalesce(func.max(certificates.c.idx) + 1, 0))
        .where(certificates.c.issuer_id == cas.c.id)
        .scalar_subquery()
    )
    with consistent_read(engine) as conn:
        rows = conn.execute(
            select(cas.c.name, cas.c.serial, cas.c.next_index, issued, cas.c.crl_number).order_by(cas.c.id)
        ).all()
        seq, digest = audit.head(conn)
    return Marks(tuple(CaMark(*row) for row in rows), seq, digest)


@dataclass(frozen=True)
class Manifest:
    version: int
    #: The devid that wrote it (the store's schema revision is in the snapshot itself).
    devid_version: str
    created_at: str
    snapshot: SnapshotMethod
    key_backend: str
    marks: Marks

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str) -> Manifest:
        try:
            obj: dict[str, Any] = json.loads(data)
            marks = obj.pop("marks")
            if obj.get("version") != FORMAT:
                raise ValueError(f"format {obj.get('version')}, this devid reads {FORMAT}")
            return cls(
                **{**obj, "snapshot": SnapshotMethod(obj["snapshot"])},
                marks=Marks(
                    tuple(CaMark(**ca) for ca in marks["cas"]), marks["audit_seq"], marks["audit_hash"]
                ),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError("backup-invalid", f"{what} has no valid devid backup manifest: {exc}") from None


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _private_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def snapshot_store(db_url: str, dest: Path) -> SnapshotMethod:
    """A consistent copy of the store at `db_url` as a new SQLite file `dest` (mode 0600)."""
    _private_file(dest)
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        source = sqlite3.connect(str(url.database), timeout=60)
        target = sqlite3.connect(dest)
        try:
            source.backup(target)  # all pages in one step: one read transaction, one instant
        finally:
            target.close()
            source.close()
        return SnapshotMethod.SQLITE_ONLINE_BACKUP
    engine, copy = make_engine(db_url), make_engine(sqlite_url(dest))
    try:
        migrate(copy)
        with consistent_read(engine, "REPEATABLE READ") as snap, writing(copy) as dst:
            transfer.copy_tables(snap, dst)
    finally:
        engine.dispose()
        copy.dispose()
    return SnapshotMethod.POSTGRESQL_REPEATABLE_READ


def _store_files(home: Home) -> set[Path]:
    url = make_url(home.config.db_url)
    names = {home.path / STORE}
    if url.get_backend_name() == "sqlite" and url.database:
        names.add(Path(url.database))
    return {Path(f"{name.resolve()}{suffix}") for name in names for suffix in _STORE_SIDECARS}


def write_backup(home: Home, out: Path, now: datetime) -> Manifest:
    """Snapshot the store, then add the home's files (after it: every key the snapshot names is
    there) and the manifest, into `out` (written beside it and renamed: never half an archive)."""
    if out.exists():
        raise ConflictError("backup-exists", f"{out} already exists; nothing was written")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        db = Path(tmp) / STORE
        method = snapshot_store(home.config.db_url, db)
        engine = make_engine(sqlite_url(db))
        marks = read_marks(engine)
        engine.dispose()
        manifest = Manifest(
            FORMAT, package_version("devid"), now.isoformat(), method, home.config.key_backend, marks
        )
        partial = Path(tmp) / "backup.tar.gz"
        _private_file(partial)
        skipped = _store_files(home)
        with tarfile.open(partial, "w:gz") as tar:
            info = tarfile.TarInfo(MANIFEST)
            data = manifest.to_json()
            info.size, info.mode, info.mtime = len(data), 0o600, int(now.timestamp())
            tar.addfile(info, io.BytesIO(data))
            tar.add(db, STORE)
            for path in sorted(home.path.rglob("*")):
                if path.is_file() and not path.is_symlink() and path.resolve() not in skipped:
                    tar.add(path, f"{FILES}/{path.relative_to(home.path)}")
        os.replace(partial, out)
    return manifest


def read_manifest(archive: tarfile.TarFile, what: str) -> Manifest:
    member = archive.extractfile(MANIFEST) if MANIFEST in archive.getnames() else None
    if member is None:
        raise ConfigError("backup-invalid", f"{what} is not a devid backup (no {MANIFEST})")
    return Manifest.from_json(member.read(), what)


def _refuse_existing(new: Path, manifest: Manifest) -> None:
    """A restore makes a new home. Over a home of the same CAs that went past the backup, say by
    how much: its serials and CRL numbers would be handed out a second time."""
    if (new / CONFIG_FILE).exists():
        passed = read_marks(make_engine(Home.load(new).config.db_url)).passed(manifest.marks)
        if passed:
            raise ConflictError(
                "restore-would-repeat",
                f"{new} has issued or published since this backup ({'; '.join(passed)}): restoring it "
                "would hand out serials and CRL numbers again; nothing was changed",
            )
        raise ConflictError("home-exists", f"{new} is already a devid home: restore into a new folder")
    if new.exists() and (not new.is_dir() or any(new.iterdir())):
        raise ConflictError(
            "restore-target-not-empty", f"{new} exists and is not empty: restore into a new folder"
        )


def restore_backup(archive_path: Path, new: Path) -> Manifest:
    """Make the home `new` from a backup; its store is checked (schema, audit chain, the manifest's
    marks) before the command returns."""
    if not archive_path.is_file():
        raise NotFoundError("backup-missing", f"no backup file at {archive_path}")
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            manifest = read_manifest(archive, str(archive_path))
            _refuse_existing(new, manifest)
            created = not new.exists()
            try:
                _unpack(archive, new)
                home = Home.load(new)
                home.config.db_url = sqlite_url(new / STORE)
                home.save()
                _check_restored(home, manifest)
            except BaseException:
                if created:
                    shutil.rmtree(new, ignore_errors=True)
                raise
    except tarfile.TarError as exc:
        raise ConfigError("backup-invalid", f"{archive_path} is not a devid backup: {exc}") from None
    return manifest


def _unpack(archive: tarfile.TarFile, new: Path) -> None:
    """The home's files into `new` (a folder 0700), the store snapshot as `new/devid.db` (0600)."""
    new.mkdir(mode=0o700, parents=True, exist_ok=True)
    new.chmod(0o700)
    with tempfile.TemporaryDirectory(dir=new, prefix=".restore.") as tmp:
        archive.extractall(tmp, filter="data")  # no absolute paths, links out or device files
        staged = Path(tmp)
        for path in sorted((staged / FILES).rglob("*")):
            target = new / path.relative_to(staged / FILES)
            if path.is_dir():
                target.mkdir(mode=0o700, exist_ok=True)
            else:
                os.replace(path, target)
        os.replace(staged / STORE, new / STORE)
    (new / STORE).chmod(0o600)


def _check_restored(home: Home, manifest: Manifest) -> None:
    engine = make_engine(home.config.db_url)
    try:
        check_schema(engine)
        with consistent_read(engine) as conn:
            chain = audit.verify(conn)
        marks = read_marks(engine)
    finally:
        engine.dispose()
    if not chain.ok:
        raise ConflictError(
            "backup-audit-broken",
            f"the restored audit chain breaks at event {chain.broken_seq}: {chain.reason}",
        )
    if marks != manifest.marks:
        raise ConflictError("backup-invalid", "the restored store does not match the backup's manifest")
