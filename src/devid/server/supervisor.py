"""`devid serve --workers N`: N server processes on one home and one port, kept running.

Every worker binds the port with SO_REUSEPORT (the kernel spreads connections over those that
listen) and has its own event loop, authority and group commit; on SQLite their issuing
transactions queue on the store's write lock file (`devid.store.engine.write_lock`). The
supervisor holds a bound, never listening, socket on the port for its whole life, so a worker
it restarts gets the same port even when it was chosen at random.

A worker that dies (a crash, kill -9, the OOM killer) is started again after a delay that doubles
from `RestartPolicy.first_delay` up to `max_delay`, and starts from the first delay again once a
worker has run `healthy_after` seconds; the other workers keep the port answering meanwhile. A
worker that exits before it listens (its configuration or store is broken) counts as a failed
start: at the first start of the server any failure stops everything with the worker's error,
later the supervisor gives up after `give_up_after` failed starts in a row, instead of spinning.
SIGTERM or SIGINT reaches every worker as SIGTERM: each finishes its requests in flight, then exits;
on Linux the kernel sends it the same SIGTERM if the supervisor itself dies, even of SIGKILL.
SIGHUP replaces the workers one at a time (`Supervisor._roll`): a rolling reload that picks up what
a worker reads once at start, such as the CA set after `devid ca rotate` or `devid ca retire`.

The workers' metrics are summed at each scrape through prometheus-client's multiprocess mode: the
supervisor gives them a fresh private PROMETHEUS_MULTIPROC_DIR per run and removes it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from devid.authority.setup import open_authority
from devid.coap.dtls import DtlsIdentity
from devid.config import Home
from devid.errors import ConfigError, DevidError
from devid.server.app import make_app
from devid.server.metrics import MULTIPROC_ENV
from devid.server.process import ServeOptions, serve
from devid.server.tls import client_trust, server_context

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to serve (sent to it through a pipe, never argv or environment)."""

    home: Path
    passphrase: bytes
    cert_file: Path
    key_file: Path
    trusted_proxies: tuple[str, ...]
    options: ServeOptions


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 30.0
    #: A worker that ran this long before it died is restarted after `first_delay` again.
    healthy_after: float = 30.0
    #: Failed starts in a row (exits before listening) after which the supervisor gives up.
    give_up_after: int = 5


