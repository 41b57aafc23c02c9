"""The aiohttp application `devid serve` runs: EST, the admin API (/api/v1) and session tokens.

Start it in-process (tests, benchmarks, the demo) with `devid.server.app.start_server`, or build the
application with `make_app` and run it yourself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from devid.api.app import ANONYMOUS_RATE, api_application
from devid.api.routes import PREFIX as API_PREFIX
from devid.authority.core import Authority
from devid.authority.enrollment import EnrollmentService
from devid.errors import ConfigError, DevidError
from devid.est.server import MAX_BODY, EstServer
from devid.publish.service import StatusService, status_service
from devid.registry.onboarding import Registry
from devid.scep.server import ScepServer
from devid.server.listener import ConnectionLimits, GuardedSite, request_phases
from devid.server.metrics import CountingRegistry, Metrics
from devid.server.trust import TrustSync
from devid.store.engine import unavailable
from devid.store.lease import Presence
from devid.tokens.routes import token_routes
from devid.ui.app import ui_routes
from devid.web.errors import error_middleware
from devid.web.peer import TRUSTED_PROXIES, TrustedProxies, peer_certificate

log = logging.getLogger("devid.web")

AUTHORITY = web.AppKey("devid.authority", Authority)
REGISTRY = web.AppKey("devid.registry", Registry)


class InFlight:
    """Counts requests being handled, so a shutdown can wait for them.

    aiohttp's own graceful shutdown waits for running handlers but stops reading from their
    connections first, so a request whose body is still arriving never completes. `RunningServer.stop`
    therefore stops accepting, waits here until the requests in flight are answered (their
    connections are closed after the answer), and only then lets aiohttp close what is left.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            response = await handler(request)
            if self.draining:
                response.force_close()
            return response
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("devid.in_flight", InFlight)
STATUS = web.AppKey("devid.status", StatusService)
METRICS = web.AppKey("devid.metrics", Metrics)
#: The process's enrollment service (EST's): EST-coaps enrolls through it too, so both protocols
#: share one group commit and one set of failed-authentication limits.
ENROLLMENT = web.AppKey("devid.enrollment", EnrollmentService)


async def _present(presence: Presence, app: web.Application) -> AsyncIterator[None]:
    """Count this process among the store's servers while the application runs."""
    await asyncio.to_thread(presence.present)
    yield
    await asyncio.to_thread(presence.leave)


def make_app(
    authority: Authority,
    *,
    trusted_proxies: Iterable[str] = (),
    client_max_size: int = MAX_BODY,
    api_anonymous_rate: int = ANONYMOUS_RATE,
) -> web.Application:
    """The devid web application for `authority`.

    `trusted_proxies`: IP addresses or networks of TLS-terminating proxies whose
    `X-SSL-Client-Cert` header (URL-encoded PEM) is taken as the client certificate; from any
    other peer the header is ignored. Bodies over `client_max_size` bytes are refused with 413.
    `api_anonymous_rate`: admin-API calls per minute a peer address may make without a valid token.
    """
    in_flight = InFlight()
    # OCSP and status data over HTTPS too; `devid serve --http-port` serves the same over plain
    # HTTP, for relying parties that cannot do TLS before they can check revocation.
    status = status_service(authority)
    metrics = Metrics(authority, status.responder)
    app = web.Application(
        client_max_size=client_max_size,
        middlewares=[request_phases, in_flight.middleware, metrics.middleware, error_middleware],
    )
    registry = CountingRegistry(authority, metrics)
    app[AUTHORITY] = authority
    app[METRICS] = metrics
    app[REGISTRY] = registry
    app[IN_FLIGHT] = in_flight
    app[TRUSTED_PROXIES] = TrustedProxies.parse(trusted_proxies)
    # Rate limits kept in memory hold across every server process on the store: each takes its share.
    presence = Presence(authority.engine)
    app.cleanup_ctx.append(functools.partial(_present, presence))
    est = EstServer(authority, registry, share=presence.share)
    app.add_routes(est.routes())
    app[ENROLLMENT] = est.service
    app.on_cleanup.append(est.close)
    app.add_routes(ScepServer(authority, est.service).routes())
    app.cleanup_ctx.append(functools.partial(_anchor_audit, authority))
    # The admin API is a sub-application: its JSON errors, bearer tokens and audit apply under
    # /api/v1 only, and EST's answers stay exactly as they were.
    app.add_subapp(
        API_PREFIX, api_application(authority, anonymous_rate=api_anonymous_rate, share=presence.share)
    )
    # The token service reads the client certificate the same way EST does (trusted proxies).
    app.add_routes(token_routes(authority, peer_certificate=peer_certificate))
    # The operator dashboard (HTML, signed-cookie sessions) under /ui.
    app.add_routes(ui_routes(authority, lambda der: status.responder.respond(der).der))
    app[STATUS] = status
    app.add_routes(status.routes())
    app.cleanup_ctx.append(functools.partial(_refresh_ocsp, status))
    app.router.add_get("/metrics", metrics.handle, allow_head=False)
    app.cleanup_ctx.append(metrics.serving)
    return app


