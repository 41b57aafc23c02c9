"""`devid bench slowdrip`: a slow-drip attack on `devid serve` beside a real enrollment.

An attacker holds many connections from several loopback addresses (127.0.0.2, 127.0.0.3, ...,
so the per-address cap does not stop it and the deadlines and memory bounds are what is
measured): each completes its TLS handshake, then sends one byte of a request head every few
seconds and never finishes it; a connection the server closes is opened again. Meanwhile one
device enrolls over mTLS, a fresh connection each time, as it does without the attack (the
baseline, measured first in the same run). Figures: connections held, enrollment latency during
the attack against the baseline, the server workers' memory growth (RSS from Linux's /proc).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import statistics
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench.est import PASSPHRASE, Run, _start_server, make_csrs, provision, timed_load
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem

#: What a dripping connection sends, one byte at a time; it never ends the head.
_HEAD = b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\nX-Drip: " + b"a" * 4096


@dataclass
class SlowDrip:
    """Holds `count` connections to `host:port`, spread over `sources` (local addresses to connect
    from), each dripping a byte every `interval` seconds; `tls`: handshake first (else bare TCP)."""

    host: str
    port: int
    count: int
    sources: list[str]
    interval: float = 2.0
    tls: ssl.SSLContext | None = None
    #: Connections open now, opened in all, and closed by the server.
    held: int = 0
    opened: int = 0
    closed_by_server: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Run until `stop()`; at most 32 connections are being opened at a time."""
        opening = asyncio.Semaphore(32)
        tasks = [asyncio.create_task(self._connection(i, opening)) for i in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    async def _connection(self, index: int, opening: asyncio.Semaphore) -> None:
        source = self.sources[index % len(self.sources)]
        while not self._stop.is_set():
            try:
                async with opening:
                    reader, writer = await asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self.tls,
                        server_hostname="localhost" if self.tls else None,
                        local_addr=(source, 0),
                    )
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.held += 1
            self.opened += 1
            try:
                for byte in _HEAD:
                    if self._stop.is_set():  # asyncio.wait_for of 3.11 may swallow a cancellation
                        break
                    writer.write(bytes([byte]))
                    try:  # the wait for an answer is the pause between bytes
                        if not await asyncio.wait_for(reader.read(1024), self.interval):
                            break
                    except TimeoutError:
                        continue
            except OSError:
                pass
            finally:
                self.held -= 1
                writer.close()
            if not self._stop.is_set():
                self.closed_by_server += 1


def loopback_sources(count: int) -> list[str]:
    """`count` loopback addresses other than 127.0.0.1 (Linux routes all of 127/8 to lo)."""
    return [str(ipaddress.IPv4Address("127.0.0.2") + i) for i in range(count)]


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pids(pid: int) -> list[int]:
    """The `devid serve --workers` processes of supervisor `pid`: its children started by
    multiprocessing's spawn (not its resource tracker), from Linux's /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return sorted(found)


class Attack:
    """A `SlowDrip` on its own event loop thread (the enrollments run on this one)."""

    def __init__(self, drip: SlowDrip) -> None:
        self.drip = drip
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(drip.run(),), daemon=True)

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def wait_held(self, at_least: int, timeout: float) -> int:
        """Poll until `at_least` connections are held or `timeout` passes; the number held."""
        deadline = time.monotonic() + timeout
        while self.drip.held < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.drip.held

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self.drip.stop)
        self._thread.join(timeout=60)
        self._loop.close()


def run(connections: int, addresses: int, n: int, workers: int, interval: float, hold: float) -> list[Figure]:
    """Baseline enrollments, then the attack for at least `hold` seconds (longer than the server's
    header deadline, so connections are closed and opened again) with enrollments throughout."""
    with tempfile.TemporaryDirectory(prefix="devid-bench-slowdrip-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        identity = provision(authority, 1)[0]
        trust = cert_pem(authority.root)
        device = [tls_context(trust, identity.chain, identity.key)]
        proc, url = _start_server(home.path, workers)
        try:
            parts = urllib.parse.urlsplit(url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 443
            pids = worker_pids(proc.pid) if workers > 1 else [proc.pid]
            timed_load(url, device, make_csrs(10), False)  # warm-up
            baseline = timed_load(url, device, make_csrs(n), False)
            before = {pid: rss_mb(pid) for pid in pids}
            drip = SlowDrip(
                host, port, connections, loopback_sources(addresses), interval, tls_context(trust)
            )
            with Attack(drip) as attack:
                samples = [attack.wait_held(connections, timeout=60)]
                closed_before = drip.closed_by_server
                rounds, growth, end = [], 0.0, time.monotonic() + hold
                while time.monotonic() < end:
                    rounds.append(timed_load(url, device, make_csrs(n), False))
                    samples.append(drip.held)
                    growth = max(growth, *(rss_mb(pid) - before[pid] for pid in pids))
                closed = drip.closed_by_server - closed_before
            during = Run(
                sum(r.seconds for r in rounds),
                [t for r in rounds for t in r.latencies],
                sum(r.failures for r in rounds),
                sum(r.client_cpu for r in rounds),
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            authority.engine.dispose()
    return _figures(connections, addresses, interval, workers, samples, closed, baseline, during, growth)


def _figures(
    connections: int,
    addresses: int,
    interval: float,
    workers: int,
    held: list[int],
    closed: int,
    baseline: Run,
    during: Run,
    growth: float,
) -> list[Figure]:
    attack = f"{connections} TLS connections from {addresses} addresses, a byte every {interval:g} s"
    without = "the same enrollments without the attack"
    return [
        Figure(
            "slowdrip.connections_held",
            statistics.mean(held),
            "connections",
            note=f"mean while enrollments ran (least {min(held)}); {attack}; devid serve --workers {workers}",
        ),
        Figure(
            "slowdrip.closed_by_server",
            closed,
            "connections",
            note="attack connections the server closed (deadlines) while enrollments ran",
        ),
        Figure("slowdrip.enroll_p50", during.percentile_ms(50), "ms", baseline.percentile_ms(50), without),
        Figure("slowdrip.enroll_p99", during.percentile_ms(99), "ms", baseline.percentile_ms(99), without),
        Figure(
            "slowdrip.enroll_failures",
            during.failures,
            "enrollments",
            note=f"of {len(during.latencies)} during the attack, {baseline.failures} without",
        ),
        Figure("slowdrip.worker_rss_growth", growth, "MB", note="largest growth of one server worker"),
    ]
