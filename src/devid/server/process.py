"""One `devid serve` process: listen, deliver registry events in the background, stop gracefully.

The background duties, registry-event delivery (webhooks, MQTT; `devid.registry.delivery`) and
status publishing (`devid.revocation.publisher`), are done by one process of the whole deployment:
the one holding the store's lease (`devid.store.lease`). Every server that may do them tries to
take it every `LEASE_EVERY` seconds, so when its holder stops or dies another takes over; events
are then delivered once, not once per replica. The dispatcher starts after the server listens
and stops after it has drained: events emitted by the last requests still wake it, and whatever
is left waits in the outbox for the next holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from devid.coap.dtls import DtlsIdentity
from devid.coap.server import start_coaps
from devid.errors import ConfigError, DevidError
from devid.publish.plain_http import PlainHttpServer
from devid.registry.delivery import Dispatcher
from devid.revocation.publisher import Publisher
from devid.server.app import AUTHORITY, ENROLLMENT, METRICS, STATUS, RunningServer, start_server
from devid.server.heap import release_freed_memory
from devid.server.listener import ConnectionLimits
from devid.server.metrics import Metrics, log_json, request_log
from devid.store.lease import Lease

log = logging.getLogger("devid.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How a server process listens (the same for every worker of one `devid serve`)."""

    host: str = "127.0.0.1"
    port: int = 8443
    shutdown_timeout: float = 30.0
    access_log: bool = False
    deliver_events: bool = True
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Keep CRLs and filters current from this process (one process of a deployment is enough).
    publish_status: bool = True
    #: Also serve OCSP, CRLs and filters over plain HTTP on this port (None: not at all).
    http_port: int | None = None
    #: Also serve EST-coaps (RFC 9148) over DTLS on this UDP port (None: not at all).
    coaps_port: int | None = None
    #: Log as JSON lines on stderr, one per request among them (`devid.server.metrics`).
    log_json: bool = False


async def serve(
    app: web.Application,
    context: ssl.SSLContext,
    options: ServeOptions,
    *,
    listening: Callable[[RunningServer], None],
    stopping: Callable[[], None] = lambda: None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    reuse_port: bool = False,
    dtls: DtlsIdentity | None = None,
) -> None:
    """Serve `app` until one of `stop_signals`, then let requests in flight finish and return.
    `listening` is called once the socket accepts, `stopping` when a stop signal arrives.
    `dtls`: the server's identity for EST-coaps, served when `options.coaps_port` is set."""
    if options.log_json:
        log_json()
    elif options.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        request_log.setLevel(logging.WARNING)  # aiohttp's access log has the request lines already
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(
        app,
        context,
        host=options.host,
        port=options.port,
        shutdown_timeout=options.shutdown_timeout,
        access_log=logging.getLogger("aiohttp.access") if options.access_log else None,
        reuse_port=reuse_port,
        limits=options.limits,
    )
    plain = None
    if options.http_port is not None:
        metrics = app[METRICS]
        plain = PlainHttpServer(metrics.plain_requests(app[STATUS].handler({"/metrics": metrics.plain})))
        try:
            await plain.start(options.host, options.http_port, reuse_port=reuse_port)
        except OSError as exc:
            await running.stop()
            raise ConfigError(
                "listen", f"cannot listen on {options.host}:{options.http_port}: {exc.strerror or exc}"
            ) from None
    coaps = None
    if options.coaps_port is not None and dtls is not None:
        try:
            coaps = await start_coaps(
                app[ENROLLMENT],
                dtls,
                host=options.host,
                port=options.coaps_port,
                status=app[STATUS].compact,
                observe=app[METRICS].coaps_answered,
            )
        except ConfigError:
            if plain is not None:
                await plain.close()
            await running.stop()
            raise
        running.coaps_url = coaps.url
    # What start-up made lives as long as the process: the collector need not walk it again.
    gc.freeze()
    listening(running)
    duties = _Duties(app, options)
    background = asyncio.create_task(duties.run())
    await stop.wait()
    stopping()
    duties.stop_publishing()
    if coaps is not None:
        await coaps.close(options.shutdown_timeout)
    if plain is not None:
        await plain.close()
    await running.stop()
    duties.stop()
    await background


#: Seconds between a server's tries to take the duties' lease (and checks that it still holds it):
#: how long delivery and publishing pause when their holder dies.
LEASE_EVERY = 1.0
#: The lease of the background duties (one holder per store).
DUTIES_LEASE = "duties"


class _Duties:
    """Event delivery and status publishing, run while this process holds the duties' lease."""

    def __init__(self, app: web.Application, options: ServeOptions) -> None:
        authority = app[AUTHORITY]
        self._lease = Lease(authority.engine, DUTIES_LEASE)
        self._wanted = options.deliver_events or options.publish_status
        self._dispatcher = (
            Dispatcher(authority.engine, key=authority.credentials) if options.deliver_events else None
        )
        self._publisher = Publisher(authority) if options.publish_status else None
        self._metrics = app[METRICS]
        self._delivering: asyncio.Task[None] | None = None
        self._publishing: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def stop_publishing(self) -> None:
        """At shutdown: no more status data from this process (delivery goes on until `stop`)."""
        self._publisher = None
        if self._publishing is not None:
            self._publishing.cancel()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if not self._wanted:
            return
        try:
            while not self._stop.is_set():
                if await asyncio.to_thread(self._lease.held):
                    self._start()
                else:
                    await self._halt()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), LEASE_EVERY)
        finally:
            await self._halt()
            await asyncio.to_thread(self._lease.release)

    def _start(self) -> None:
        if self._dispatcher is not None and self._delivering is None:
            self._delivering = asyncio.create_task(self._dispatcher.run())
        if self._publisher is not None and self._publishing is None:
            self._publishing = asyncio.create_task(_publish(self._publisher, self._metrics))

    async def _halt(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            await asyncio.gather(self._publishing, return_exceptions=True)
            self._publishing = None
        if self._dispatcher is not None and self._delivering is not None:
            self._dispatcher.stop()
            await self._delivering
            self._delivering = None
            self._dispatcher = Dispatcher(self._dispatcher.engine, key=self._dispatcher.key)


#: Seconds between the publisher's checks: a revocation reaches CRLs and filters this fast.
PUBLISH_EVERY = 0.25


async def _publish(publisher: Publisher, metrics: Metrics) -> None:
    """Keep status data current while serving (`Publisher.tick`, off the event loop)."""
    while True:
        try:
            built = await asyncio.to_thread(publisher.tick)
            if built:
                await asyncio.to_thread(release_freed_memory)
                metrics.published(built)
                log.info("published %s", ", ".join(built))
        except DevidError as exc:
            log.warning("status data not published: %s [%s]", exc.message, exc.code)
        await asyncio.sleep(PUBLISH_EVERY)
