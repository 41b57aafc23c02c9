"""The device's link in the simulator: when a device connects, and how long bytes take on it.

Each model is a connection schedule (one connection per period at a phase of the device's own,
none during offline spells) and a delivery time for a request of so many bytes up and down:

- `daily`: a broadband link (Wi-Fi, LTE) once a day; 1 MB/s, 0.2 s to connect.
- `nb-iot`: NB-IoT, four connections a day; 6,250 B/s, the rate at which a 500 KB CRL takes 80 s,
  and 2 s to attach.
- `lorawan`: class A LoRaWAN in EU868 at SF12: 51-byte payloads of 2.79 s on air each (13 bytes of
  MAC header, 125 kHz, coding rate 4/5, the Semtech formula), 1 % duty cycle (99 % silence after
  each uplink) and at most 10 downlinks a day, one uplink an hour. A certificate exchange takes
  days; a CRL cannot be delivered at all.
- `flaky`: the daily link with offline spells (on average one every 180 days, of 7 to 120 days).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

DAY = 86_400.0


class Connectivity(StrEnum):
    DAILY = "daily"
    NB_IOT = "nb-iot"
    LORAWAN = "lorawan"
    FLAKY = "flaky"


@dataclass(frozen=True)
class Link:
    name: Connectivity
    #: Seconds between two connections.
    period: float
    #: Bytes per second each way on a streaming link (None: framed, see below).
    rate: float | None
    #: Seconds to attach before the first byte moves.
    attach: float
    #: LoRaWAN: payload bytes per frame, seconds on air per frame, duty cycle, downlinks per day.
    frame: int = 0
    airtime: float = 0.0
    duty: float = 1.0
    downlinks_per_day: int = 0
    #: Offline spells: chance per day that one starts, and its shortest and longest length in days.
    spell_chance: float = 0.0
    spell_days: tuple[int, int] = (0, 0)

    def delivery(self, up: int, down: int) -> float:
        """Seconds from the first byte up to the last byte down of one request."""
        if self.rate is not None:
            return self.attach + (up + down) / self.rate
        up_frames, down_frames = math.ceil(up / self.frame), math.ceil(down / self.frame)
        # Each uplink is followed by the silence the duty cycle imposes; downlinks ride the receive
        # windows of uplinks, at most `downlinks_per_day`, spread over the day.
        up_time = up_frames * self.airtime / self.duty
        down_time = (down_frames - 1) * DAY / self.downlinks_per_day + self.airtime if down_frames else 0.0
        return up_time + down_time

    def spells(self, rng: random.Random, horizon: float) -> list[tuple[float, float]]:
        """Offline spells (start, end) in seconds from the start, over `horizon` seconds."""
        if not self.spell_chance:
            return []
        out: list[tuple[float, float]] = []
        t = rng.expovariate(self.spell_chance) * DAY
        while t < horizon:
            end = t + rng.uniform(*self.spell_days) * DAY
            out.append((t, end))
            t = end + rng.expovariate(self.spell_chance) * DAY
        return out


LINKS = {
    Connectivity.DAILY: Link(Connectivity.DAILY, DAY, 1_000_000.0, 0.2),
    Connectivity.NB_IOT: Link(Connectivity.NB_IOT, DAY / 4, 6_250.0, 2.0),
    Connectivity.LORAWAN: Link(
        Connectivity.LORAWAN, 3_600.0, None, 0.0, frame=51, airtime=2.79, duty=0.01, downlinks_per_day=10
    ),
    Connectivity.FLAKY: Link(
        Connectivity.FLAKY, DAY, 1_000_000.0, 0.2, spell_chance=1 / 180, spell_days=(7, 120)
    ),
}


_MASK = (1 << 64) - 1


def unit(seed: int, index: int, salt: int) -> float:
    """A number in [0, 1) that depends on (seed, index, salt) alone: per-device randomness that is
    the same whichever process simulates the device, six times cheaper than seeding a Mersenne
    Twister per device (splitmix64; written here since `random` has no counter-based generator)."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) / 2**64


class Schedule:
    """One device's connections: every `period` seconds from its phase, skipping offline spells."""

    __slots__ = ("period", "phase", "spells")

    def __init__(self, link: Link, seed: int, index: int, horizon: float) -> None:
        self.period = link.period
        # Whole seconds, as certificates' times are: a real and a modelled run see the same moments.
        self.phase = float(int(unit(seed, index, 1) * link.period))
        self.spells: list[tuple[float, float]] = []
        if link.spell_chance:
            rng = random.Random(int(unit(seed, index, 2) * 2**53))
            self.spells = [(float(round(a)), float(round(b))) for a, b in link.spells(rng, horizon)]

    def next_at(self, t: float) -> float:
        """The first connection at or after `t` (seconds from the start)."""
        k = math.ceil((t - self.phase) / self.period)
        at = self.phase + max(k, 0) * self.period
        for start, end in self.spells:
            if at < start:
                break
            if at < end:
                k = math.ceil((end - self.phase) / self.period)
                at = self.phase + k * self.period
        return at

    def online_connections(self, start: float, end: float) -> int:
        """How many connections fall in [start, end)."""

        def count(lo: float, hi: float) -> int:
            if hi <= lo:
                return 0
            first = max(math.ceil((lo - self.phase) / self.period), 0)
            last = math.ceil((hi - self.phase) / self.period)
            return max(last - first, 0)

        total = count(start, end)
        for s, e in self.spells:
            total -= count(max(s, start), min(e, end))
        return total
