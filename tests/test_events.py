"""Registry event delivery against real peers: an aiohttp webhook receiver on loopback, a Mosquitto
broker, the store on SQLite and PostgreSQL, the `devid` script and `devid serve` as subprocesses."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from e2e import devid, devid_many, ok
from event_peers import Broker, Receiver, broker, receiver
from sqlalchemy import Engine, select

from devid.authority.credential_key import CredentialKey
from devid.authority.setup import init_home, open_authority
from devid.config import Home
from devid.registry import generation, sinks
from devid.registry.delivery import Backoff, Dispatcher, Settings, outgoing
from devid.registry.transports import SIGNATURE_HEADER, Webhook
from devid.store.engine import make_engine
from devid.store.models import audit_events, event_sinks
from devid.store.models import events as events_table
from devid.store.outbox import emit

__all__ = ["broker", "receiver"]  # fixtures, imported for pytest

PASSPHRASE = b"correct horse battery staple"
FAST = Settings(poll_interval=0.1, backoff=Backoff(base=0.05, cap=0.2), webhook_timeout=5.0)


@pytest.fixture
def engine(home: Home) -> Iterator[Engine]:
    """The store of a fresh home, on SQLite and on PostgreSQL."""
    eng = make_engine(home.config.db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> CredentialKey:
    """The credential key of the test's home (sinks are sealed under it)."""
    on_sqlite = {"sqlite_engine", "sqlite_home"} & set(request.fixturenames)
    home: Home = request.getfixturevalue("sqlite_home" if on_sqlite else "home")
    authority = open_authority(home, PASSPHRASE)
    authority.engine.dispose()
    return authority.credentials


@pytest.fixture
def sqlite_engine(sqlite_home: Home) -> Iterator[Engine]:
    eng = make_engine(sqlite_home.config.db_url)
    yield eng
    eng.dispose()


def now() -> datetime:
    return datetime.now(UTC)


def emit_all(engine: Engine, *subjects: str, type_: str = "device.state") -> list[int]:
    """One committed transaction emitting one event per subject; returns their ids."""
    with engine.begin() as conn:
        before = sinks.last_event_id(conn)
        for subject in subjects:
            emit(conn, now(), type_, subject, {"to": "ACTIVE", "n": subject})
        rows = conn.execute(
            select(events_table.c.id).where(events_table.c.id > before).order_by(events_table.c.id)
        )
        return [int(r[0]) for r in rows]


def add_webhook(engine: Engine, key: CredentialKey, url: str, name: str = "hook") -> sinks.Sink:
    return sinks.add(engine, name, "webhook", url, None, key=key, actor="test", now=now())


def sink_row(engine: Engine, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(event_sinks).where(event_sinks.c.name == name)).one()


async def run_until(dispatcher: Dispatcher, done: Any, timeout: float = 20.0) -> None:
    """Run the dispatcher in the background until `done()` is true (checked off the loop)."""
    task = asyncio.create_task(dispatcher.run())
    try:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(done):
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "delivery did not finish in time"
            await asyncio.sleep(0.05)
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 10)


def test_webhook_receives_every_event_in_order(
    engine: Engine, receiver: Receiver, key: CredentialKey
) -> None:
    add_webhook(engine, key, receiver.url)
    ids = emit_all(engine, "SN1", "SN2", "SN3")
    ids += emit_all(engine, *(f"SN{i}" for i in range(4, 31)))
    ids += emit_all(engine, "SN31", type_="device.registered")

    results = asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())

    assert results["hook"].delivered == 31 and results["hook"].error is None
    got = receiver.wait_for(31)
    assert [e["id"] for e in got] == ids == sorted(ids)
    assert [e["subject"] for e in got] == [f"SN{i}" for i in range(1, 32)]
    assert got[0]["type"] == "device.state" and got[0]["to"] == "ACTIVE" and got[0]["n"] == "SN1"
    assert got[-1]["type"] == "device.registered"
    first = receiver.requests[0]
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["X-Devid-Event-Id"] == str(ids[0])
    assert first.headers["X-Devid-Event-Type"] == "device.state"
    assert SIGNATURE_HEADER not in first.headers  # this sink has no secret
    row = sink_row(engine, "hook")
    assert (row.cursor, row.failures, row.last_error) == (ids[-1], 0, None)

    # Caught up: a second pass sends nothing again.
    again = asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())
    assert again["hook"].delivered == 0 and len(receiver.requests) == 31


