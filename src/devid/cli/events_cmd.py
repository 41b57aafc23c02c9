"""`devid events`: the registry's event outbox, the sinks it is delivered to, and delivery itself
for operators who run no server (`devid serve` delivers in the background)."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from sqlalchemy import select

from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    console,
    print_json,
    print_table,
    read_file,
    store,
)
from devid.errors import PolicyError
from devid.registry import sinks as sink_store
from devid.registry.delivery import Dispatcher, Settings
from devid.store.engine import reading
from devid.store.models import events as _events

app = typer.Typer(help="Registry events: list them, deliver them, manage their sinks.", no_args_is_help=True)
sink_app = typer.Typer(help="Where events are delivered: webhooks and MQTT brokers.", no_args_is_help=True)
app.add_typer(sink_app, name="sink")


@app.command("list")
def list_events(
    type_: Annotated[str | None, typer.Option("--type", help="only events of this type")] = None,
    after: Annotated[int, typer.Option("--after", help="only events with a larger id")] = 0,
    limit: Annotated[int, typer.Option(help="at most this many, oldest first")] = 100,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Events in the outbox, in id (delivery) order."""
    query = select(_events).where(_events.c.id > after).order_by(_events.c.id).limit(max(limit, 0))
    if type_ is not None:
        query = query.where(_events.c.type == type_)
    engine = store(home)
    with reading(engine) as conn:
        rows = [
            {"id": r.id, "at": r.at.isoformat(), "type": r.type, "subject": r.subject, "event": r.payload}
            for r in conn.execute(query)
        ]
    engine.dispose()
    if as_json:
        print_json([{**r, "event": json.loads(r["event"])} for r in rows])
        return
    print_table(["id", "at", "type", "subject"], rows)


@sink_app.command("add")
def sink_add(
    name: str,
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST each event to this URL")] = None,
    mqtt: Annotated[
        str | None, typer.Option("--mqtt", help="broker URL: mqtt://host:1883, mqtts://…")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="MQTT base topic: events go to TOPIC/<event type>")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="also deliver every event already in the outbox")
    ] = False,
    secret_file: Annotated[
        Path | None,
        typer.Option("--secret-file", help="sign webhook bodies with HMAC-SHA256 under this file's key"),
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Add a sink: a webhook (--webhook URL) or an MQTT broker (--mqtt URL --topic T). It receives
    the events emitted from now on (--from-start: all of them). Its URL and signing secret are
    stored sealed under the credential key, so this needs the CA secret (passphrase or PIN)."""
    if (webhook is None) == (mqtt is None):
        raise PolicyError("sink-kind", "give exactly one of --webhook URL or --mqtt URL")
    kind, url = ("webhook", webhook) if webhook is not None else ("mqtt", mqtt)
    assert url is not None
    secret = read_file(secret_file, "secret").strip() if secret_file is not None else None
    if secret is not None and (kind != "webhook" or len(secret) < 16):
        raise PolicyError("sink-secret", "a signing secret is for webhooks and needs at least 16 bytes")
    auth = authority(home, passphrase_file)
    try:
        sink = sink_store.add(
            auth.engine,
            name,
            kind,
            url,
            topic,
            key=auth.credentials,
            actor="cli",
            now=datetime.now(UTC),
            from_start=from_start,
            secret=secret,
        )
    finally:
        auth.engine.dispose()
    console.print(f"event sink {escape(name)} added ({kind}), after event {sink.cursor}", highlight=False)


@sink_app.command("list")
def sink_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every sink with its cursor, backlog and last error."""
    engine = store(home)
    with reading(engine) as conn:
        last = sink_store.last_event_id(conn)
        rows: list[dict[str, Any]] = [s.to_json(last) for s in sink_store.list_sinks(conn)]
    engine.dispose()
    if as_json:
        print_json(rows)
        return
    print_table(
        ["name", "kind", "url", "topic", "enabled", "cursor", "pending", "failures", "last error"], rows
    )


@sink_app.command("remove")
def sink_remove(name: str, home: HomeOpt = None) -> None:
    """Remove a sink; events it has not received are not sent anywhere on its behalf."""
    engine = store(home)
    sink_store.remove(engine, name, actor="cli", now=datetime.now(UTC))
    engine.dispose()
    console.print(f"event sink {escape(name)} removed", highlight=False)


def _enable(name: str, enabled: bool, home: Any) -> None:
    engine = store(home)
    sink_store.set_enabled(engine, name, enabled, actor="cli", now=datetime.now(UTC))
    engine.dispose()
    console.print(f"event sink {escape(name)} {'enabled' if enabled else 'disabled'}", highlight=False)


@sink_app.command("enable")
def sink_enable(name: str, home: HomeOpt = None) -> None:
    """Resume delivery to a sink where it stopped."""
    _enable(name, True, home)


@sink_app.command("disable")
def sink_disable(name: str, home: HomeOpt = None) -> None:
    """Pause delivery to a sink; it keeps its place."""
    _enable(name, False, home)


@app.command("deliver")
def deliver(
    once: Annotated[
        bool, typer.Option("--once", help="one pass over every sink, then exit (1 if any failed)")
    ] = False,
    poll_interval: Annotated[float, typer.Option(help="seconds between looks at the outbox")] = 0.5,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Deliver events to every enabled sink: until SIGTERM / Ctrl-C, or one pass with --once. The
    sinks' URLs and signing secrets are sealed, so this needs the CA secret (passphrase or PIN)."""
    auth = authority(home, passphrase_file)
    engine = auth.engine
    dispatcher = Dispatcher(engine, Settings(poll_interval=poll_interval), key=auth.credentials)
    try:
        if once:
            results = asyncio.run(dispatcher.deliver_once())
            for name, result in results.items():
                line = f"{escape(name)}: {result.delivered} delivered"
                if result.error is not None:
                    line += f", stopped: {escape(result.error)}"
                console.print(line, highlight=False)
            if any(r.error is not None for r in results.values()):
                raise typer.Exit(1)
        else:
            asyncio.run(_deliver_until_signal(dispatcher))
    finally:
        engine.dispose()


async def _deliver_until_signal(dispatcher: Dispatcher) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    console.print("delivering events (Ctrl-C stops)", highlight=False)
    await dispatcher.run()
    console.print("stopped", highlight=False)