def _stop_with(supervisor: int) -> None:
    """On Linux, have the kernel send this worker SIGTERM when its supervisor dies, even of
    SIGKILL, so that no orphan keeps serving the port unsupervised."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(spec: WorkerSpec, report: Connection, supervisor: int) -> None:
    """One server process: its own authority and event loop; reports ("ready", pid) or ("error",
    text). It stops on the SIGTERM its supervisor forwards (or the kernel's when the supervisor
    dies) and ignores SIGINT (a terminal's Ctrl-C reaches the whole process group: the supervisor
    turns it into that one SIGTERM)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_with(supervisor)
    try:
        authority = open_authority(Home.load(spec.home), spec.passphrase)
    except DevidError as exc:
        report.send(("error", exc.message))
        sys.exit(2)
    try:
        ctx = server_context(spec.cert_file, spec.key_file, client_trust(authority), password=spec.passphrase)
        dtls = None
        if spec.options.coaps_port is not None:
            dtls = DtlsIdentity.load(spec.cert_file, spec.key_file, spec.passphrase)
        app = make_app(authority, trusted_proxies=spec.trusted_proxies)
        asyncio.run(
            serve(
                app,
                ctx,
                spec.options,
                listening=lambda _: report.send(("ready", os.getpid())),
                stop_signals=(signal.SIGTERM,),
                reuse_port=True,
                dtls=dtls,
            )
        )
    except DevidError as exc:
        report.send(("error", exc.message))
        sys.exit(2)
    finally:
        authority.close()


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on `host:port`: it fixes the port (0: a free
    one) that every worker then binds, and receives no connection itself."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def free_udp_port(host: str) -> int:
    """A UDP port free now, fixed before the EST-coaps worker starts so that it keeps it across
    restarts (a bound UDP socket, unlike a TCP one, would receive datagrams: none is held)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise ConfigError("listen", f"cannot listen on UDP {host}: {exc.strerror or exc}") from None
        return int(sock.getsockname()[1])


@dataclass
class _Slot:
    """One worker position: its current process and restart state."""

    index: int
    spec: WorkerSpec
    proc: BaseProcess | None = None
    report: Connection | None = None
    started: float = 0.0
    ready: bool = False
    error: str = ""
    failed_starts: int = 0
    delay: float = 0.0
    restart_at: float | None = None
    generation: int = 0


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class Supervisor:
    """Runs `count` workers of `spec` until SIGTERM or SIGINT (see the module doc)."""

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        *,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.spec = spec
        self.count = count
        self.policy = policy or RestartPolicy()
        self.say = say
        self._mp = multiprocessing.get_context("spawn")
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = -1, -1
        self._metrics_dir = ""
        #: The UDP port of EST-coaps (chosen by `run` when 0 was asked), None when not served.
        self.coaps_port = spec.options.coaps_port

    def run(self, listening: Callable[[int, list[int]], None], stopping: Callable[[], None]) -> None:
        """Start the workers, call `listening(port, pids)` once all listen, keep them running
        until a stop signal, call `stopping()` and stop them gracefully. Raises ConfigError if a worker cannot
        start (at once on the first start, after repeated failures later)."""
        options = self.spec.options
        reserved = reserve_port(options.host, options.port)
        port = int(reserved.getsockname()[1])
        if options.coaps_port == 0:
            options = replace(options, coaps_port=free_udp_port(options.host))
        self.coaps_port = options.coaps_port
        spec = replace(self.spec, options=replace(options, port=port))
        slots = [
            # Only the first worker competes for the background duties' lease (one per store).
            _Slot(
                i,
                replace(
                    spec,
                    options=replace(
                        spec.options,
                        deliver_events=options.deliver_events and i == 0,
                        publish_status=options.publish_status and i == 0,
                        # EST-coaps in the first worker only: a DTLS session lives in one
                        # process, and a restart must not move a peer's datagrams to another.
                        coaps_port=options.coaps_port if i == 0 else None,
                    ),
                ),
            )
            for i in range(self.count)
        ]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # Metrics of all workers (see `devid.server.metrics`): a fresh private directory per run, in
        # the environment the workers are spawned with (prometheus-client reads it at its import).
        self._metrics_dir = tempfile.mkdtemp(prefix="devid-metrics-")
        previous_dir = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = self._metrics_dir
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_reload)
        try:
            for slot in slots:
                self._start(slot)
            if self._loop(slots, until_ready=True):
                listening(port, [s.proc.pid for s in slots if s.proc is not None and s.proc.pid])
                self._loop(slots, until_ready=False)
            stopping()
        finally:
            clean = self._stop_all(slots)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
            reserved.close()
            if previous_dir is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = previous_dir
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if not clean:
            raise ConfigError("serve-workers", "a worker process did not stop cleanly")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True
        self._wake()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the pipe is full: a wake-up is pending already
            os.write(self._wake_w, b"x")

    def _start(self, slot: _Slot) -> None:
        if slot.report is not None:
            slot.report.close()
        reader, writer = self._mp.Pipe(duplex=False)
        proc = self._mp.Process(
            target=_worker, args=(slot.spec, writer, os.getpid()), name=f"devid-serve-{slot.index}"
        )
        proc.start()
        writer.close()  # the worker holds the only writing end: its exit ends the pipe
        slot.proc, slot.report, slot.started, slot.ready, slot.error = (
            proc,
            reader,
            time.monotonic(),
            False,
            "",
        )
        slot.restart_at = None
        slot.generation += 1

    def _loop(self, slots: list[_Slot], *, until_ready: bool) -> bool:
        """Watch the workers: read their reports, restart the dead. With `until_ready`, return
        True once every worker listens (any failure raises); else run until a stop signal."""
        while not self._stop:
            if until_ready and all(s.ready for s in slots):
                return True
            now = time.monotonic()
            for slot in slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
            due = [s.restart_at for s in slots if s.restart_at is not None]
            watched: list[object] = [self._wake_r]
            for slot in slots:
                if slot.restart_at is None and slot.proc is not None:
                    watched.append(slot.proc.sentinel)
                    if slot.report is not None:
                        watched.append(slot.report)
            timeout = max(0.0, min(due) - now) if due else None
            ready = wait(watched, timeout)  # type: ignore[arg-type]
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            for slot in slots:
                if slot.report is not None and slot.report in ready:
                    self._read_report(slot)
                if slot.proc is not None and slot.restart_at is None and slot.proc.sentinel in ready:
                    self._exited(slot, fatal=until_ready)
            if self._reload and not until_ready:
                self._reload = False
                self._roll(slots)
        return False

    def _roll(self, slots: list[_Slot]) -> None:
        """SIGHUP: replace every worker by a fresh one, one at a time, so that what they read once at
        start (the CA set after `devid ca rotate` or `retire`, configuration) is read again. A TCP
        worker's successor listens before it stops (SO_REUSEPORT: the port never goes unanswered);
        the EST-coaps worker stops first (its UDP port has one owner; DTLS peers shake hands anew).
        A successor that fails to start leaves its predecessor serving."""
        self.say(f"reloading: replacing {len(slots)} worker(s) one at a time")
        replaced = 0
        for slot in slots:
            if self._stop:
                return
            if slot.proc is None or slot.restart_at is not None:
                continue  # dead: its restart reads everything afresh anyway
            before = slot.proc
            fresh = _Slot(slot.index, slot.spec, generation=slot.generation)
            if slot.spec.options.coaps_port is not None:
                self._retire(slot)
            self._start(fresh)
            if not self._await_ready(fresh):
                reason = fresh.error or "no reason given"
                then = "the old one serves on" if slot.proc is not None else "starting it again"
                self.say(f"reload: worker {slot.index}'s successor did not start ({reason}); {then}")
                self._retire(fresh)
                if slot.proc is None:
                    slot.restart_at = time.monotonic()  # stopped for the successor: start it again
                continue
            if slot.proc is before:
                self._retire(slot)
            slot.proc, slot.report, slot.started, slot.ready = fresh.proc, fresh.report, fresh.started, True
            slot.generation, slot.error, slot.failed_starts, slot.delay = fresh.generation, "", 0, 0.0
            replaced += 1
        self.say(f"reloaded: {replaced} of {len(slots)} worker(s) replaced")

    def _await_ready(self, slot: _Slot) -> bool:
        """Wait for a just-started worker to listen; False if it exits first (or a stop comes)."""
        assert slot.proc is not None
        while not slot.ready and not self._stop:
            watched: list[object] = [self._wake_r, slot.proc.sentinel]
            if slot.report is not None:
                watched.append(slot.report)
            ready = wait(watched, None)  # type: ignore[arg-type]
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if slot.report is not None and slot.report in ready:
                self._read_report(slot)
            elif slot.proc.sentinel in ready:
                while slot.report is not None and slot.report.poll():
                    self._read_report(slot)  # the error it reported before exiting
                return False
        return slot.ready

    def _retire(self, slot: _Slot) -> None:
        """Stop the slot's worker gracefully (SIGKILL after the shutdown timeout) and forget it."""
        proc = slot.proc
        if proc is None:
            return
        proc.terminate()
        proc.join(self.spec.options.shutdown_timeout + 10)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        self._dead(proc)
        if slot.report is not None:
            slot.report.close()
        slot.proc, slot.report, slot.ready = None, None, False

    def _read_report(self, slot: _Slot) -> None:
        assert slot.report is not None
        try:
            kind, detail = slot.report.recv()
        except (EOFError, OSError):
            slot.report.close()
            slot.report = None
            return
        if kind == "ready":
            slot.ready = True
            if slot.generation > 1:
                self.say(f"worker {slot.index} restarted: pid {detail}")
        else:
            slot.error = str(detail)

    def _exited(self, slot: _Slot, *, fatal: bool) -> None:
        assert slot.proc is not None
        slot.proc.join()
        self._dead(slot.proc)
        if slot.report is not None:
            while slot.report is not None and slot.report.poll():
                self._read_report(slot)  # an error it reported just before exiting
        if self._stop:
            return
        how = _describe(slot.proc.exitcode)
        if not slot.ready:
            reason = slot.error or f"a worker process {how} while starting"
            slot.failed_starts += 1
            if fatal:
                raise ConfigError("serve-workers", reason)
            if slot.failed_starts >= self.policy.give_up_after:
                raise ConfigError(
                    "serve-workers",
                    f"worker {slot.index} failed to start {slot.failed_starts} times in a row, "
                    f"giving up: {reason}",
                )
        else:
            slot.failed_starts = 0
            if time.monotonic() - slot.started >= self.policy.healthy_after:
                slot.delay = 0.0
        slot.delay = min(self.policy.max_delay, slot.delay * 2 or self.policy.first_delay)
        slot.restart_at = time.monotonic() + slot.delay
        detail = f" ({slot.error})" if slot.error and not slot.ready else ""
        self.say(f"worker {slot.index} (pid {slot.proc.pid}) {how}{detail}; restarting in {slot.delay:g} s")

    def _dead(self, proc: BaseProcess) -> None:
        """Drop the exited worker's live-gauge metric files (its counters keep counting in the sums)."""
        if proc.pid is not None:
            multiprocess.mark_process_dead(proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    def _stop_all(self, slots: list[_Slot]) -> bool:
        """SIGTERM to every running worker, SIGKILL to any still there after the shutdown
        timeout; True if all that were serving exited cleanly."""
        running = [s.proc for s in slots if s.proc is not None and s.proc.exitcode is None]
        serving = [s.proc for s in slots if s.ready and s.proc in running]
        for proc in running:
            proc.terminate()  # SIGTERM: the worker's graceful shutdown
        for proc in running:
            proc.join(self.spec.options.shutdown_timeout + 10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
            self._dead(proc)
        for slot in slots:
            if slot.report is not None:
                slot.report.close()
        return all(proc.exitcode == 0 for proc in serving)  # one still starting may die of SIGTERM
