"""The dispatcher: registry events from the outbox to every enabled sink, at least once, in order.

Per sink, a worker reads the events after the sink's cursor in id order (a batch), sends them one
by one, and moves the cursor past the last one sent only after the transport confirmed it (HTTP
2xx, MQTT PUBACK). A crash between a send and the cursor update sends that event again: receivers
deduplicate on the event `id`. A failing sink stops at the failing event and retries it after a
backoff with jitter (its failures and last error are recorded on the sink); every sink has its own
worker, so a slow or broken one never holds the others back.

Workers poll the outbox (every `poll_interval`) and are woken at once when a transaction of this
process that emitted an event commits (`watch_commits`). Several dispatchers on one store stay
correct (the cursor only moves forward) but may each send an event: `devid serve` runs its
dispatcher only while it holds the store's duties lease (`devid.server.process`), so one server of
a deployment delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import Engine, case, event, select, update

from devid.authority.credential_key import CredentialKey
from devid.errors import KeyAccessError
from devid.registry.sinks import Sink, list_sinks
from devid.registry.transports import DeliveryError, Mqtt, Outgoing, Transport, Webhook
from devid.store.engine import reading, writing
from devid.store.models import event_sinks as _sinks
from devid.store.models import events as _events
from devid.store.outbox import EMITTED

log = logging.getLogger("devid.events")

_COMMITTED = "devid.events.committed"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: after the n-th failure in a row, wait a random time in
    [d/2, d] with d = min(cap, base * 2**(n-1)), so sinks failing together do not retry together."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 30))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Settings:
    poll_interval: float = 0.5
    batch_size: int = 100
    webhook_timeout: float = 10.0
    mqtt_timeout: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True)
class PassResult:
    """One sink's pass: how many events it took, and the error that stopped it, if any."""

    delivered: int
    error: str | None = None