def test_events_of_a_rolled_back_transaction_are_never_delivered(
    engine: Engine, receiver: Receiver, key: CredentialKey
) -> None:
    add_webhook(engine, key, receiver.url)
    emit_all(engine, "kept-1")
    with pytest.raises(RuntimeError), engine.begin() as conn:
        emit(conn, now(), "device.state", "rolled-back", {"to": "REVOKED"})
        raise RuntimeError("the change failed after emitting")
    emit_all(engine, "kept-2")

    asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())

    assert [e["subject"] for e in receiver.wait_for(2)] == ["kept-1", "kept-2"]
    time.sleep(0.3)
    assert len(receiver.events) == 2
    with engine.connect() as conn:
        subjects = conn.execute(select(events_table.c.subject)).scalars().all()
    assert "rolled-back" not in subjects


def test_a_failing_webhook_gets_everything_in_order_once_it_recovers(
    sqlite_engine: Engine, receiver: Receiver, key: CredentialKey
) -> None:
    engine = sqlite_engine
    add_webhook(engine, key, receiver.url)
    receiver.script = [500, 500, 500]
    ids = emit_all(engine, *(f"A{i}" for i in range(10)))

    # One pass: the first event is refused, nothing moves, the failure is recorded.
    first = asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())
    assert first["hook"].delivered == 0 and "HTTP 500" in (first["hook"].error or "")
    row = sink_row(engine, "hook")
    assert row.cursor < ids[0] and row.failures == 1 and "HTTP 500" in row.last_error

    async def scenario() -> None:
        dispatcher = Dispatcher(engine, FAST, key=key)
        await run_until(dispatcher, lambda: len(receiver.events) >= 10)
        # A second outage in the middle of a stream: the event refused is sent again, then the rest.
        receiver.script = [503, 500]
        more = await asyncio.to_thread(emit_all, engine, *(f"B{i}" for i in range(10)))
        ids.extend(more)
        await run_until(Dispatcher(engine, FAST, key=key), lambda: len(receiver.events) >= 20)

    asyncio.run(scenario())

    got = receiver.wait_for(20)
    assert [e["id"] for e in got] == ids  # everything, in order, nothing twice
    assert [r.status for r in receiver.requests].count(500) == 3 + 1
    assert [r.status for r in receiver.requests].count(503) == 1
    row = sink_row(engine, "hook")
    assert (row.cursor, row.failures, row.last_error) == (ids[-1], 0, None)


def test_mqtt_sink_publishes_each_event_as_json_at_qos1(
    sqlite_engine: Engine, broker: Broker, key: CredentialKey
) -> None:
    engine = sqlite_engine
    base = f"devid-test/{uuid.uuid4().hex}"
    sinks.add(engine, "broker", "mqtt", broker.url, base, key=key, actor="test", now=now())

    async def scenario() -> list[aiomqtt.Message]:
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(f"{base}/#", qos=1)
            ids = await asyncio.to_thread(emit_all, engine, "SN-M1", type_="device.registered")
            ids += await asyncio.to_thread(emit_all, engine, "SN-M1", "SN-M2")
            results = await Dispatcher(engine, FAST, key=key).deliver_once()
            assert results["broker"].delivered == 3 and results["broker"].error is None
            got: list[aiomqtt.Message] = []
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    got.append(message)
                    if len(got) == 3:
                        break
            assert [json.loads(bytes(m.payload))["id"] for m in got] == ids
            return got

    got = asyncio.run(scenario())
    assert [str(m.topic) for m in got] == [
        f"{base}/device.registered",
        f"{base}/device.state",
        f"{base}/device.state",
    ]
    assert all(m.qos == 1 for m in got)
    body = json.loads(bytes(got[0].payload))
    assert body["type"] == "device.registered" and body["subject"] == "SN-M1" and body["to"] == "ACTIVE"
    assert sink_row(engine, "broker").failures == 0


def test_a_slow_webhook_does_not_hold_back_an_mqtt_sink(
    sqlite_engine: Engine, receiver: Receiver, broker: Broker, key: CredentialKey
) -> None:
    engine = sqlite_engine
    receiver.delay = 30.0  # answers long after the dispatcher's webhook timeout
    add_webhook(engine, key, receiver.url, "slow-hook")
    sinks.add(
        engine, "dead-hook", "webhook", "http://127.0.0.1:9/none", None, key=key, actor="test", now=now()
    )
    base = f"devid-test/{uuid.uuid4().hex}"
    sinks.add(engine, "broker", "mqtt", broker.url, base, key=key, actor="test", now=now())
    settings = Settings(poll_interval=0.1, backoff=Backoff(base=0.05, cap=0.2), webhook_timeout=20.0)

    async def scenario() -> list[int]:
        async with aiomqtt.Client(broker.host, broker.port) as sub:
            await sub.subscribe(f"{base}/#", qos=1)
            dispatcher = Dispatcher(engine, settings, key=key)
            task = asyncio.create_task(dispatcher.run())
            ids: list[int] = []
            for batch in range(5):
                ids += await asyncio.to_thread(emit_all, engine, *(f"S{batch}-{i}" for i in range(4)))
            got: list[int] = []
            started = time.monotonic()
            async with asyncio.timeout(15):
                async for message in sub.messages:
                    got.append(json.loads(bytes(message.payload))["id"])
                    if len(got) == len(ids):
                        break
            assert time.monotonic() - started < 15
            assert got == ids
            # Meanwhile the slow webhook has not confirmed its first event.
            assert receiver.events == [] and sink_row(engine, "slow-hook").cursor < ids[0]
            dispatcher.stop()
            await asyncio.wait_for(task, 10)  # stops promptly, the slow request abandoned
            return ids

    asyncio.run(scenario())
    dead = sink_row(engine, "dead-hook")
    assert dead.failures >= 1 and "127.0.0.1:9" in dead.last_error


