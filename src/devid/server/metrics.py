"""What `devid serve` tells an operator: Prometheus metrics at /metrics, a request id on every
answer, and (with `--log-json`) one JSON line per request.

One `Metrics` object per application owns every metric object, on its own registry (none in
prometheus-client's global one). Counters are counted where things happen: requests in the
middleware, issuance through the authority's `issuance_observers` hook (the authority may not
import this layer), status rebuilds from the publisher's loop, OCSP from the responder's plain
integer counters (its hot path is a dict lookup; an int increment keeps it so), copied into the
counters every `SYNC_EVERY` seconds and at each scrape. Gauges that describe the store (certificates
expiring soon, the outbox backlog, the size of published CRLs and filters) are computed at scrape
time by indexed queries, cached for `STORE_TTL` seconds.

With `devid serve --workers N` the supervisor sets PROMETHEUS_MULTIPROC_DIR to a fresh private
directory before it starts the workers: prometheus-client then keeps each worker's counter and
histogram values in memory-mapped files there, and a scrape, answered by whichever worker the
kernel gives the connection, sums the files of all workers (`MultiProcessCollector`), the dead
ones' included, so totals do not drop when a worker is restarted. The store gauges need no such
care: every worker reads the same store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from devid.api.routes import PREFIX as API_PREFIX
from devid.authority.core import Authority
from devid.authority.credentials import Identity
from devid.authority.enroll import Admission
from devid.authority.requests import Issued
from devid.errors import DevidError
from devid.est.server import basic_credential
from devid.publish.plain_http import Handler as PlainHandler
from devid.publish.plain_http import Reply
from devid.registry.onboarding import Registry, device_serial_of
from devid.revocation.ocsp import OcspResponder
from devid.store.engine import reading
from devid.store.models import certificates, event_sinks, events, published
from devid.store.states import CertificateStatus
from devid.web.peer import peer_address, peer_certificate

#: prometheus-client's multiprocess mode is on when this names a directory (read at its import).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("devid.request_id", str)
#: Seconds between copies of the OCSP responder's counters into the metrics.
SYNC_EVERY = 1.0
#: Seconds the store gauges are cached (their queries are indexed, but a scrape storm need not run them).
STORE_TTL = 30.0
#: The text exposition format every Prometheus reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPIRING_WITHIN = {"7d": timedelta(days=7), "30d": timedelta(days=30)}

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_EST_PREFIX = "/.well-known/est/"
_API_PREFIX = API_PREFIX + "/"
_EST_OPERATIONS = frozenset(
    ("cacerts", "csrattrs", "policy", "simpleenroll", "simplereenroll", "serverkeygen")
)
#: Issuance is signing plus one commit (group-committed under load): milliseconds to seconds.
_ISSUANCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

request_log = logging.getLogger("devid.request")


def request_id(sent: str | None) -> str:
    """The client's request id if it is sane (at most 64 of [A-Za-z0-9._-]), else a new one."""
    if sent is not None and _SANE_ID.fullmatch(sent):
        return sent
    return secrets.token_hex(8)


def est_operation(path: str) -> str | None:
    """The EST operation a path names (`other` for an unknown one), None outside EST."""
    if not path.startswith(_EST_PREFIX):
        return None
    last = path.rsplit("/", 1)[1]
    return last if last in _EST_OPERATIONS else "other"


