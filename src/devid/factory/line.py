"""A production run: serials in, a manifest and a summary out, over one or more worker processes."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from devid.authority.setup import open_authority
from devid.config import Home
from devid.factory.secure_elements import SecureElementMaker, SecureElementSpec
from devid.factory.station import Credential, DeviceResult, LineInfo, Station
from devid.store import repo
from devid.store.engine import make_engine, reading

SERIAL_DIGITS = 8
CHUNK = 200


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker process needs to build its own station (picklable)."""

    home: Path
    passphrase: bytes
    info: LineInfo
    se: SecureElementSpec
    out_dir: Path
    batch: int = 200
    credential: Credential = field(default_factory=Credential)


@dataclass
class Summary:
    devices: int = 0
    failures: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    per_device: list[float] = field(default_factory=list)
    failed: list[DeviceResult] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.devices - self.failures) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if len(self.per_device) < 2:
            return self.per_device[0] if self.per_device else 0.0
        return statistics.quantiles(self.per_device, n=100, method="inclusive")[round(q) - 1]


def next_serials(home: Home, prefix: str, count: int, start: int | None) -> list[str]:
    """`count` serials `<prefix><8 digits>`, by default continuing after the highest in the store."""
    if start is None:
        engine = make_engine(home.config.db_url)
        with reading(engine) as conn:
            start = _highest_number(conn, prefix) + 1
        engine.dispose()
    return [f"{prefix}{n:0{SERIAL_DIGITS}d}" for n in range(start, start + count)]


def _highest_number(conn: Connection, prefix: str) -> int:
    """The highest N among this line's serials `<prefix><8 digits>`, 0 if none.

    Only tails of exactly 8 digits count: DEVB00000009 or DEV100000001 belong to the lines with
    prefix DEVB and DEV1, not to DEV (the plain maximum of `LIKE 'DEV%'` took them and sent the
    DEV line back to DEV00000001, every device a duplicate). Serials past 8 digits need --start.
    """
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    serial = repo.devices.c.serial
    rows = conn.execute(
        select(serial)
        .where(serial.like(pattern, escape="\\"), func.length(serial) == len(prefix) + SERIAL_DIGITS)
        .order_by(serial.desc())
    )
    for (value,) in rows:  # the first row, unless a serial has non-digits where digits go
        tail = value[len(prefix) :]
        if value.startswith(prefix) and tail.isascii() and tail.isdigit():
            return int(tail)
    return 0


_station: Station | None = None
_barrier: Any = None


def _worker_init(spec: RunSpec, barrier: Any) -> None:
    global _station, _barrier
    _station = _make_station(spec)
    _barrier = barrier


def _worker_run(serials: Sequence[str]) -> list[DeviceResult]:
    assert _station is not None
    return _station.provision(serials)


def _make_station(spec: RunSpec) -> Station:
    authority = open_authority(Home.load(spec.home), spec.passphrase)
    maker = SecureElementMaker(spec.se)
    return Station(authority, maker, spec.out_dir, spec.info, credential=spec.credential)


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_line(
    spec: RunSpec,
    serials: Sequence[str],
    workers: int,
    manifest: Path,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Provision `serials`; append each device to the JSON Lines `manifest` as its chunk completes."""
    start = time.perf_counter()
    # A station is built (CA key opened, secure-element token logged in) before anything is
    # written: a wrong passphrase, PIN or token label is one clear error and leaves nothing behind.
    station = _make_station(spec)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with station.authority, open(manifest, "a") as out:
        stream = _results(spec, serials, workers, station)
        next(stream)  # stations ready: the rate is the line's, not the process start-up's
        summary.startup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for results in stream:
            for r in results:
                out.write(r.manifest_line(spec.info) + "\n")
                summary.devices += 1
                summary.per_device.append(r.seconds)
                if not r.ok:
                    summary.failures += 1
                    summary.failed.append(r)
            out.flush()
            if progress:
                progress(len(results))
    summary.seconds = time.perf_counter() - start
    return summary


def _worker_ready(_: None) -> None:
    _barrier.wait(timeout=120)


def _results(
    spec: RunSpec, serials: Sequence[str], workers: int, station: Station
) -> Iterator[list[DeviceResult]]:
    """Yield `[]` once every station is ready (keys opened), then each chunk's results.

    `station`, already built by the caller, serves a one-process line; worker processes build
    their own.
    """
    size = min(CHUNK, spec.batch)
    if workers <= 1:
        yield []
        for chunk in _chunks(serials, size):
            yield station.provision(chunk)
        return
    # forkserver: workers start from a clean process, not a fork of one holding database
    # connections or a PKCS#11 session, and the preload keeps their start cheap.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["devid.factory.line"])
    barrier = ctx.Barrier(workers)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=(spec, barrier)
    ) as pool:
        # Each worker blocks on the barrier in one warm-up task, so all of them are up and ready.
        for ready in [pool.submit(_worker_ready, None) for _ in range(workers)]:
            ready.result()
        yield []
        futures = [pool.submit(_worker_run, chunk) for chunk in _chunks(serials, size)]
        for future in as_completed(futures):
            yield future.result()
