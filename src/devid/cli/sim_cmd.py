"""`devid sim`: simulated fleets.

`devid sim run --days` drives real device agents over real TLS against a real EST server on
loopback (simulated time, days); `devid sim run --years` and `devid sim compare` run the same
agents' decisions on a virtual clock for years (`devid.sim.events`), with real or modelled
issuance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from devid.cli.common import JsonOpt, console, err_console
from devid.sim.compare import DEFAULT_REVOKE_RATE, FIGURES, compare
from devid.sim.events import Issuance, SimInvalid, SimSpec, Strategy, StrategyResult
from devid.sim.fleet import FleetReport, run_fleet
from devid.sim.links import Connectivity

app = typer.Typer(
    help="Simulate a fleet of device agents over days (real TLS) or years.", no_args_is_help=True
)


class SimPolicy(StrEnum):
    SHORT = "short"
    RENEW = "renew"
    LONG = "long"
    SESSION = "session"
    ALL = "all"


# The discrete-event simulator's options (`run --years` and `compare`).
ConnectivityOpt = Annotated[Connectivity, typer.Option("--connectivity", help="the device link")]
RevokeRateOpt = Annotated[
    float, typer.Option("--revoke-rate", help="share of the fleet compromised (and revoked) a year")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="the fleet's and the events' seed")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="modelled issuance: processes (default: cores)")
]

#: --issuance real signs and stores every certificate: beyond this many devices, use the model.
REAL_LIMIT = 2_000
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
    days: Annotated[
        int | None, typer.Option("--days", min=1, help="real TLS: simulated days (default 120)")
    ] = None,
    years: Annotated[
        float | None,
        typer.Option("--years", help="discrete-event mode: simulated years (instead of --days)"),
    ] = None,
    connectivity: ConnectivityOpt = Connectivity.DAILY,
    issuance: Annotated[
        Issuance, typer.Option("--issuance", help="years: sign for real (small fleets) or model it")
    ] = Issuance.MODELLED,
    revoke_rate: RevokeRateOpt = 0.0,
    seed: SeedOpt = 1,
    workers: WorkersOpt = None,
    offline_from: Annotated[
        int, typer.Option("--offline-from", min=0, help="first day the whole fleet is offline")
    ] = 5,
    offline_days: Annotated[
        int, typer.Option("--offline-days", min=0, help="length of the offline period")
    ] = 90,
    as_json: JsonOpt = False,
) -> None:
    """With --days: provision DEVICES per policy, enroll them over EST, then live DAYS days (a daily
    check-in, none during the offline period); PASS when no online device ever lacked a valid
    identity. With --years: the discrete-event simulator (see `devid sim compare`)."""
    if years is not None:
        if days is not None:
            raise SimInvalid("sim-mode", "give --days (real TLS) or --years (discrete events), not both")
        strategies = list(Strategy) if policy is SimPolicy.ALL else [Strategy(policy.value)]
        specs = [SimSpec(devices, years, s, connectivity, revoke_rate, seed) for s in strategies]
        _run_events(specs, issuance, workers, as_json)
        return
    days = 120 if days is None else days
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


def _cell(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else f"{value:,}"


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The strategies side by side: a column each, a line per figure."""
    table = Table()
    table.add_column("")
    for row in rows:
        table.add_column(row["strategy"], justify="right")
    for key, what in FIGURES:
        table.add_row(what, *(_cell(row[key]) for row in rows))
    console.print(table)


def _run_events(specs: list[SimSpec], issuance: Issuance, workers: int | None, as_json: bool) -> None:
    from devid.sim.cas import measured_issuance_rate
    from devid.sim.events import simulate_modelled
    from devid.sim.real import simulate_real

    if issuance is Issuance.REAL and specs[0].devices > REAL_LIMIT:
        raise SimInvalid(
            "sim-real-too-large",
            f"--issuance real signs every certificate: at most {REAL_LIMIT} devices (use modelled)",
        )
    start = time.perf_counter()
    results: list[StrategyResult] = []
    with console.status("simulating", spinner="dots") if not as_json else contextlib.nullcontext():
        for spec in specs:
            if issuance is Issuance.REAL:
                results.append(simulate_real(spec))
            else:
                results.append(simulate_modelled(spec, workers or os.cpu_count() or 1))
    rate = measured_issuance_rate()
    rows = [r.row(rate) for r in results]
    seconds = time.perf_counter() - start
    if as_json:
        print(
            json.dumps({"seconds": round(seconds, 1), "ca_rate_per_second": round(rate), "strategies": rows})
        )
        return
    spec = specs[0]
    console.print(
        f"{spec.devices:,} devices, {spec.years:g} years, {spec.connectivity.value} link, "
        f"revoke rate {spec.revoke_rate:g}/year, seed {spec.seed}, {issuance.value} issuance "
        f"({seconds:.1f} s)",
        highlight=False,
    )
    print_rows(rows)


@app.command("compare")
def compare_cmd(
    devices: Annotated[int, typer.Option("--devices", help="devices in the fleet")] = 10_000,
    years: Annotated[float, typer.Option("--years", help="simulated years")] = 10.0,
    seed: SeedOpt = 1,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for the table (JSON, CSV) and plots (PNG, SVG)")
    ] = None,
    connectivity: ConnectivityOpt = Connectivity.DAILY,
    revoke_rate: RevokeRateOpt = DEFAULT_REVOKE_RATE,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """All four renewal strategies (long-lived, renew, short-lived, session) on the same fleet,
    link and seed, modelled issuance: the table, and with --out the table and plots in a folder."""
    SimSpec(devices, years, Strategy.RENEW, connectivity, revoke_rate, seed)  # refuses bad input first
    with (
        console.status("simulating four strategies", spinner="dots")
        if not as_json
        else contextlib.nullcontext()
    ):
        comparison = compare(
            devices, years, seed, connectivity.value, revoke_rate=revoke_rate, workers=workers
        )
    written: list[Path] = []
    if out is not None:
        from devid.sim.plots import write_plots

        written = comparison.write_table(out) + write_plots(comparison, out)
    if as_json:
        print(
            json.dumps(
                {
                    "seconds": round(comparison.seconds, 1),
                    "strategies": comparison.rows(),
                    "files": [str(p) for p in written],
                }
            )
        )
        return
    console.print(
        f"{devices:,} devices, {years:g} years, {connectivity.value} link, revoke rate {revoke_rate:g}/year, "
        f"seed {seed} ({comparison.seconds:.1f} s; CA signs {comparison.ca_rate:,.0f} certificates/s here)",
        highlight=False,
    )
    print_rows(comparison.rows())
    for path in written:
        console.print(f"wrote {escape(str(path))}", highlight=False)