class StoreGauges(Collector):
    """Gauges read from the store at scrape time (cached `ttl` seconds)."""

    def __init__(self, authority: Authority, ttl: float = STORE_TTL) -> None:
        self.authority = authority
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._cached = self._read()
                self._at = time.monotonic()
            return list(self._cached)

    def _read(self) -> list[Metric]:
        now = self.authority.clock.now().astimezone(UTC)
        expiring = GaugeMetricFamily(
            "devid_certificates_expiring",
            "Valid certificates whose notAfter falls within the window from now",
            labels=["within"],
        )
        backlog = GaugeMetricFamily(
            "devid_outbox_backlog", "Registry events not yet delivered to the slowest enabled sink"
        )
        sizes = GaugeMetricFamily(
            "devid_status_published_bytes",
            "Size of the latest published status data (CRL shards and allowlists summed)",
            labels=["kind", "scope"],
        )
        with reading(self.authority.engine) as conn:
            for label, window in EXPIRING_WITHIN.items():
                count = conn.execute(
                    select(func.count())
                    .select_from(certificates)
                    .where(
                        certificates.c.not_after > now,
                        certificates.c.not_after <= now + window,
                        certificates.c.status == CertificateStatus.VALID,
                    )
                ).scalar_one()
                expiring.add_metric([label], count)
            slowest = select(func.min(event_sinks.c.cursor)).where(event_sinks.c.enabled.is_(True))
            waiting = conn.execute(
                select(func.count()).select_from(events).where(events.c.id > slowest.scalar_subquery())
            ).scalar_one()
            backlog.add_metric([], waiting)
            latest = (
                select(published.c.kind, published.c.scope, func.max(published.c.number).label("number"))
                .group_by(published.c.kind, published.c.scope)
                .subquery()
            )
            rows = conn.execute(
                select(published.c.kind, published.c.scope, func.length(published.c.data)).join(
                    latest,
                    (published.c.kind == latest.c.kind)
                    & (published.c.scope == latest.c.scope)
                    & (published.c.number == latest.c.number),
                )
            ).all()
        summed: dict[tuple[str, str], int] = {}
        for kind, scope, size in rows:
            if kind == "allowlist":
                key = (kind, "all")  # one per hub or group: too many for labels
            elif "/" in scope:
                key = (f"{kind}-shards", scope.split("/", 1)[0])
            else:
                key = (kind, scope)
            summed[key] = summed.get(key, 0) + int(size or 0)
        for (kind, scope), size in sorted(summed.items()):
            sizes.add_metric([kind, scope], size)
        return [expiring, backlog, sizes]


