"""`devid audit`: check the hash chain and its signed checkpoints, anchor it, list events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from devid.authority.setup import open_authority
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    console,
    load_home,
    print_listing,
    store,
)
from devid.config import resolve_passphrase
from devid.errors import DevidError, PolicyError
from devid.store import audit
from devid.store.engine import reading

app = typer.Typer(help="The hash-chained audit log and its signed checkpoints.", no_args_is_help=True)


class AuditBroken(DevidError):
    """The audit chain does not verify."""


@app.command("verify")
def verify(home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """Walk the whole audit chain and check every signed checkpoint; name the first broken link.

    Needs the passphrase (or HSM PIN): the checkpoints are checked against the audit key held with
    the CA keys, not against anything the database could supply."""
    # Opened without the checkpoint at exit that `authority` adds: verifying must never sign a head.
    result = open_authority(load_home(home), resolve_passphrase(passphrase_file)).verify_audit()
    if not result.ok:
        raise AuditBroken(
            "audit-broken",
            f"audit chain broken at event {result.broken_seq}: {result.reason} "
            f"({result.events} events verified before it)",
        )
    anchored = (
        f"last anchored event {result.anchored_seq}, {result.unanchored} events after it"
        if result.checkpoints
        else f"no checkpoint yet, {result.unanchored} events unanchored"
    )
    console.print(
        f"audit chain intact: {result.events} events verified; {result.checkpoints} signed checkpoints "
        f"valid; {anchored}",
        highlight=False,
    )


@app.command("checkpoint")
def checkpoint(home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """Sign the chain's head now (every command that changes something also does when it ends)."""
    made = authority(home, passphrase_file).checkpoint_audit()
    if made is None:
        console.print("nothing to anchor: no event since the last checkpoint", highlight=False)
    else:
        console.print(f"checkpoint: event {made.seq} hash {made.hash} signed at {made.at.isoformat()}")


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise PolicyError("since", f"--since {value!r} is not an ISO 8601 date or time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@app.command("list")
def list_(
    since: Annotated[
        str | None,
        typer.Option("--since", help="only events at or after this ISO 8601 time (UTC if no zone)"),
    ] = None,
    action: Annotated[str | None, typer.Option("--action", help="only this action, e.g. cert.issue")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 100,
    after: Annotated[int, typer.Option(help="continue after this event seq (paging)")] = 0,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Audit events in chain order, optionally filtered, one page at a time."""
    engine = store(home)
    with reading(engine) as conn:
        rows = audit.page(
            conn, after=after, limit=max(1, min(limit, 10_000)), action=action, since=_since(since)
        )
    engine.dispose()
    events: list[dict[str, object]] = [
        {
            "seq": r.seq,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "action": r.action,
            "outcome": r.outcome,
            "subject": r.subject,
            "detail": r.detail,
            "hash": r.hash,
        }
        for r in rows
    ]
    if as_json:
        for event in events:
            event["detail"] = json.loads(str(event["detail"]))
    print_listing(events, ["seq", "at", "actor", "action", "outcome", "subject", "detail"], as_json)
