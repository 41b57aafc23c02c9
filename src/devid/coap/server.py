"""`devid serve --coaps-port`: EST-coaps (and compact status, `/st`) on a UDP port, DTLS sessions
swept once a second.

coaps = await start_coaps(service, DtlsIdentity.load(cert_file, key_file, passphrase), port=5684)
...
await coaps.close()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from devid.authority.enrollment import EnrollmentService
from devid.coap.dtls import DtlsIdentity, DtlsLimits, DtlsServer, DtlsSession, server_context
from devid.coap.exchange import BlockLimits, CoapEndpoint, Handler, Observer, Request, Response
from devid.coap.resources import EstCoaps
from devid.coap.status import STATUS_LINK, STATUS_PATH, StatusCoaps
from devid.errors import ConfigError
from devid.revocation.cose_responder import CoseStatusResponder

log = logging.getLogger("devid.coap")

#: Seconds between sweeps of expired handshakes, idle sessions and unfinished block-wise transfers.
SWEEP_EVERY = 1.0


@dataclass
class CoapsServer:
    """A listening EST-coaps server: its port, its DTLS layer (sessions, counters); `close()` it."""

    dtls: DtlsServer
    host: str
    port: int
    #: Requests being answered (held here so that a stop can let them finish).
    tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coaps://{host}:{self.port}"

    async def close(self, timeout: float = 5.0) -> None:
        """Let the requests being answered finish (up to `timeout` seconds), then end every
        session (close_notify) and the socket."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in late:
                task.cancel()
        self.dtls.close()


async def start_coaps(
    service: EnrollmentService,
    identity: DtlsIdentity,
    *,
    host: str = "127.0.0.1",
    port: int = 5684,
    limits: DtlsLimits | None = None,
    blocks: BlockLimits | None = None,
    status: CoseStatusResponder | None = None,
    observe: Observer | None = None,
) -> CoapsServer:
    """Listen for EST-coaps on UDP `host:port` (0: a free port); with `status`, compact
    certificate status at `/st` too (`devid.coap.status`)."""
    resources: Handler = EstCoaps(service)
    if status is not None:
        resources = _with_status(EstCoaps(service, (STATUS_LINK,)), StatusCoaps(status))
    block_limits = blocks or BlockLimits()
    clock = time.monotonic
    tasks: set[asyncio.Task[None]] = set()

    def endpoint(session: DtlsSession) -> CoapEndpoint:
        return CoapEndpoint(session, resources, block_limits, clock, tasks, observe)

    dtls = DtlsServer(server_context(identity), endpoint, limits, clock=clock)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: dtls, local_addr=(host, port), family=family
        )
    except OSError as exc:
        raise ConfigError("listen", f"cannot listen on UDP {host}:{port}: {exc.strerror or exc}") from None
    bound = int(transport.get_extra_info("sockname")[1])
    server = CoapsServer(dtls, host, bound, tasks)
    server._sweeper = asyncio.create_task(_sweep(dtls))
    return server


def _with_status(est: EstCoaps, status: StatusCoaps) -> Handler:
    async def handle(request: Request) -> Response:
        return await (status if request.path[:1] == STATUS_PATH else est)(request)

    return handle


async def _sweep(dtls: DtlsServer) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        try:
            dtls.sweep()
        except Exception:  # the sweep must outlive any one session's failure
            log.exception("sweeping DTLS sessions failed")
