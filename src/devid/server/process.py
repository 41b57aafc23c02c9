"""One `devid serve` process: listen, deliver registry events in the background, stop gracefully.

The registry-event dispatcher (webhooks, MQTT; `devid.registry.delivery`) starts after the server
listens and stops after it has drained: events emitted by the last requests still wake it, and
whatever is left waits in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from devid.errors import ConfigError, DevidError
from devid.publish.plain_http import PlainHttpServer
from devid.registry.delivery import Dispatcher
from devid.revocation.publisher import Publisher
from devid.server.app import AUTHORITY, METRICS, STATUS, RunningServer, start_server
from devid.server.listener import ConnectionLimits
from devid.server.metrics import Metrics, log_json, request_log

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
) -> None:
    """Serve `app` until one of `stop_signals`, then let requests in flight finish and return.
    `listening` is called once the socket accepts, `stopping` when a stop signal arrives."""
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
    # What start-up made lives as long as the process: the collector need not walk it again.
    gc.freeze()
    listening(running)
    dispatcher = (
        Dispatcher(app[AUTHORITY].engine, key=app[AUTHORITY].credentials) if options.deliver_events else None
    )
    delivering = asyncio.create_task(dispatcher.run()) if dispatcher is not None else None
    publishing = (
        asyncio.create_task(_publish(Publisher(app[AUTHORITY]), app[METRICS]))
        if options.publish_status
        else None
    )
    await stop.wait()
    stopping()
    if publishing is not None:
        publishing.cancel()
    if plain is not None:
        await plain.close()
    await running.stop()
    if dispatcher is not None and delivering is not None:
        dispatcher.stop()
        await delivering


#: Seconds between the publisher's checks: a revocation reaches CRLs and filters this fast.
PUBLISH_EVERY = 0.25


async def _publish(publisher: Publisher, metrics: Metrics) -> None:
    """Keep status data current while serving (`Publisher.tick`, off the event loop)."""
    while True:
        try:
            built = await asyncio.to_thread(publisher.tick)
            if built:
                metrics.published(built)
                log.info("published %s", ", ".join(built))
        except DevidError as exc:
            log.warning("status data not published: %s [%s]", exc.message, exc.code)
        await asyncio.sleep(PUBLISH_EVERY)
