"""The enforcing edge gateway: TLS in, plain TCP to the broker, only for devices in good standing.

Each connection: TLS handshake (client certificate required, `handshake_timeout`), the credential
check (`check_client_chain` against the bundle, by the gateway's clock), the status of the
certificate from the `StatusView` (fetched if new), a connection to the upstream broker, then
bytes copied both ways with backpressure. Every admitted session is tracked with its issuer,
serial and device; after every status update (scheduled, or pushed by an event) and every tick,
each session is judged again and cut (both directions) if its certificate is no longer good, or
if its status is older than `max_staleness` under `fail closed`.

Staleness: with the status server unreachable the gateway keeps judging from the last verified
data; past `max_staleness`, `fail closed` refuses new connections and cuts live ones, `fail
open` admits on the last data it has (still refusing what that data says is revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import signal
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from devid.clock import Clock
from devid.errors import ConfigError, CredentialRefused
from devid.fsutil import atomic_write
from devid.gateway.events import listen
from devid.gateway.metrics import Counters, GatewayCollector, start_metrics
from devid.gateway.report import Reporter, final_report
from devid.gateway.status import CertRef, Hint, Known, StatusUnavailable, StatusView, Verdict
from devid.pki.client_chain import check_client_chain

log = logging.getLogger("devid.gateway")

#: Bytes read per copy step (and the most buffered per direction before the reader waits).
CHUNK = 64 * 1024


class FailMode(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class GatewayOptions:
    listen_host: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    max_staleness: timedelta = timedelta(minutes=10)
    fail: FailMode = FailMode.CLOSED
    handshake_timeout: float = 10.0
    upstream_timeout: float = 5.0
    #: How long a new connection waits for its status (an OCSP answer) before judging on what is held.
    status_timeout: float = 5.0
    #: How often sessions are judged again and the schedule is looked at.
    tick: float = 1.0
    status_file: Path | None = None
    #: Serve Prometheus metrics at http://LISTEN_HOST:PORT/metrics (0: a free port; None: not at all).
    metrics_port: int | None = None


@dataclass(frozen=True)
class Decision:
    admit: bool
    code: str = ""
    why: str = ""


def decide(known: Known, now: datetime, max_staleness: timedelta, fail: FailMode) -> Decision:
    """Admit (or keep) a certificate on what is known of its status."""
    fresh = known.fetched_at is not None and now - known.fetched_at <= max_staleness
    if known.fetched_at is not None and known.verdict is not Verdict.GOOD:
        return Decision(False, f"cert-{known.verdict.value}", f"status {known.verdict.value}")
    if fresh:
        return Decision(True)
    if fail is FailMode.CLOSED:
        age = (
            "never fetched"
            if known.fetched_at is None
            else f"{(now - known.fetched_at).total_seconds():.0f} s old"
        )
        return Decision(False, "status-stale", f"status {age}, over --max-staleness (fail closed)")
    return Decision(True, "status-stale", "status stale, admitted (fail open)")


@dataclass(eq=False)
class Session:
    id: int
    ref: CertRef
    peer: str
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    admitted_at: datetime
    #: SHA-256 of the presented certificate (DER), hex: what a report names it by.
    fingerprint: str
    cut_reason: str | None = None

    def cut(self, reason: str) -> None:
        """Close both directions now (no TLS close_notify: a revoked peer is owed nothing)."""
        if self.cut_reason is None:
            self.cut_reason = reason
        for writer in (self.client, self.upstream):
            writer.transport.abort()


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) and len(info) >= 2 else str(info)


#: Delays (s) of the refreshes a hint triggers until the signed status moves.
HINT_RETRIES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class Gateway:
    """One listening gateway. `start()`, then `run()` until cancelled (or `stop()`)."""

    def __init__(
        self,
        options: GatewayOptions,
        context: ssl.SSLContext,
        anchors: list[x509.Certificate],
        status: StatusView,
        clock: Clock,
        *,
        mode: str = "",
        reporter: Reporter | None = None,
    ) -> None:
        self.options = options
        self.context = context
        self.anchors = anchors
        self.status = status
        self.clock = clock
        self.mode = mode
        self.reporter = reporter
        self._reported_at = clock.now()
        self.sessions: dict[int, Session] = {}
        self.counters = Counters()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(self.counters, lambda: len(self.sessions), reporter))
        self.metrics_port: int | None = None
        self._metrics: web.AppRunner | None = None
        self.last_refresh: datetime | None = None
        self.last_error: str | None = None
        self.started_at = clock.now()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections being served (cancelled on stop).
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stale_logged = False
        #: Called with every cut session (benchmarks time the cut).
        self.on_cut: Callable[[Session], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Fetch the status once (failure only logged: the fail mode decides), listen; the port."""
        await self.refresh()
        self._server = await asyncio.start_server(
            self._handle, self.options.listen_host, self.options.listen_port, limit=CHUNK
        )
        port: int = self._server.sockets[0].getsockname()[1]
        if self.options.metrics_port is not None:
            try:
                self._metrics, self.metrics_port = await start_metrics(
                    self.registry, self.options.listen_host, self.options.metrics_port
                )
            except ConfigError:
                await self.stop()
                raise
        log.info(
            "listening on %s:%d, upstream %s:%d, status %s, fail %s after %s",
            self.options.listen_host,
            port,
            self.options.upstream_host,
            self.options.upstream_port,
            self.mode,
            self.options.fail.value,
            self.options.max_staleness,
        )
        return port

    async def run(self) -> None:
        """The schedule: refresh when due, judge sessions again, write the status file."""
        try:
            while True:
                if self.status.due(self.clock.now()):
                    self._refresh_soon()
                self.recheck()
                self._report_if_due()
                self.write_status()
                await asyncio.sleep(self.options.tick)
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._metrics is not None:
            await self._metrics.cleanup()
            self._metrics = None
        for session in list(self.sessions.values()):
            session.cut("gateway stopping")
            self._ended(session)
        pending = [*self._tasks, *self._handlers]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.status.aclose()
        if self.reporter is not None:
            await final_report(self.reporter)

    # --- status ---------------------------------------------------------------------------------

    def _in_use(self) -> list[CertRef]:
        return [s.ref for s in self.sessions.values()]

    async def refresh(self, hint: Hint | None = None) -> None:
        """Update the status (all that is due, or what `hint` names), then judge every session."""
        try:
            await self.status.refresh(self._in_use(), hint)
        except StatusUnavailable as exc:
            self.counters.refresh_failures += 1
            self.last_error = exc.message
            log.warning("status refresh failed (%s): %s", exc.code, exc.message)
        else:
            self.counters.refreshes += 1
            self.last_refresh, self.last_error = self.clock.now(), None
        self.recheck()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._spawn(self.refresh())

    # --- reports --------------------------------------------------------------------------------

    def _report_if_due(self) -> None:
        now = self.clock.now()
        if self.reporter is None or now - self._reported_at < self.reporter.every:
            return
        self._reported_at = now
        for session in self.sessions.values():
            self.reporter.seen(session.fingerprint, session.admitted_at, now)
        # One report in flight at a time; what is seen meanwhile waits in the reporter for the next.
        if self._reporting is None or self._reporting.done():
            self._reporting = self._spawn(self._report(self.reporter))

    @staticmethod
    async def _report(reporter: Reporter) -> None:
        await reporter.send()

    async def on_hint(self, hint: Hint) -> None:
        """A pushed event: ask the signed source again at once (never revoke on the event itself)."""
        self._spawn(self._follow(hint))

    async def _follow(self, hint: Hint) -> None:
        """Refresh for a hint; while the signed source has not moved, ask again a little later: an
        event can reach the gateway before devid has re-signed its status data (its publisher
        runs a few times a second)."""
        before = self.status.version
        for delay in HINT_RETRIES:
            await asyncio.sleep(delay)
            await self.refresh(hint)
            if self.status.version != before:
                return

    def recheck(self) -> None:
        """Judge every live session again; cut those no longer admitted."""
        now = self.clock.now()
        for session in list(self.sessions.values()):
            decision = decide(
                self.status.known(session.ref), now, self.options.max_staleness, self.options.fail
            )
            if not decision.admit:
                self._cut(session, decision)
        oldest = self.status.oldest(self._in_use())
        stale = oldest is not None and now - oldest > self.options.max_staleness
        if stale != self._stale_logged:
            self._stale_logged = stale
            if stale:
                log.warning(
                    "status is older than --max-staleness %s (fail %s)",
                    self.options.max_staleness,
                    self.options.fail.value,
                )
            else:
                log.info("status is fresh again")

    def _cut(self, session: Session, decision: Decision) -> None:
        self.sessions.pop(session.id, None)
        session.cut(decision.code)
        self._ended(session)
        self.counters.cut += 1
        log.warning(
            "cut %s device=%s serial=%x: %s (%s)",
            session.peer,
            session.ref.device,
            session.ref.serial,
            decision.why,
            decision.code,
        )
        if self.on_cut is not None:
            self.on_cut(session)

    def _ended(self, session: Session) -> None:
        """A session over (cut, closed or stopped): its certificate was seen until now."""
        if self.reporter is not None:
            self.reporter.seen(session.fingerprint, session.admitted_at, self.clock.now())

    def report(self) -> dict[str, Any]:
        now = self.clock.now()
        oldest = self.status.oldest(self._in_use())
        return {
            "mode": self.mode,
            "version": self.status.version,
            "sessions": len(self.sessions),
            "admitted": self.counters.admitted,
            "cut": self.counters.cut,
            "refused": dict(self.counters.refused),
            "last_refresh": self.last_refresh.isoformat() if self.last_refresh else None,
            "last_error": self.last_error,
            # None: nothing relied on yet, or ("stale" true) data never fetched.
            "staleness_seconds": (
                None if oldest is None or oldest.year == 1 else round((now - oldest).total_seconds(), 1)
            ),
            "stale": oldest is not None and now - oldest > self.options.max_staleness,
            "fail": self.options.fail.value,
            "max_staleness_seconds": self.options.max_staleness.total_seconds(),
            "sightings": None
            if self.reporter is None
            else {
                "sent": self.reporter.sent,
                "pending": self.reporter.pending,
                "failures": self.reporter.failures,
                "dropped": self.reporter.dropped,
                "revoked": self.reporter.revoked,
            },
        }

    def log_status(self) -> None:
        log.info("status %s", json.dumps(self.report(), sort_keys=True))
        self.write_status()

    def write_status(self) -> None:
        if self.options.status_file is not None:
            data = json.dumps(self.report(), sort_keys=True).encode() + b"\n"
            atomic_write(self.options.status_file, data, mode=0o644, durable=False)

    # --- connections ----------------------------------------------------------------------------

    def _refuse(self, peer: str, code: str, why: str) -> None:
        self.counters.refused[code] += 1
        log.warning("refused %s: %s (%s)", peer, why, code)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(peer, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            writer.close()
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=self.options.handshake_timeout)
        except (ssl.SSLError, OSError, TimeoutError, EOFError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self._refuse(peer, "tls-handshake", f"TLS handshake failed: {reason}")
            return
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            self._refuse(peer, "client-cert-missing", "no client certificate")
            return
        # Python 3.13 exposes what the client sent; 3.11 does not (the bundle holds the intermediates).
        unverified = getattr(ssl_object, "get_unverified_chain", None)
        presented = (
            [x509.load_der_x509_certificate(c) for c in (unverified() or [])[1:]] if unverified else []
        )
        try:
            checked = check_client_chain(der, presented, self.anchors, self.clock.now())
        except CredentialRefused as exc:
            self._refuse(peer, exc.code, exc.message)
            return
        ref = CertRef(checked.leaf, checked.issuer, checked.device_serial)
        who = f"{peer} device={ref.device} serial={ref.serial:x}"
        try:
            await asyncio.wait_for(self.status.prepare(ref), self.options.status_timeout)
        except (StatusUnavailable, TimeoutError) as exc:
            log.warning("status of %s not fetched: %s", who, getattr(exc, "message", "timeout"))
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.options.upstream_host, self.options.upstream_port, limit=CHUNK),
                self.options.upstream_timeout,
            )
        except (OSError, TimeoutError) as exc:
            self._refuse(who, "upstream-unreachable", f"upstream broker: {exc!r}")
            return
        # Judged after the last await and registered at once: no status update can slip between.
        decision = decide(
            self.status.known(ref), self.clock.now(), self.options.max_staleness, self.options.fail
        )
        if not decision.admit:
            up_writer.transport.abort()
            self._refuse(who, decision.code, decision.why)
            return
        session = Session(
            next(self._ids), ref, peer, writer, up_writer, self.clock.now(), hashlib.sha256(der).hexdigest()
        )
        self.sessions[session.id] = session
        self.counters.admitted += 1
        log.info("admitted %s%s", who, f" ({decision.why})" if decision.why else "")
        try:
            await self._copy(session, reader, up_reader)
        finally:
            self.sessions.pop(session.id, None)
            if session.cut_reason is None:  # a cut one was seen last when it was cut
                self._ended(session)
            up_writer.close()

    async def _copy(
        self, session: Session, client: asyncio.StreamReader, upstream: asyncio.StreamReader
    ) -> None:
        """Bytes both ways until the broker's side ends or either side fails. A client's EOF is
        passed on as a half-close; the broker's ends the session (TLS has no half-close here)."""
        up = asyncio.ensure_future(_pipe(client, session.upstream))
        try:
            await _pipe(upstream, session.client)
        finally:
            if not up.done():
                up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF (then half-close `dst` if it can), waiting for `dst` to drain each chunk."""
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.transport.is_closing():
            dst.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        dst.transport.abort()


async def serve(
    gateway: Gateway,
    events: tuple[str, int, str] | None,
    listening: Callable[[int], None],
) -> None:
    """Run `gateway` until SIGTERM or SIGINT: listen, follow the schedule, and with `events`
    (broker host, port, topic) take pushed hints; SIGUSR1 logs the status (and writes the file)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, gateway.log_status)
    listening(await gateway.start())
    tasks = [asyncio.ensure_future(gateway.run())]
    if events is not None:
        tasks.append(asyncio.ensure_future(listen(*events, gateway.on_hint)))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gateway.stop()
