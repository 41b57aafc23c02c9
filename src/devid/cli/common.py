"""What every command shares: the home and passphrase options, opening things, printing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy import Engine

from devid.authority.core import Authority
from devid.authority.setup import open_authority
from devid.config import Home, default_home, resolve_passphrase
from devid.store.engine import check_schema, make_engine

# soft_wrap: a line is never folded at the terminal width (80 columns when piped), so a path, a
# serial or an error message stays whole for the person copying it and the script reading it.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="devid home (default $DEVID_HOME, else ./devid-home)")
]
PassphraseOpt = Annotated[
    Path | None,
    typer.Option("--passphrase-file", help="file holding the passphrase (else $DEVID_PASSPHRASE)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def home_path(home: Path | None) -> Path:
    return home if home is not None else default_home()


def load_home(home: Path | None) -> Home:
    return Home.load(home_path(home))


def authority(home: Path | None, passphrase_file: Path | None) -> Authority:
    passphrase = resolve_passphrase(passphrase_file)
    return open_authority(load_home(home), passphrase)


def store(home: Path | None) -> Engine:
    """The store alone, for read-only commands that need no key and so no passphrase."""
    engine = make_engine(load_home(home).config.db_url)
    check_schema(engine)
    return engine


def print_json(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, default=str))