def outgoing(event_id: int, type_: str, payload: str) -> Outgoing:
    """The JSON sent for an outbox row: the event as emitted, plus its `id` (the dedup key)."""
    body: dict[str, Any] = json.loads(payload)
    body["id"] = event_id
    return Outgoing(event_id, type_, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _read_batch(engine: Engine, sink_id: int, limit: int) -> tuple[int, list[Outgoing]] | None:
    """The sink's cursor and the events after it, or None when the sink is gone or disabled."""
    with reading(engine) as conn:
        row = conn.execute(select(_sinks.c.cursor, _sinks.c.enabled).where(_sinks.c.id == sink_id)).first()
        if row is None or not row.enabled:
            return None
        query = (
            select(_events.c.id, _events.c.type, _events.c.payload)
            .where(_events.c.id > row.cursor)
            .order_by(_events.c.id)
            .limit(limit)
        )
        batch = [outgoing(r.id, r.type, r.payload) for r in conn.execute(query)]
        return int(row.cursor), batch


def _record(engine: Engine, sink_id: int, delivered_to: int | None, error: str | None) -> None:
    """Move the cursor forward to `delivered_to` (never back: another dispatcher may be ahead)
    and record the outcome."""
    values: dict[str, Any] = (
        {"failures": 0, "last_error": None}
        if error is None
        else {"failures": _sinks.c.failures + 1, "last_error": error[:2000]}
    )
    if delivered_to is not None:
        values["cursor"] = case((_sinks.c.cursor < delivered_to, delivered_to), else_=_sinks.c.cursor)
    with writing(engine) as conn:
        conn.execute(update(_sinks).where(_sinks.c.id == sink_id).values(**values))


def watch_commits(engine: Engine, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` after each commit of a transaction that emitted an event on `engine`;
    returns the function that stops watching.

    SQLAlchemy's commit hook runs just before the database commits, so it only marks the
    connection; the callback runs when the connection goes back to the pool, after the commit.
    """

    def on_commit(conn: Any) -> None:
        if conn.info.pop(EMITTED, False):
            conn.info[_COMMITTED] = True

    def on_rollback(conn: Any) -> None:
        if not conn.invalidated:  # an invalidated connection (a lease's session given up) has no info
            conn.info.pop(EMITTED, None)

    def on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None and record.info.pop(_COMMITTED, False):
            callback()

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("commit", on_commit),
        ("rollback", on_rollback),
        ("checkin", on_checkin),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)

    def stop() -> None:
        for name, fn in listeners:
            event.remove(engine, name, fn)

    return stop


class SinkWorker:
    """Delivers to one sink, in order, until stopped or the sink is disabled or removed."""

    def __init__(self, sink: Sink, transport: Transport, engine: Engine, settings: Settings) -> None:
        self.sink = sink
        self.transport = transport
        self.engine = engine
        self.settings = settings
        self.wake = asyncio.Event()
        self.failures = 0
        self.gone = False

    async def deliver_pending(self, stop: asyncio.Event) -> PassResult:
        """Send batches until the sink is caught up, a send fails, or `stop` is set."""
        delivered = 0
        while not stop.is_set():
            got = await asyncio.to_thread(_read_batch, self.engine, self.sink.id, self.settings.batch_size)
            if got is None:
                self.gone = True
                return PassResult(delivered)
            cursor, batch = got
            if not batch:
                if self.failures:
                    await asyncio.to_thread(_record, self.engine, self.sink.id, None, None)
                    self.failures = 0
                return PassResult(delivered)
            last, error = cursor, None
            for item in batch:
                if stop.is_set():
                    break
                try:
                    await self.transport.send(item)
                except DeliveryError as exc:
                    error = str(exc)
                    break
                last = item.id
                delivered += 1
            await asyncio.to_thread(
                _record, self.engine, self.sink.id, last if last != cursor else None, error
            )
            if error is not None:
                self.failures += 1
                log.warning("event sink %s: %s (failure %d)", self.sink.name, error, self.failures)
                return PassResult(delivered, error)
            self.failures = 0
        return PassResult(delivered)

    async def run(self, stop: asyncio.Event, rng: random.Random) -> None:
        while not stop.is_set() and not self.gone:
            try:
                result = await self.deliver_pending(stop)
            except Exception as exc:  # the store failed: keep the worker, retry like a send
                self.failures += 1
                result = PassResult(0, f"{type(exc).__name__}: {exc}")
                log.warning("event sink %s: %s", self.sink.name, result.error)
            if result.error is not None:
                # Wakes do not shorten a backoff: only time (or stop) ends it.
                await _first(stop.wait(), asyncio.sleep(self.settings.backoff.delay(self.failures, rng)))
            else:
                await _first(stop.wait(), self.wake.wait(), asyncio.sleep(self.settings.poll_interval))
                self.wake.clear()


async def _first(*awaitables: Any) -> None:
    """Wait until the first of `awaitables` completes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _config(sink: Sink) -> tuple[Any, ...]:
    return (sink.kind, sink.url, sink.topic, sink.secret)


class Dispatcher:
    """Runs one `SinkWorker` per enabled sink, starting and stopping them as sinks change."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings | None = None,
        *,
        key: CredentialKey,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        #: Opens the sinks' sealed URLs and signing keys.
        self.key = key
        self.settings = settings or Settings()
        self.rng = rng or random.Random()
        self._workers: dict[int, tuple[SinkWorker, asyncio.Task[None]]] = {}
        # Made in `_running`, inside the loop that waits on them (an Event is bound to one loop).
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused: set[str] = set()

    def wake(self) -> None:
        """Look at the outbox now (safe from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._reload.set()
        for worker, _ in self._workers.values():
            worker.wake.set()

    def stop(self) -> None:
        """Make `run` return (from the loop's thread): workers are cancelled; an event whose send
        was cut short is sent again next time, as its cursor had not moved."""
        self._stopping = True
        self._stop.set()

    def _transport(self, sink: Sink) -> Transport:
        conn = sink.connection(self.key)
        if sink.kind == "mqtt":
            return Mqtt(conn.url, sink.topic or "devid/events", self.settings.mqtt_timeout)
        assert self._session is not None
        return Webhook(conn.url, conn.signing_key, self._session, self.settings.webhook_timeout)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._stop, self._reload = asyncio.Event(), asyncio.Event()
        if self._stopping:
            self._stop.set()
        self._session = aiohttp.ClientSession()
        unwatch = watch_commits(self.engine, self.wake)
        try:
            yield
        finally:
            unwatch()
            await self._stop_workers(list(self._workers))
            await self._session.close()
            self._session = None
            self._loop = None

    async def _stop_workers(self, sink_ids: list[int]) -> None:
        for sink_id in sink_ids:
            worker, task = self._workers.pop(sink_id)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await worker.transport.aclose()

    async def _enabled_sinks(self) -> list[Sink]:
        """The enabled sinks whose sealed secrets open under the credential key (warned once each)."""

        def load() -> list[Sink]:
            with reading(self.engine) as conn:
                return list_sinks(conn, enabled_only=True)

        usable = []
        for sink in await asyncio.to_thread(load):
            try:
                sink.connection(self.key)
            except KeyAccessError as exc:
                if sink.name not in self._refused:
                    self._refused.add(sink.name)
                    log.warning("event delivery: not delivering to sink %s: %s", sink.name, exc.message)
                continue
            usable.append(sink)
        return usable

    async def _reconcile(self) -> None:
        wanted = {s.id: s for s in await self._enabled_sinks()}
        stale = [
            sid
            for sid, (worker, task) in self._workers.items()
            if sid not in wanted or _config(wanted[sid]) != _config(worker.sink) or task.done()
        ]
        await self._stop_workers(stale)
        for sid, sink in wanted.items():
            if sid not in self._workers:
                worker = SinkWorker(sink, self._transport(sink), self.engine, self.settings)
                task = asyncio.create_task(worker.run(self._stop, self.rng), name=f"event-sink-{sink.name}")
                self._workers[sid] = (worker, task)

    async def run(self) -> None:
        """Deliver until `stop()` is called or the task is cancelled."""
        async with self._running():
            while not self._stop.is_set():
                try:
                    await self._reconcile()
                except Exception as exc:  # the store is away: keep trying
                    log.warning("event delivery: cannot read the sinks: %s", exc)
                await _first(
                    self._stop.wait(), self._reload.wait(), asyncio.sleep(self.settings.poll_interval)
                )
                self._reload.clear()

    async def deliver_once(self) -> dict[str, PassResult]:
        """One pass over every enabled sink, concurrently: each until caught up or its first
        failure (recorded, not retried). For `devid events deliver --once` and tests."""
        async with self._running():
            sinks = await self._enabled_sinks()
            workers = [SinkWorker(s, self._transport(s), self.engine, self.settings) for s in sinks]
            try:
                results = await asyncio.gather(*(w.deliver_pending(self._stop) for w in workers))
            finally:
                for w in workers:
                    await w.transport.aclose()
            return {w.sink.name: r for w, r in zip(workers, results, strict=True)}
