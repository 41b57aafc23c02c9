"""What every command shares: the home and passphrase options, opening things, printing."""

from __future__ import annotations

import atexit
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from devid.config import Home, default_home, resolve_passphrase
from devid.errors import KeyAccessError
from devid.fsutil import read_file
from devid.store.engine import make_engine
from devid.store.schema import check_schema

if TYPE_CHECKING:  # the authority (keys, policy, signing) is imported only by commands that open it
    from devid.authority.core import Authority

__all__ = ["read_file"]  # every command reads the files it is given through this one bounded reader

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
    """The home's authority; when the command ends, the audit events it added are anchored by a
    signed checkpoint (nothing is signed if it added none), and the authority is closed."""
    from devid.authority.setup import open_authority

    passphrase = resolve_passphrase(passphrase_file)
    opened = open_authority(load_home(home), passphrase)
    atexit.register(_close_at_exit, opened)
    return opened


def _close_at_exit(opened: Authority) -> None:
    try:
        opened.checkpoint_audit()
    except KeyAccessError:
        pass  # a wrong passphrase or PIN: the command has already said so, and nothing can be signed
    except Exception as exc:  # the command's own outcome stands; say why the chain stays unanchored
        err_console.print(f"warning: audit checkpoint not written: {escape(str(exc))}", highlight=False)
    finally:
        opened.close()


def store(home: Path | None) -> Engine:
    """The store alone, for read-only commands that need no key and so no passphrase."""
    engine = make_engine(load_home(home).config.db_url)
    check_schema(engine)
    return engine


def print_json(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, default=str))


def shown(value: Any) -> str:
    """A value as a person reads it in a table or a record: a list of plain values comma-separated,
    JSON for other structures, blank for None."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return ", ".join(map(str, value))
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


#: Columns of free text, which fold to fit the terminal. Every other column (serials, fingerprints,
#: names, paths, states, times) is printed whole on one line, so it can be copied into the next command.
FOLDING_COLUMNS = frozenset({"subject", "properties", "detail", "last error"})


def print_table(columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Objects as a table of the named columns (a column's key: its name with spaces as `_`).

    The table is as wide as its unbreakable columns need, even past the terminal's (80 columns when
    piped): a serial cut or folded in two cannot be pasted into `cert show`.
    """
    table = Table()
    for column in columns:
        if column in FOLDING_COLUMNS:
            table.add_column(column, overflow="fold", min_width=min(len(column), 12) or 1)
        else:
            table.add_column(column, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*(escape(shown(row.get(c.replace(" ", "_")))) for c in columns))
    needed = console.measure(table, options=console.options.update_width(1 << 16)).minimum
    width = console.width
    console.width = max(width, needed)
    try:
        console.print(table)
    finally:
        console.width = width


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