class Metrics:
    """The metrics of one `devid serve` application (see the module doc)."""

    def __init__(
        self, authority: Authority, responder: OcspResponder, *, store_ttl: float = STORE_TTL
    ) -> None:
        self.authority = authority
        self.responder = responder
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.issued = Counter(
            "devid_certificates_issued", "Certificates issued", ["profile"], registry=registry
        )
        self.issuance_seconds = Histogram(
            "devid_issuance_seconds",
            "Seconds from signing to commit of the batch each certificate was issued in",
            ["profile"],
            buckets=_ISSUANCE_BUCKETS,
            registry=registry,
        )
        self.est_requests = Counter(
            "devid_est_requests", "EST requests answered", ["operation", "status"], registry=registry
        )
        self.coaps_requests = Counter(
            "devid_coaps_requests",
            "EST-coaps and compact-status requests answered, by resource (last path segment) and code",
            ["resource", "code"],
            registry=registry,
        )
        self.api_requests = Counter(
            "devid_api_requests",
            "Admin API requests answered, by operation id (`other`: no such route)",
            ["operation", "status"],
            registry=registry,
        )
        self.jitr = Counter(
            "devid_jitr_registrations", "Devices registered just in time at enrollment", registry=registry
        )
        self.ocsp_requests = Counter("devid_ocsp_requests", "OCSP requests answered", registry=registry)
        self.ocsp_hits = Counter(
            "devid_ocsp_cache_hits", "OCSP requests answered from a pre-signed answer", registry=registry
        )
        self.ocsp_signed = Counter("devid_ocsp_responses_signed", "OCSP responses signed", registry=registry)
        self.rebuilds = Counter(
            "devid_status_rebuilds", "CRLs and filters rebuilt by the publisher", ["kind"], registry=registry
        )
        self.store = StoreGauges(authority, store_ttl)
        registry.register(self.store)
        self._synced = (0, 0, 0)
        self._sync_lock = threading.Lock()

    # --- counting ------------------------------------------------------------------------------

    def coaps_answered(self, resource: str, code: str) -> None:
        """One CoAP request answered (`devid.coap`'s observer: resource `sen`, code `2.01`)."""
        self.coaps_requests.labels(resource, code).inc()

    def observe_issuance(self, issued: Sequence[Issued], seconds: float) -> None:
        """The authority's issuance hook: one committed batch and how long it took."""
        for item in issued:
            self.issued.labels(item.profile.value).inc()
            self.issuance_seconds.labels(item.profile.value).observe(seconds)

    def published(self, built: Iterable[str]) -> None:
        """Count what `Publisher.tick` rebuilt (`crl ca`, `delta-crl ca`, `crl ca/3`, `filter ca`)."""
        for item in built:
            kind, _, scope = item.partition(" ")
            self.rebuilds.labels(f"{kind}-shard" if "/" in scope else kind).inc()

    def sync(self) -> None:
        """Copy the OCSP responder's counters into the metrics (what moved since the last copy)."""
        with self._sync_lock:
            now = (self.responder.requests, self.responder.hits, self.responder.signed)
            for counter, new, old in zip(
                (self.ocsp_requests, self.ocsp_hits, self.ocsp_signed), now, self._synced, strict=True
            ):
                if new > old:
                    counter.inc(new - old)
            self._synced = now

    async def serving(self, _app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: observe the authority's issuance and `sync` every
        `SYNC_EVERY` seconds while the application runs."""

        async def every() -> None:
            while True:
                await asyncio.sleep(SYNC_EVERY)
                self.sync()

        self.authority.issuance_observers.append(self.observe_issuance)
        task = asyncio.create_task(every())
        try:
            yield
        finally:
            task.cancel()
            self.authority.issuance_observers.remove(self.observe_issuance)
            self.sync()

    # --- exposition ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition of every metric: this process's, or with several workers, the sum
        over all of them (the multiprocess directory), with the store gauges."""
        self.sync()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        merged.register(self.store)
        return generate_latest(merged)

    async def handle(self, _request: web.Request) -> web.Response:
        """GET /metrics on the TLS port (off the event loop: the store gauges may query)."""
        body = await asyncio.to_thread(self.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    def plain(self, method: str, target: str, _headers: Mapping[str, str], _body: bytes) -> Reply:
        """GET /metrics on the plain-HTTP status port (a `devid.publish.plain_http.Handler`)."""
        if method not in ("GET", "HEAD"):
            return 405, (("Allow", "GET, HEAD"), ("Content-Type", "text/plain")), b"method not allowed\n"
        return 200, (("Content-Type", CONTENT_TYPE),), self.exposition()

    # --- every request -------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Give the request its id (echoed in `X-Request-Id`), count EST and admin API requests by
        operation and status, and log the request (`devid.request`, INFO: the JSON lines of `--log-json`)."""
        started = time.perf_counter()
        rid = request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = rid
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            operation = est_operation(request.path)
            if operation is not None:
                self.est_requests.labels(operation, str(status)).inc()
            elif request.path.startswith(_API_PREFIX):
                self.api_requests.labels(request.match_info.route.name or "other", str(status)).inc()
            if request_log.isEnabledFor(logging.INFO):  # reading the client certificate costs
                _log_request(
                    rid,
                    request.method,
                    request.path,
                    status,
                    started,
                    peer_address(request),
                    _device_of(request),
                )

    def plain_requests(self, inner: PlainHandler) -> PlainHandler:
        """The plain-HTTP status port's handler with what `middleware` gives every TLS request: an
        id (echoed in `X-Request-Id`) and its log line. No peer or device there: OCSP and CRLs are
        fetched anonymously."""

        def handle(method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
            started = time.perf_counter()
            rid = request_id(headers.get("x-request-id"))
            status, out, payload = inner(method, target, headers, body)
            if request_log.isEnabledFor(logging.INFO):
                _log_request(rid, method, target.partition("?")[0], status, started, None, None)
            return status, (*out, (REQUEST_ID_HEADER, rid)), payload

        return handle


def _log_request(
    rid: str, method: str, path: str, status: int, started: float, peer: str | None, device: str | None
) -> None:
    """One request's line on `devid.request` (INFO): the JSON lines of `--log-json`."""
    request_log.info(
        "%s %s %d",
        method,
        path,
        status,
        extra={
            "request": {
                "request_id": rid,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "peer": peer,
                "device": device,
            }
        },
    )


class CountingRegistry(Registry):
    """The registry, counting the devices it registers just in time. A deferred registration
    (written in the transaction of the device's first certificate) is counted when handed over."""

    def __init__(self, authority: Authority, metrics: Metrics) -> None:
        super().__init__(authority)
        self.metrics = metrics

    def register(
        self, client: Identity, admission: Admission, region: str | None = None, *, defer: bool = False
    ) -> tuple[Identity, Admission]:
        out = super().register(client, admission, region, defer=defer)
        if not client.registered and out[0].registered:
            self.metrics.jitr.inc()
        return out


def _device_of(request: web.Request) -> str | None:
    """The device a request came from, if it said: its client certificate's serial, or the user
    of its HTTP Basic credential."""
    der = peer_certificate(request)
    if der:
        try:
            return device_serial_of(x509.load_der_x509_certificate(der))
        except (ValueError, DevidError):
            return None
    basic = basic_credential(request.headers.get("Authorization"))
    return basic.serial if basic is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, pid, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, with `--workers N`
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_json() -> None:
    """Send every log record (INFO and up) to stderr as JSON lines (`devid serve --log-json`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
