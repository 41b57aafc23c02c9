"""Simulate a fleet of device agents against a real EST server on loopback, on a shared clock.

Every device is a real agent with its own secure element and folder, talking real mTLS to a
real server; only time is simulated: the authority and the agents read one FixedClock that the
simulator moves a day at a time, so 90 days offline take seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devid.authority.core import Authority
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.device.agent import DeviceAgent
from devid.factory.line import SERIAL_DIGITS, RunSpec, run_line
from devid.factory.secure_elements import SecureElementSpec
from devid.factory.station import LineInfo
from devid.pki.encoding import cert_pem
from devid.server.app import make_app, start_server
from devid.server.tls import own_server_context

PASSPHRASE = b"devid-sim-passphrase"


@dataclass
class FleetReport:
    label: str
    devices: int
    days: int
    offline: tuple[int, int]
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Devices holding no valid operational identity at the end of the run.
    without_identity: int = 0
    #: Days on which an online device lacked a valid identity after its check-in, summed.
    online_days_without_identity: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.without_identity == 0 and self.online_days_without_identity == 0


def has_identity(agent: DeviceAgent, now: datetime) -> bool:
    """Whether the device holds an operational certificate valid at `now` (LDevID or session)."""
    if agent.state is not None and agent.state.policy == "session":
        end = agent.state.session_not_after
        return end is not None and now < end
    chain = agent.ldevid()
    return chain is not None and chain[0].not_valid_before_utc <= now < chain[0].not_valid_after_utc


async def _each(
    agents: Sequence[DeviceAgent],
    work: str,
    concurrency: int,
    report: FleetReport,
    trust: bytes,
    url: str,
    label: str,
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: DeviceAgent) -> None:
        async with gate:
            if work == "enroll":
                await agent.enroll(url, trust, label)
                report.outcomes["enroll"] += 1
            else:
                outcome = await agent.check_in()
                report.outcomes[outcome.split(":")[0]] += 1
                if outcome.startswith("error") and len(report.errors) < 10:
                    report.errors.append(f"{agent.serial}: {outcome}")

    await asyncio.gather(*(one(a) for a in agents))


async def simulate(
    agents: Sequence[DeviceAgent],
    clock: FixedClock,
    url: str,
    trust: bytes,
    *,
    label: str,
    days: int,
    offline: tuple[int, int],
    concurrency: int = 32,
    progress: Callable[[str, int], None] | None = None,
) -> FleetReport:
    """Enroll every agent, then move time a day at a time; devices check in daily unless offline.
    `progress(label, day)` is called after each simulated day (day 0: enrollment)."""
    report = FleetReport(label, len(agents), days, offline)
    await _each(agents, "enroll", concurrency, report, trust, url, label)
    if progress:
        progress(label, 0)
    start, end = offline
    for day in range(1, days + 1):
        clock.advance(timedelta(days=1))
        if progress:
            progress(label, day)
        if start <= day < end:
            continue
        now = clock.now()
        # Most devices have nothing due on most days: the agent's own `due` says so (check_in would
        # answer "idle" from it), so they cost no coroutine and no slot in the gate.
        busy = [a for a in agents if a.due(now) is not None]
        if idle := len(agents) - len(busy):
            report.outcomes["idle"] += idle
        await _each(busy, "check-in", concurrency, report, trust, url, label)
        report.online_days_without_identity += sum(not has_identity(a, now) for a in agents)
    now = clock.now()
    report.without_identity = sum(not has_identity(a, now) for a in agents)
    return report


#: Room one simulated device takes in the throw-away home (folder, store rows): ~32 KiB, doubled.
DEVICE_FOOTPRINT = 64 * 1024
SHARED_MEMORY = "/dev/shm"


def memory_dir(devices: int) -> str | None:
    """Where the throw-away home and device folders go: in memory (tmpfs) where the machine has one
    with room for `devices` (a container's is often 64 MB), since thousands of small atomic writes
    cost several times more CPU on a journaling filesystem; else the default temporary directory."""
    try:
        fs = os.statvfs(SHARED_MEMORY)
    except OSError:
        return None
    roomy = fs.f_bavail * fs.f_frsize >= devices * DEVICE_FOOTPRINT
    return SHARED_MEMORY if roomy and os.access(SHARED_MEMORY, os.W_OK | os.X_OK) else None


def sim_serial(index: int) -> str:
    """The serial of the simulator's device `index` (from 0): as the factory line numbers them."""
    return f"SIM{index + 1:0{SERIAL_DIGITS}d}"


def provision(base: Path, serials: Sequence[str]) -> Home:
    """A throw-away home in `base` and its devices off the real factory line, in `base/devices`."""
    home = init_home(base / "home", org="devid sim", passphrase=PASSPHRASE)
    spec = RunSpec(
        home.path.resolve(),
        PASSPHRASE,
        LineInfo("sim", "sim-device", "sim-lot"),
        SecureElementSpec("software"),
        base / "devices",
    )
    # One station, in this process: provisioning is ~1 ms a device against ~30 ms to simulate it,
    # and worker processes (start, imports, keys opened) cost more than they save below
    # thousands of devices.
    summary = run_line(spec, list(serials), 1, base / "devices" / "manifest.jsonl")
    if summary.failures:
        raise RuntimeError(f"{summary.failures} devices failed on the line")
    return home


@dataclass(frozen=True)
class LoopbackEst:
    """devid's server on loopback for a home, its authority on a clock the caller moves."""

    authority: Authority
    clock: FixedClock
    url: str
    trust: bytes


@asynccontextmanager
async def loopback_est(home: Home, passphrase: bytes) -> AsyncIterator[LoopbackEst]:
    clock = FixedClock(datetime.now(UTC))
    authority = open_authority(home, passphrase, clock=clock)
    try:
        ctx, _ = own_server_context(authority, home.path / "tls", passphrase)
        server = await start_server(make_app(authority), ctx, host="127.0.0.1", port=0)
        try:
            yield LoopbackEst(authority, clock, server.url, cert_pem(authority.root))
        finally:
            await server.stop()
    finally:
        authority.close()


async def run_fleet(
    devices: int,
    labels: Sequence[str],
    days: int,
    offline: tuple[int, int],
    workdir: Path | None = None,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> list[FleetReport]:
    """Provision `devices` per label in a throw-away home, serve EST on loopback, simulate each label.
    `progress(label, day)` reports each simulated day (see `simulate`)."""
    total = devices * len(labels)
    with tempfile.TemporaryDirectory(prefix="devid-sim-", dir=memory_dir(total)) as tmp:
        base = workdir or Path(tmp)
        serials = [sim_serial(i) for i in range(total)]
        home = provision(base, serials)
        reports = []
        async with loopback_est(home, PASSPHRASE) as est:
            for i, label in enumerate(labels):
                chunk = serials[i * devices : (i + 1) * devices]
                agents = [
                    DeviceAgent.open(
                        base / "devices" / s, clock=est.clock, rng=random.Random(s), durable=False
                    )
                    for s in chunk
                ]
                reports.append(
                    await simulate(
                        agents,
                        est.clock,
                        est.url,
                        est.trust,
                        label=label,
                        days=days,
                        offline=offline,
                        progress=progress,
                    )
                )
        return reports
