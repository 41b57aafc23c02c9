"""The discrete-event fleet simulator: devid's device agents on a virtual clock, years in minutes.

Every device runs the agent's own decisions (`devid.device.decisions`: what is due, the check-in
flow, IDevID fallback, back-off) against a CA (`devid.sim.cas`: the real authority or its model)
over a simulated link (`devid.sim.links`). Events are check-ins and revocations in time order;
check-ins at which nothing is due are skipped (`next_due` says when the next one is), so a
long-lived fleet costs a few events a device. One shortcut, exact for the model: a session
device that just got its credential repeats the same check-in at every later connection until
something happens to it (a revocation, an offline spell, the end), so those are counted in bulk.

What a run measures, per strategy:
- identity lost: time an online device held no valid operational credential after its
  check-in (its credential expired and the CA refused it, or it arrived already expired), until
  one arrived; a revoked device's loss does not count (it is meant);
- renewals (with the LDevID), re-enrollments (with the IDevID after a lapse) and sessions;
- CA load: requests per hour, peak and mean, and the peak against the measured issuance rate;
- bytes on the device link: certificate exchanges, and revocation data (under CRL-checked
  strategies each connection fetches a delta CRL: 221 bytes plus 53 per entry, measured with
  devid's CRL profile); and the link time they take;
- exposure after a key compromise: how long the revoked device's credential still authenticates
  somewhere: until the last of a sample of relying parties fetched the delta CRL naming it (long,
  renew), or until its credential expires (short-lived and session certificates never enter a CRL).

A device refused for good (revoked, or a long-lived identity that expired) is retired after that
refusal: its agent would retry every few hours for ever, which the CA load leaves out.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np

from devid.authority.policy import DEFAULT_LABELS, LabelPolicy
from devid.device.decisions import AgentState, Issued, check_in, next_due
from devid.errors import RequestInvalid
from devid.sim.cas import ModelledCa, SimCa
from devid.sim.fleet import sim_serial
from devid.sim.links import DAY, LINKS, Connectivity, Link, Schedule, unit

T = TypeVar("T")
HOUR = 3_600.0
#: A month of the CA-load curve; the first one holds the fleet's first enrollments, alike under
#: every strategy.
MONTH_HOURS = WAVE_HOURS = 30 * 24
YEAR = 365.25 * 86_400.0
#: Bytes of one EST exchange on the device link: TLS 1.3 with client authentication (hellos, the
#: device's chain up, the server's down), HTTP headers, the CSR up and the PKCS#7 answer down.
EXCHANGE_UP = 2_000
EXCHANGE_DOWN = 2_600
#: A delta CRL: its fixed part and each entry (serial, date, reason), DER, as devid signs them.
DELTA_CRL_BASE = 221
DELTA_CRL_ENTRY = 53
#: When every simulation starts (a fixed moment: runs with one seed are alike).
START = datetime(2027, 1, 1, tzinfo=UTC)
#: Relying parties sampled for the exposure of a CRL-checked revocation.
RELYING_PARTIES = 64


class Strategy(StrEnum):
    """The four renewal strategies, each an EST label of a new home (`DEFAULT_LABELS`)."""

    LONG = "long"
    RENEW = "renew"
    SHORT = "short"
    SESSION = "session"

    @property
    def label(self) -> str:
        return "" if self is Strategy.RENEW else self.value

    @property
    def display(self) -> str:
        return {"long": "long-lived", "renew": "renew", "short": "short-lived", "session": "session"}[self]

    def policy(self) -> LabelPolicy:
        return DEFAULT_LABELS[self.label]


class Issuance(StrEnum):
    REAL = "real"
    MODELLED = "modelled"


class SimInvalid(RequestInvalid):
    """Simulator parameters that cannot describe a fleet."""


@dataclass(frozen=True)
class SimSpec:
    devices: int
    years: float
    strategy: Strategy
    connectivity: Connectivity = Connectivity.DAILY
    revoke_rate: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise SimInvalid("sim-devices", f"--devices must be at least 1, not {self.devices}")
        if not 0 < self.years <= 50:
            raise SimInvalid("sim-years", f"--years must be more than 0 and at most 50, not {self.years}")
        if not 0 <= self.revoke_rate <= 1:
            raise SimInvalid(
                "sim-revoke-rate",
                f"--revoke-rate is a share of the fleet a year, 0 to 1, not {self.revoke_rate}",
            )

    @property
    def horizon(self) -> float:
        return self.years * YEAR

    @property
    def crl_checked(self) -> bool:
        """Whether relying parties learn of a revocation from CRLs (short-lived ones never enter one)."""
        return not self.strategy.policy().short_lived

    def serial(self, index: int) -> str:
        return sim_serial(index)

    def serials(self) -> list[str]:
        return [self.serial(i) for i in range(self.devices)]


@dataclass
class StrategyResult:
    """What one strategy did to the fleet over the run."""

    spec: SimSpec
    issuance: Issuance
    outcomes: Counter[str] = field(default_factory=Counter)
    lost_devices: int = 0
    lost_device_days: float = 0.0
    lost_max_days: float = 0.0
    lost_for_good: int = 0
    revoked: int = 0
    exposure_hours: list[float] = field(default_factory=list)
    requests: int = 0
    cert_bytes: int = 0
    revocation_bytes: int = 0
    link_seconds: float = 0.0
    events: int = 0
    seconds: float = 0.0
    #: CA requests in each hour of the run.
    hours: np.ndarray[Any, np.dtype[np.int64]] = field(init=False)

    def __post_init__(self) -> None:
        self.hours = np.zeros(math.ceil(self.spec.horizon / HOUR) + 1, dtype=np.int64)

    def add(self, part: StrategyResult) -> None:
        """Fold in the result of another part of the same fleet."""
        self.outcomes.update(part.outcomes)
        for name in (
            "lost_devices", "lost_device_days", "lost_for_good", "revoked", "requests",
            "cert_bytes", "revocation_bytes", "link_seconds", "events",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.lost_max_days = max(self.lost_max_days, part.lost_max_days)
        self.exposure_hours += part.exposure_hours
        self.hours += part.hours

    @property
    def peak_per_hour(self) -> int:
        return int(self.hours.max())

    @property
    def steady_peak_per_hour(self) -> int:
        """The busiest hour after the first month (the fleet's first enrollment wave)."""
        return int(self.hours[WAVE_HOURS:].max(initial=0))

    def monthly_requests(self) -> list[int]:
        """Requests per 30 days over the run (the plot's CA-load curve: long enough to hold a
        short-lived fleet's renewal wave, every ~20 days, in each point)."""
        whole = len(self.hours) - len(self.hours) % MONTH_HOURS
        return [int(n) for n in self.hours[:whole].reshape(-1, MONTH_HOURS).sum(axis=1)]

    @property
    def mean_per_hour(self) -> float:
        return self.requests / max(self.spec.horizon / HOUR, 1.0)

    def row(self, ca_rate: float) -> dict[str, Any]:
        """The figures of the comparison table (JSON-ready)."""
        spec, years = self.spec, self.spec.years
        exposure = self.exposure_hours
        return {
            "strategy": spec.strategy.display,
            "devices": spec.devices,
            "years": years,
            "connectivity": spec.connectivity.value,
            "issuance": self.issuance.value,
            "lost_devices": self.lost_devices,
            "lost_device_days": round(self.lost_device_days, 1),
            "lost_max_days": round(self.lost_max_days, 1),
            "lost_for_good": self.lost_for_good,
            "enrollments": self.outcomes["enroll"],
            "renewals": self.outcomes["renew"],
            "re_enrollments": self.outcomes["fallback"],
            "sessions": self.outcomes["session"],
            "refusals": self.outcomes["error"],
            "ca_peak_per_hour": self.peak_per_hour,
            "ca_steady_peak_per_hour": self.steady_peak_per_hour,
            "ca_mean_per_hour": round(self.mean_per_hour, 1),
            "ca_peak_busy_share": round(self.peak_per_hour / (ca_rate * HOUR), 6),
            "cert_kb_per_device_year": round(self.cert_bytes / spec.devices / years / 1000, 2),
            "revocation_kb_per_device_year": round(self.revocation_bytes / spec.devices / years / 1000, 2),
            "link_seconds_per_device_year": round(self.link_seconds / spec.devices / years, 1),
            "revoked": self.revoked,
            "exposure_mean_hours": round(sum(exposure) / len(exposure), 2) if exposure else None,
            "exposure_max_hours": round(max(exposure), 2) if exposure else None,
            "events": self.events,
            "seconds": round(self.seconds, 2),
        }


def compromised_at(spec: SimSpec, index: int) -> float:
    """When device `index`'s key is compromised (and revoked at once): each year with probability
    `revoke_rate`, so at an exponential time; infinity when never."""
    if not spec.revoke_rate:
        return math.inf
    per_second = -math.log1p(-min(spec.revoke_rate, 0.999999)) / YEAR
    return float(round(-math.log1p(-unit(spec.seed, index, 3)) / per_second))


class _Jitter:
    """A device's back-off jitter: its own stream, whichever process simulates it."""

    __slots__ = ("draws", "index", "seed")

    def __init__(self, seed: int, index: int) -> None:
        self.seed, self.index, self.draws = seed, index, 0

    def random(self) -> float:
        self.draws += 1
        return unit(self.seed, self.index, 100 + self.draws)


class _Device:
    """One simulated device: the agent's state, its link schedule, and what the run measures."""

    __slots__ = (
        "compromised_at",
        "index",
        "issued",
        "ldevid_end",
        "lost",
        "lost_from",
        "retired",
        "revoked_at",
        "rng",
        "schedule",
        "serial",
        "state",
    )

    def __init__(self, index: int, serial: str, label: str, schedule: Schedule, rng: _Jitter) -> None:
        self.index = index
        self.serial = serial
        self.state = AgentState(server="sim", label=label, trust_pem="")
        self.ldevid_end: datetime | None = None
        self.schedule = schedule
        self.rng = rng
        self.issued: Issued | None = None
        self.lost = 0.0
        self.lost_from: float | None = None
        self.retired = False
        self.revoked_at: float | None = None
        self.compromised_at = math.inf


class _Link:
    """The transport of one check-in: the device's requests, over its link, to the CA."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.device: _Device
        self.now: datetime
        self.t = 0.0
        self.delivery = 0.0
        self.exchanges = 0

    async def _request(self, *, with_idevid: bool) -> Issued:
        run = self.run
        run.result.requests += 1
        run.hours[int(self.t // HOUR)] += 1
        self.delivery += run.exchange_time
        self.exchanges += 1
        issued = await run.ca.issue(self.device.serial, self.now, with_idevid=with_idevid)
        self.device.issued = issued
        return issued

    async def enroll_with_idevid(self) -> Issued:
        return await self._request(with_idevid=True)

    async def renew_with_ldevid(self) -> Issued:
        return await self._request(with_idevid=False)


class _Run:
    """The devices `part` of the fleet (all of it, or one worker's share) against one CA."""

    def __init__(
        self, spec: SimSpec, ca: SimCa, issuance: Issuance, part: range, *, fast_forward: bool
    ) -> None:
        self.spec = spec
        self.ca = ca
        self.link: Link = LINKS[spec.connectivity]
        self.exchange_time = self.link.delivery(EXCHANGE_UP, EXCHANGE_DOWN)
        self.fast_forward = fast_forward
        self.start = START
        self.result = StrategyResult(spec, issuance)
        self.hours = self.result.hours
        label = spec.strategy.label
        self.first = part.start
        self.devices = [
            _Device(i, spec.serial(i), label, self.schedule(i), _Jitter(spec.seed, i)) for i in part
        ]
        # Every compromise in the fleet: each device's own (its share of relying parties' CRL
        # downloads counts them all), and this part's as events.
        compromises = [(compromised_at(spec, i), i) for i in range(spec.devices)]
        self.revocations = sorted(at for at, _ in compromises if at < spec.horizon)
        self.queue: list[tuple[float, int, int]] = []  # (time, kind 0 revoke / 1 check-in, device)
        for d in self.devices:
            d.compromised_at = compromises[d.index][0]
            if d.compromised_at < spec.horizon:
                self.queue.append((d.compromised_at, 0, d.index))
            self.queue.append((d.schedule.next_at(0.0), 1, d.index))
        heapq.heapify(self.queue)
        self.transport = _Link(self)

    def schedule(self, index: int) -> Schedule:
        """Device `index`'s connections: a function of the seed and the device alone, so any split
        of the fleet into parts simulates each device alike."""
        return Schedule(self.link, self.spec.seed, index, self.spec.horizon)

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def seconds(self, moment: datetime) -> float:
        return (moment - self.start).total_seconds()

    async def run(self) -> StrategyResult:
        began = time.perf_counter()
        horizon = self.spec.horizon
        while self.queue:
            t, kind, index = heapq.heappop(self.queue)
            if t >= horizon:
                break
            device = self.devices[index - self.first]
            self.result.events += 1
            if kind == 0:
                self._revoke(device, t)
            elif not device.retired:
                await self._check_in(device, t)
        self._finish(time.perf_counter() - began)
        return self.result

    def _revoke(self, device: _Device, t: float) -> None:
        device.revoked_at = t
        self.result.revoked += 1
        if device.lost_from is not None:  # a loss up to now counts; after it, the loss is meant
            device.lost += t - device.lost_from
            device.lost_from = None
        self.ca.revoke(device.serial, self.at(t))
        self.result.exposure_hours.append(self._exposure(device, t) / HOUR)

    def _exposure(self, device: _Device, t: float) -> float:
        """How long the compromised credential still authenticates somewhere after `t`."""
        issued = device.issued
        if issued is None:
            return 0.0
        remaining = max(self.seconds(issued.not_after) - t, 0.0)
        if not self.spec.crl_checked:
            return remaining
        # The last of a sample of relying parties to connect and fetch a delta CRL naming it.
        n, seed = self.spec.devices, self.spec.seed
        sample = {int(unit(seed, device.index, 1_000 + k) * n) for k in range(RELYING_PARTIES)}
        fetch = self.link.delivery(0, DELTA_CRL_BASE + DELTA_CRL_ENTRY)
        learned = max(
            (self.schedule(p).next_at(t) - t + fetch for p in sample if p != device.index), default=0.0
        )
        return min(remaining, learned)

    async def _check_in(self, device: _Device, t: float) -> None:
        now = self.at(t)
        link = self.transport
        link.device, link.now, link.t, link.delivery, link.exchanges = device, now, t, 0.0, 0
        outcome = await check_in(device.state, device.ldevid_end, link, now, device.rng)
        kind = outcome.split(":", 1)[0]
        self.result.outcomes[kind] += 1
        arrived = t + math.ceil(link.delivery)
        self.result.link_seconds += link.delivery
        self.result.cert_bytes += link.exchanges * (EXCHANGE_UP + EXCHANGE_DOWN)
        if kind != "error":
            issued = device.issued
            assert issued is not None
            if device.state.policy != "session":
                device.ldevid_end = issued.not_after
            valid = arrived < self.seconds(issued.not_after)
        else:
            valid = device.ldevid_end is not None and now < device.ldevid_end
        self._account_identity(device, t, arrived, valid)
        if kind == "error" and self.ca.refuses_for_good(device.serial):
            device.retired = True
            self.result.lost_for_good += device.revoked_at is None
            return
        after = max(arrived, self.seconds(next_due(device.state, device.ldevid_end, now)))
        nxt = device.schedule.next_at(max(after, t + 1))
        if self.fast_forward and kind == "session" and valid:
            nxt = self._sessions_in_bulk(device, t, nxt, link.delivery)
        heapq.heappush(self.queue, (nxt, 1, device.index))

    def _account_identity(self, device: _Device, t: float, arrived: float, valid: bool) -> None:
        if device.revoked_at is not None:
            return
        if valid:
            if device.lost_from is not None:
                device.lost += arrived - device.lost_from
                device.lost_from = None
        elif device.lost_from is None:
            device.lost_from = t

    def _sessions_in_bulk(self, device: _Device, t: float, nxt: float, delivery: float) -> float:
        """Count the session check-ins that repeat this one exactly, up to the last before the
        device's next event; return when that last one happens (simulated for real)."""
        period = device.schedule.period
        stop = min(self.spec.horizon, device.compromised_at)
        for start, _end in device.schedule.spells:
            if start > t:
                stop = min(stop, start)
                break
        step = nxt - t
        repeats = int((stop - nxt) // step)  # check-ins after `nxt` before `stop`
        if repeats < 2 or step % HOUR or period % HOUR:
            return nxt
        bulk = repeats - 1  # nxt and the following ones but the last
        first = int(nxt // HOUR)
        stride = int(step // HOUR)
        self.hours[first : first + stride * bulk : stride] += 1
        self.result.requests += bulk
        self.result.outcomes["session"] += bulk
        self.result.cert_bytes += bulk * (EXCHANGE_UP + EXCHANGE_DOWN)
        self.result.link_seconds += bulk * delivery
        device.issued = None  # replaced by the last check-in's
        return nxt + step * bulk

    def _finish(self, seconds: float) -> None:
        result, horizon = self.result, self.spec.horizon
        for d in self.devices:
            if d.lost_from is not None:
                d.lost += horizon - d.lost_from
                d.lost_from = None
            if d.lost > 0:
                result.lost_devices += 1
                result.lost_device_days += d.lost / 86_400
                result.lost_max_days = max(result.lost_max_days, d.lost / 86_400)
            if self.spec.crl_checked:
                # Once a day (at most once a connection) the device fetches the delta CRL since its
                # last: the fixed part each time, each revocation's entry once, while in service.
                end = d.revoked_at if d.revoked_at is not None else horizon
                fetches = d.schedule.online_connections(0.0, end) * min(1.0, self.link.period / DAY)
                entries = bisect.bisect_left(self.revocations, end)
                result.revocation_bytes += round(fetches * DELTA_CRL_BASE) + entries * DELTA_CRL_ENTRY
                result.link_seconds += fetches * (self.link.delivery(0, DELTA_CRL_BASE) - self.link.attach)
        result.seconds = seconds


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (the modelled CA's) without an event loop: its cost per
    check-in is a function call, not a scheduler round."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("the simulated check-in waited on I/O; run it under asyncio instead")


def simulate(
    spec: SimSpec, ca: SimCa, issuance: Issuance, *, fast_forward: bool = True, on_loop: bool = False
) -> StrategyResult:
    """One strategy over the whole fleet in this process. A real CA's service awaits threads:
    `on_loop` runs the simulation under asyncio for it."""
    run = _Run(spec, ca, issuance, range(spec.devices), fast_forward=fast_forward)
    return asyncio.run(run.run()) if on_loop else drive(run.run())


def _modelled_part(spec: SimSpec, part: range) -> StrategyResult:
    run = _Run(spec, ModelledCa(spec.strategy.policy()), Issuance.MODELLED, part, fast_forward=True)
    return drive(run.run())


def simulate_modelled(spec: SimSpec, workers: int = 1) -> StrategyResult:
    """One strategy with modelled issuance, the fleet split over `workers` processes: devices
    are independent under the model, and each is simulated alike whatever the split."""
    began = time.perf_counter()
    if workers <= 1 or spec.devices < 2 * workers:
        result = _modelled_part(spec, range(spec.devices))
    else:
        bounds = [spec.devices * k // workers for k in range(workers + 1)]
        parts = [range(lo, hi) for lo, hi in itertools.pairwise(bounds)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_modelled_part, [spec] * workers, parts))
        result = results[0]
        for other in results[1:]:
            result.add(other)
    result.seconds = time.perf_counter() - began
    return result