def test_a_commit_in_this_process_wakes_the_dispatcher(
    sqlite_engine: Engine, receiver: Receiver, key: CredentialKey
) -> None:
    engine = sqlite_engine
    add_webhook(engine, key, receiver.url)
    slow_poll = Settings(poll_interval=60.0)

    async def scenario() -> float:
        dispatcher = Dispatcher(engine, slow_poll, key=key)
        task = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.to_thread(emit_all, engine, "first")
            await asyncio.to_thread(receiver.wait_for, 1)
            await asyncio.sleep(0.5)  # the worker is now in its 60 s wait
            started = time.monotonic()
            await asyncio.to_thread(emit_all, engine, "second")
            await asyncio.to_thread(receiver.wait_for, 2, 10.0)
            return time.monotonic() - started
        finally:
            dispatcher.stop()
            await asyncio.wait_for(task, 10)

    assert asyncio.run(scenario()) < 10
    assert [e["subject"] for e in receiver.events] == ["first", "second"]


def test_postgresql_event_ids_commit_in_order(pg_url: str, tmp_path: Path, receiver: Receiver) -> None:
    """Two transactions emitting at once: the later id cannot commit (and be delivered, moving the
    cursor past it) before the earlier one, which would then be skipped."""
    home = init_home(tmp_path / "pg", org="Test Org", passphrase=PASSPHRASE, db_url=pg_url)
    engine = make_engine(home.config.db_url)
    authority = open_authority(home, PASSPHRASE)
    authority.engine.dispose()
    key = authority.credentials
    try:
        add_webhook(engine, key, receiver.url)
        first = engine.connect()
        tx = first.begin()
        emit(first, now(), "device.state", "earlier", {})
        later_done = threading.Event()

        def later() -> None:
            with engine.begin() as conn:
                emit(conn, now(), "device.state", "later", {})
            later_done.set()

        thread = threading.Thread(target=later)
        thread.start()
        assert not later_done.wait(0.5), "the second emitting transaction did not wait for the first"
        assert asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())["hook"].delivered == 0
        tx.commit()
        first.close()
        thread.join(10)
        assert later_done.is_set()
        asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())
        assert [e["subject"] for e in receiver.wait_for(2)] == ["earlier", "later"]
    finally:
        engine.dispose()


