"""`devid sim`: a simulated fleet of real device agents against a real EST server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from devid.cli.common import JsonOpt, console, err_console
from devid.sim.fleet import FleetReport, run_fleet

app = typer.Typer(help="Simulate a fleet of device agents (real TLS, simulated time).", no_args_is_help=True)


class SimPolicy(StrEnum):
    SHORT = "short"
    RENEW = "renew"
    LONG = "long"
    SESSION = "session"
    ALL = "all"


#: Policy name on the command line -> EST label of a new home (see devid.authority.policy).
LABELS = {"renew": "", "long": "long", "short": "short", "session": "session"}
NAMES = {label: name for name, label in LABELS.items()}


def report_json(report: FleetReport) -> dict[str, Any]:
    return {
        "policy": NAMES.get(report.label, report.label),
        "label": report.label,
        "devices": report.devices,
        "days": report.days,
        "offline": list(report.offline),
        "outcomes": dict(sorted(report.outcomes.items())),
        "without_identity": report.without_identity,
        "online_days_without_identity": report.online_days_without_identity,
        "errors": report.errors,
        "ok": report.ok,
    }


def print_report(report: FleetReport) -> None:
    name = NAMES.get(report.label, report.label)
    verdict = "[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())) or "none"
    label = f'label "{report.label}"'
    console.print(
        f"{verdict} {escape(name)} ({escape(label)}): devices {report.devices}, "
        f"outcomes: {escape(outcomes)}; without identity at the end: {report.without_identity}; "
        f"online-days without identity: {report.online_days_without_identity}",
        highlight=False,
    )
    # The report keeps the first errors ("SERIAL: error: reason"): each reason once, with its devices.
    reasons: dict[str, list[str]] = {}
    for error in report.errors:
        serial, _, reason = error.partition(": ")
        reasons.setdefault(reason, []).append(serial)
    for reason, serials in reasons.items():
        devices = ", ".join(dict.fromkeys(serials))
        console.print(f"  [red]{escape(reason)}[/] ({escape(devices)})", highlight=False)


@app.command("run")
def run(
    devices: Annotated[int, typer.Option("--devices", min=1, help="devices per policy")] = 1000,
    policy: Annotated[
        SimPolicy, typer.Option("--policy", help="renewal policy to simulate")
    ] = SimPolicy.SHORT,
    days: Annotated[int, typer.Option("--days", min=1, help="simulated days")] = 120,
    offline_from: Annotated[
        int, typer.Option("--offline-from", min=0, help="first day the whole fleet is offline")
    ] = 5,
    offline_days: Annotated[
        int, typer.Option("--offline-days", min=0, help="length of the offline period")
    ] = 90,
    as_json: JsonOpt = False,
) -> None:
    """Provision DEVICES per policy, enroll them over EST, then live DAYS days (a daily check-in,
    none during the offline period); PASS when no online device ever lacked a valid identity."""
    names = list(LABELS) if policy is SimPolicy.ALL else [policy.value]
    labels = [LABELS[n] for n in names]
    offline = (offline_from, offline_from + offline_days)
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("days"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as progress:
        tasks: dict[str, TaskID] = {
            label: progress.add_task(escape(name), total=days)
            for name, label in zip(names, labels, strict=True)
        }

        def on_day(label: str, day: int) -> None:
            progress.update(tasks[label], completed=day)

        reports = asyncio.run(run_fleet(devices, labels, days, offline, progress=on_day))
    seconds = time.perf_counter() - start
    ok = all(r.ok for r in reports)
    if as_json:
        print(
            json.dumps(
                {"ok": ok, "seconds": round(seconds, 1), "policies": [report_json(r) for r in reports]}
            )
        )
    else:
        console.print(
            f"{devices} devices per policy, {days} days, offline from day {offline[0]} to day {offline[1]} "
            f"({seconds:.1f} s)",
            highlight=False,
        )
        for r in reports:
            print_report(r)
        console.print("[bold green]PASS[/]" if ok else "[bold red]FAIL[/]: a device lacked an identity")
    if not ok:
        raise typer.Exit(1)
