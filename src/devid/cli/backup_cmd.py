"""`devid backup` and `devid restore`: a home as one archive, and a new home made from one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from devid.cli.common import HomeOpt, console, home_path, load_home
from devid.clock import SystemClock
from devid.store.backup import restore_backup, write_backup


def backup(
    out: Annotated[
        Path, typer.Option("--out", help="the archive to write (tar.gz, mode 0600); must not exist")
    ],
    home: HomeOpt = None,
) -> None:
    """Snapshot the home while it serves: the store (consistent at one instant), the keys as they
    are (sealed under the passphrase), the config, and the marks a restore must never go behind."""
    started = time.perf_counter()
    manifest = write_backup(load_home(home), out, SystemClock().now())
    marks = ", ".join(f"{ca.name} index {ca.issued} CRL {ca.crl_number}" for ca in manifest.marks.cas)
    console.print(
        f"backup {out} written in {time.perf_counter() - started:.1f} s ({manifest.snapshot}); "
        f"audit event {manifest.marks.audit_seq}; {marks}",
        highlight=False,
    )


def restore(
    archive: Annotated[Path, typer.Argument(help="a `devid backup` archive")],
    home: HomeOpt = None,
) -> None:
    """Make a new home from a backup (its store: SQLite in the home; `devid store migrate` moves it
    to PostgreSQL). Refused over an existing home, naming by how much it went past the backup."""
    target = home_path(home)
    manifest = restore_backup(archive, target)
    console.print(
        f"restored {archive} (taken {manifest.created_at}) into {target}: audit chain intact up to "
        f"event {manifest.marks.audit_seq}",
        highlight=False,
    )