def test_webhook_signature_is_hmac_sha256_of_the_body(receiver: Receiver) -> None:
    secret = b"s3cret-for-the-receiver"
    event = outgoing(7, "device.registered", json.dumps({"type": "device.registered", "subject": "SN7"}))

    async def send() -> None:
        async with aiohttp.ClientSession() as session:
            await Webhook(receiver.url, secret, session, 5.0).send(event)

    asyncio.run(send())
    request = receiver.requests[0]
    expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] == expected
    assert json.loads(request.body) == {"id": 7, "type": "device.registered", "subject": "SN7"}


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    backoff, rng = Backoff(base=1.0, cap=60.0), random.Random(4)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)]:
        delays = {backoff.delay(failures, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered, not a fixed schedule


def test_sink_changes_are_audited_and_bump_the_generation(engine: Engine, key: CredentialKey) -> None:
    with engine.connect() as conn:
        before = generation.current(conn)
    sinks.add(
        engine, "hook", "webhook", "https://user:pw@hooks.example/x", None, key=key, actor="ops", now=now()
    )
    sinks.set_enabled(engine, "hook", False, actor="ops", now=now())
    sinks.remove(engine, "hook", actor="ops", now=now())
    with engine.connect() as conn:
        assert generation.current(conn) == before + 3
        audit = conn.execute(
            select(audit_events.c.action, audit_events.c.actor, audit_events.c.detail).where(
                audit_events.c.subject == "hook"
            )
        ).all()
    assert [(a.action, a.actor) for a in audit] == [
        ("event-sink.add", "ops"),
        ("event-sink.disable", "ops"),
        ("event-sink.remove", "ops"),
    ]
    assert "pw" not in audit[0].detail and "***" in audit[0].detail  # the password is not logged


def test_events_cli(sqlite_home: Home, receiver: Receiver, broker: Broker) -> None:
    home = sqlite_home.path
    engine = make_engine(sqlite_home.config.db_url)
    try:
        emit_all(engine, "before-sink")
        ok(devid("events", "sink", "add", "hook", "--webhook", receiver.url, "--home", home))
        ok(devid("events", "sink", "add", "mq", "--mqtt", broker.url, "--topic", "t/{type}", "--home", home))
        refused = devid_many(
            [
                ("events", "sink", "add", "x", "--webhook", "ftp://h/x", "--home", str(home)),
                ("events", "sink", "add", "x", "--mqtt", broker.url, "--home", str(home)),
                (
                    "events",
                    "sink",
                    "add",
                    "x",
                    "--webhook",
                    receiver.url,
                    "--mqtt",
                    broker.url,
                    "--home",
                    str(home),
                ),
                ("events", "sink", "add", "hook", "--webhook", receiver.url, "--home", str(home)),
                ("events", "sink", "add", "y", "--mqtt", broker.url, "--topic", "a/#", "--home", str(home)),
                ("events", "sink", "remove", "nope", "--home", str(home)),
            ]
        )
        for result, reason in zip(
            refused,
            ["sink-url", "sink-topic", "sink-kind", "sink-exists", "sink-topic", "unknown-sink"],
            strict=True,
        ):
            assert result.returncode == 2 and reason in result.stderr, result.stderr

        ids = emit_all(engine, "after-1", "after-2", type_="device.registered")
        delivered = ok(devid("events", "deliver", "--once", "--home", home))
        assert "hook: 2 delivered" in delivered.stdout and "mq: 2 delivered" in delivered.stdout
        assert [e["subject"] for e in receiver.wait_for(2)] == ["after-1", "after-2"]

        listed = [
            json.loads(line)
            for line in ok(devid("events", "sink", "list", "--json", "--home", home)).stdout.splitlines()
        ]
        assert [(s["name"], s["kind"], s["cursor"], s["pending"]) for s in listed] == [
            ("hook", "webhook", ids[-1], 0),
            ("mq", "mqtt", ids[-1], 0),
        ]
        events = [
            json.loads(line)
            for line in ok(
                devid(
                    "events",
                    "list",
                    "--type",
                    "device.registered",
                    "--after",
                    str(ids[0] - 1),
                    "--json",
                    "--home",
                    home,
                )
            ).stdout.splitlines()
        ]
        assert [(e["id"], e["subject"], e["event"]["type"]) for e in events] == [
            (ids[0], "after-1", "device.registered"),
            (ids[1], "after-2", "device.registered"),
        ]
        ok(devid("events", "sink", "disable", "hook", "--home", home))
        emit_all(engine, "while-disabled")
        assert "hook" not in ok(devid("events", "deliver", "--once", "--home", home)).stdout
        ok(devid("events", "sink", "enable", "hook", "--home", home))
        ok(devid("events", "deliver", "--once", "--home", home))
        assert receiver.wait_for(3)[-1]["subject"] == "while-disabled"
        ok(devid("events", "sink", "remove", "mq", "--home", home))
        ok(devid("audit", "verify", "--home", home))  # the sink changes are in an unbroken chain
    finally:
        engine.dispose()


def test_devid_serve_delivers_in_the_background_and_stops_cleanly(
    sqlite_home: Home, receiver: Receiver, key: CredentialKey
) -> None:
    from test_serve import rest_of_output, start_serve

    engine = make_engine(sqlite_home.config.db_url)
    try:
        add_webhook(engine, key, receiver.url)
        served = start_serve(sqlite_home.path)
        try:
            ids = emit_all(engine, "served-1", "served-2")  # another process: found by polling
            assert [e["id"] for e in receiver.wait_for(2)] == ids
            assert served.stop() == 0
            assert "stopped" in rest_of_output(served)
        finally:
            if served.proc.poll() is None:
                served.proc.kill()
                served.proc.wait()
    finally:
        engine.dispose()


def test_a_sink_with_a_secret_signs_each_body_from_the_store(
    engine: Engine, receiver: Receiver, key: CredentialKey
) -> None:
    secret = b"a-shared-secret-of-the-receiver"
    sinks.add(
        engine, "signed", "webhook", receiver.url, None, key=key, actor="test", now=now(), secret=secret
    )
    emit_all(engine, "SN1", "SN2")
    asyncio.run(Dispatcher(engine, FAST, key=key).deliver_once())
    got = receiver.wait_for(2)
    assert len(got) == 2
    for request in receiver.requests:
        expected = "sha256=" + hmac.new(secret, request.body, hashlib.sha256).hexdigest()
        assert request.headers[SIGNATURE_HEADER] == expected