#: How often a running server signs a checkpoint of the audit chain (when events came since).
AUDIT_CHECKPOINT_EVERY = 300.0


async def _anchor_audit(authority: Authority, _app: web.Application) -> AsyncIterator[None]:
    """Sign audit checkpoints every few minutes while serving, and once more at shutdown, so the
    events a server records are anchored without an operator's `devid audit checkpoint`."""

    async def every() -> None:
        while True:
            await asyncio.sleep(AUDIT_CHECKPOINT_EVERY)
            try:
                await asyncio.to_thread(authority.checkpoint_audit)
            except DevidError as exc:
                log.warning("audit checkpoint not written: %s [%s]", exc.message, exc.code)

    task = asyncio.create_task(every())
    yield
    task.cancel()
    try:
        await asyncio.to_thread(authority.checkpoint_audit)
    except DevidError as exc:
        log.warning("audit checkpoint not written at shutdown: %s [%s]", exc.message, exc.code)


#: How often pre-signed OCSP answers are checked for changes and for their refresh margin, and the
#: published CRLs and filters for a newer version (each worker keeps them all in memory).
OCSP_REFRESH_EVERY = 1.0


async def _refresh_ocsp(status: StatusService, _app: web.Application) -> AsyncIterator[None]:
    async def every() -> None:
        while True:
            await asyncio.sleep(OCSP_REFRESH_EVERY)
            try:
                await asyncio.to_thread(status.responder.refresh)
                await asyncio.to_thread(status.files.refresh)
            except DevidError as exc:
                log.warning("status answers not refreshed: %s [%s]", exc.message, exc.code)
            except Exception as exc:  # the store away: the loop must outlive it, and retry
                if unavailable(exc) is None:
                    raise
                log.warning("status answers not refreshed, the store is unavailable: %s", exc)

    task = asyncio.create_task(every())
    yield
    task.cancel()


@dataclass
class RunningServer:
    """A started server: its runner (call `await stop()` to shut it down gracefully) and URL."""

    runner: web.AppRunner
    site: GuardedSite
    host: str
    port: int
    shutdown_timeout: float = 30.0
    background: list[asyncio.Task[None]] = field(default_factory=list)
    #: Where EST-coaps is served by this process, if it is (`devid.server.process.serve`).
    coaps_url: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, let requests in flight finish (up to the shutdown
        timeout), then close the remaining (idle) connections."""
        in_flight = self.runner.app.get(IN_FLIGHT)
        await self.site.stop()
        for task in self.background:
            task.cancel()
        if in_flight is not None:
            in_flight.draining = True
            if not await in_flight.wait_idle(self.shutdown_timeout):
                log.warning(
                    "shutdown: %d request(s) still in flight after %ss",
                    in_flight.count,
                    self.shutdown_timeout,
                )
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    ssl_context: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_timeout: float = 30.0,
    access_log: logging.Logger | None = None,
    reuse_port: bool = False,
    limits: ConnectionLimits | None = None,
) -> RunningServer:
    """Listen on `host:port` (0: a free port) over TLS; returns once the socket accepts.
    `reuse_port`: SO_REUSEPORT, so several processes serve one port (the kernel spreads connections).
    `limits`: deadlines and the per-address connection cap (default: `ConnectionLimits()`); the
    application's trusted proxies are exempt from the cap."""
    # aiohttp's own shutdown runs after `stop` has drained the requests in flight: a short grace.
    runner = web.AppRunner(app, shutdown_timeout=min(shutdown_timeout, 5.0))
    await runner.setup()
    background = []
    registry = app.get(REGISTRY)
    if registry is not None:
        # Trust every registered manufacturer CA before the first handshake, then keep up.
        sync = TrustSync(registry, ssl_context)
        await asyncio.to_thread(sync.refresh)
        background.append(asyncio.create_task(sync.run()))
    exempt: TrustedProxies = app.get(TRUSTED_PROXIES, TrustedProxies())
    site = GuardedSite(
        runner,
        host,
        port,
        ssl_context=ssl_context,
        limits=limits or ConnectionLimits(),
        exempt=exempt,
        reuse_port=reuse_port,
        access_log=access_log,
    )
    try:
        await site.start()
    except OSError as exc:
        for task in background:
            task.cancel()
        await runner.cleanup()
        raise ConfigError("listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        for task in background:
            task.cancel()
        await runner.cleanup()
        raise
    return RunningServer(runner, site, host, site.bound_port, shutdown_timeout, background)
