"""The TLS listener `devid serve` runs: deadlines on every phase of a connection and a cap on the
connections one address may hold, so slow or idle clients cannot pile up in a worker.

aiohttp's `TCPSite` hands the listening socket to asyncio with `ssl=`, which leaves no place to
refuse a peer before its TLS handshake, no handshake timeout setting, and gives every connection
asyncio's 256 KiB TLS read buffer (600 held connections cost a worker 165 MB, measured). aiohttp
has an idle keep-alive timeout but no deadline for a request's headers or body. So this module
does by hand only what the two cannot:

- `_Gate`, the first protocol of every TCP connection, counts connections per peer address and
  closes one over the cap at once, before any TLS work; the others go on to `_Tls`.
- `_Tls` is asyncio's own TLS protocol with a 16 KiB read buffer (a TLS record's size), the
  handshake timeout also bounding the TLS shutdown; it frees the address's slot when the
  connection ends.
- `_Handler` is aiohttp's `RequestHandler` with two timers: the request head must arrive within
  `header_timeout` of the connection's start or of the first byte after an idle keep-alive, and
  a body within `body_timeout` of its head. Idle keep-alive is aiohttp's own `keepalive_timeout`.
- `request_phases` is the middleware that tells the handler where a request is (its head is in,
  it is answered), and turns a client that vanished mid-request into one log line instead of
  aiohttp's traceback.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("devid.web")

#: An address kept at its cap is named in the log at most once in this many seconds.
REFUSAL_LOG_INTERVAL = 60.0
#: asyncio's TLS protocol reads into a buffer of this size per connection (its default: 256 KiB).
TLS_READ_BUFFER = 16 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines (seconds) and the per-address connection cap of a listener."""

    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    #: Concurrent connections one peer address may hold (None: no cap); trusted proxies are exempt.
    per_address: int | None = 64


class PeerSlots:
    """Connections held per peer address, for the cap."""

    def __init__(self, cap: int | None, exempt: Container[str] = ()) -> None:
        self.cap = cap
        self.exempt = exempt
        self.held: dict[str, int] = {}
        self._logged: dict[str, float] = {}  # when a refusal of the address was last logged

    def acquire(self, address: str) -> Callable[[], None] | None:
        """A function that frees one more connection from `address`, or None over the cap."""
        held = self.held.get(address, 0)
        if self.cap is not None and held >= self.cap and address not in self.exempt:
            now = time.monotonic()
            if now - self._logged.get(address, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
                self._logged[address] = now
                log.warning("refusing connections from %s: it holds %d already", address, held)
            return None
        self.held[address] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self.held.pop(address) - 1
                if left:
                    self.held[address] = left
                else:
                    self._logged.pop(address, None)

        return release


class _Handler(web.RequestHandler):
    """aiohttp's per-connection HTTP protocol with the header and body deadlines."""

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.limits = limits
        self.idle = True
        self.expired = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, "request head")

    def data_received(self, data: bytes) -> None:
        if self.idle and self._timer is None:  # the first byte of the next request on a kept connection
            self._arm(self.limits.header_timeout, "request head")
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def request_started(self, request: web.BaseRequest) -> None:
        self.idle = False
        self._disarm()
        if not request.content.is_eof():
            self._arm(self.limits.body_timeout, "request body")

    def request_finished(self) -> None:
        self._disarm()
        self.idle = True

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self._loop.call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, what: str, seconds: float) -> None:
        self._timer = None
        peer = self.peername[0] if isinstance(self.peername, tuple) else "?"
        self.expired = f"no complete {what} from {peer} within {seconds:g} s"
        if what == "request head":
            log.debug("closing the connection: %s", self.expired)
        transport = self.transport
        self.force_close()
        if transport is not None:
            # Drop the TCP connection now: a TLS close would wait for the peer's close_notify.
            transport.abort()


class _Tls(sslproto.SSLProtocol):
    """asyncio's TLS protocol with a small read buffer; frees its address's slot at the end."""

    max_size = TLS_READ_BUFFER

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        handshake_timeout: float,
        release: Callable[[], None],
    ) -> None:
        # No waiter: nobody awaits a server-side handshake (a failed one is only logged by asyncio).
        super().__init__(
            loop,
            app,
            context,
            None,  # type: ignore[arg-type]
            server_side=True,
            ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]
            # A closing connection waits this long for the peer's close_notify (asyncio: 30 s).
            ssl_shutdown_timeout=handshake_timeout,
        )
        self._release = release

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        super().connection_lost(exc)


class _Gate(asyncio.Protocol):
    def __init__(self, listener: GuardedSite) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        release = self.listener.slots.acquire(address)
        if release is None:
            transport.abort()
            return
        tls = _Tls(
            asyncio.get_running_loop(),
            self.listener.handler(),
            self.listener.context,
            self.listener.limits.handshake_timeout,
            release,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)


class GuardedSite(web.BaseSite):
    """An aiohttp site on `host:port` over TLS, with `ConnectionLimits` (see the module doc)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        limits: ConnectionLimits,
        exempt: Container[str] = (),
        reuse_port: bool = False,
        access_log: logging.Logger | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self.host, self.port = host, port
        self.context = ssl_context
        self.limits = limits
        self.slots = PeerSlots(limits.per_address, exempt)
        self.reuse_port = reuse_port
        self.access_log = access_log

    @property
    def name(self) -> str:
        return f"https://{self.host}:{self.port}"

    def handler(self) -> _Handler:
        manager = self._runner.server
        assert manager is not None
        return _Handler(
            manager, limits=self.limits, loop=asyncio.get_running_loop(), access_log=self.access_log
        )

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Gate(self), self.host, self.port, reuse_port=self.reuse_port or None
        )

    @property
    def bound_port(self) -> int:
        server = self._server
        if isinstance(server, asyncio.Server) and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return self.port


@web.middleware
async def request_phases(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's `_Handler` that a request's head is in and when it is answered, and
    log a client that went away mid-request in one line (aiohttp would log a traceback)."""
    protocol = request.protocol
    guarded = protocol if isinstance(protocol, _Handler) else None
    if guarded is not None:
        guarded.request_started(request)
    try:
        return await handler(request)
    except OSError:  # ConnectionError, or TimeoutError when a TLS close waited in vain
        if request.transport is not None and not request.transport.is_closing():
            raise  # not the client's connection: a real error
        why = (
            guarded.expired if guarded is not None and guarded.expired else "the client closed the connection"
        )
        log.warning("%s %s from %s ended mid-request: %s", request.method, request.path, request.remote, why)
        return web.Response(status=499)  # never sent: the connection is gone
    finally:
        if guarded is not None:
            guarded.request_finished()
