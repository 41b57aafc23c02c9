"""`devid audit`: check the hash chain end to end."""

from __future__ import annotations

import typer

from devid.cli.common import HomeOpt, console, store
from devid.errors import DevidError
from devid.store import audit
from devid.store.engine import reading

app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


class AuditBroken(DevidError):
    """The audit chain does not verify."""


@app.command("verify")
def verify(home: HomeOpt = None) -> None:
    """Walk the whole audit chain; name the first broken link."""
    engine = store(home)
    with reading(engine) as conn:
        result = audit.verify(conn)
    if not result.ok:
        raise AuditBroken(
            "audit-broken",
            f"audit chain broken at event {result.broken_seq}: {result.reason} "
            f"({result.events} events verified before it)",
        )
    console.print(f"audit chain intact: {result.events} events verified")
