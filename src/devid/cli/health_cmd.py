"""`devid health`: the fleet's health checks (expiring CAs and certificates, renewals that are not
coming, shared keys, devices stuck on their IDevID, approvals waiting), read from the store alone.

Exit status: 0 when no check found anything critical or high, 1 otherwise, so a cron job or CI
step can alert on it; errors (no store, wrong schema) exit as every devid command does.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from devid.authority.health import Windows, run_checks
from devid.cli.common import HomeOpt, JsonOpt, print_json, print_table, store
from devid.clock import SystemClock
from devid.store.engine import reading


def _days(flag: str, default: int, what: str) -> Any:
    return typer.Option(flag, min=0, help=f"{what} (days, default {default})")


def _first(examples: tuple[str, ...], count: int, shown: int = 3) -> str:
    """A table cell: the first few names and how many more (`--json` has up to 20)."""
    more = count - min(shown, len(examples))
    return "; ".join(examples[:shown]) + (f" (+{more} more)" if more > 0 else "")


def health(
    ca_window: Annotated[int, _days("--ca-window", 365, "CA certificates expiring within")] = 365,
    expiry_window: Annotated[int, _days("--expiry-window", 30, "device certificates expiring within")] = 30,
    fallback_days: Annotated[int, _days("--fallback-days", 7, "devices without an LDevID for over")] = 7,
    approval_days: Annotated[int, _days("--approval-days", 3, "approvals pending for over")] = 3,
    connected_days: Annotated[
        int, _days("--connected-days", 7, "revoked certificates a gateway reported connected within")
    ] = 7,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the fleet health checks: one line per check (count 0 when it found nothing), with its
    severity and the first devices named. Exits 1 if any critical or high finding, else 0."""
    windows = Windows(ca_window, expiry_window, fallback_days, approval_days, connected_days)
    engine = store(home)
    try:
        with reading(engine) as conn:
            findings = run_checks(conn, SystemClock().now(), windows)
    finally:
        engine.dispose()
    if as_json:
        print_json([f.as_dict() for f in findings])
    else:
        rows = [{**f.as_dict(), "examples": _first(f.examples, f.count)} for f in findings]
        print_table(["check", "severity", "count", "examples"], rows)
    if any(f.failing for f in findings):
        raise typer.Exit(1)
