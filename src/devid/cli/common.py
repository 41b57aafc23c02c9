"""What every command shares: the home and passphrase options, opening things, printing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from devid.authority.core import Authority
from devid.authority.setup import open_authority
from devid.config import Home, default_home, resolve_passphrase
from devid.errors import NotFoundError
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
VersionOpt = Annotated[
    int | None,
    typer.Option(
        "--version", help="the version you read (`show`): refused with a conflict if it changed since"
    ),
]


def home_path(home: Path | None) -> Path:
    return home if home is not None else default_home()


def load_home(home: Path | None) -> Home:
    return Home.load(home_path(home))


def authority(home: Path | None, passphrase_file: Path | None) -> Authority:
    """The home's authority, closed when the running command ends."""
    passphrase = resolve_passphrase(passphrase_file)
    opened = open_authority(load_home(home), passphrase)
    command = click.get_current_context(silent=True)
    if command is not None:
        command.call_on_close(opened.close)
    return opened


def store(home: Path | None) -> Engine:
    """The store alone, for read-only commands that need no key and so no passphrase."""
    engine = make_engine(load_home(home).config.db_url)
    check_schema(engine)
    return engine


def print_json(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, default=str))


def read_file(path: Path, what: str) -> bytes:
    """A file named on the command line; one that cannot be read is reported by name, not traced."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"{what}-file", f"cannot read {what} file {path}: {exc.strerror}") from None


def shown(value: Any) -> str:
    """A value as a person reads it in a table or a record: JSON for structures, blank for None."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_record(info: dict[str, Any]) -> None:
    """One object as `key  value` lines, keys right-aligned."""
    width = max((len(k) for k in info), default=0)
    for key, value in info.items():
        console.print(f"[bold]{key:>{width}}[/]  {escape(shown(value))}", highlight=False)


def print_table(columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Objects as a table of the named columns (a column's key: its name with spaces as `_`)."""
    cells = [[shown(row.get(c.replace(" ", "_"))) for c in columns] for row in rows]
    table = Table()
    for i, column in enumerate(columns):
        # Short values (names, serials, states) are never cut; long ones fold rather than vanish.
        widest = max([len(r[i]) for r in cells] + [len(word) for word in column.split()])
        table.add_column(column, min_width=min(widest, 24), overflow="fold")
    for r in cells:
        table.add_row(*map(escape, r))
    console.print(table)


def print_result(info: dict[str, Any], message: str, as_json: bool) -> None:
    """What a command that changed something prints: the object as JSON, or one line for a person."""
    if as_json:
        print_json([info])
    else:
        console.print(escape(message), highlight=False)


def print_listing(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    """A listing: JSON Lines (every field), or a table of `columns` for a person."""
    if as_json:
        print_json(rows)
    else:
        print_table(columns, rows)


def print_one(info: dict[str, Any], as_json: bool) -> None:
    """One object: a JSON line, or `key  value` lines for a person."""
    if as_json:
        print_json([info])
    else:
        print_record(info)
