"""Pushed status changes: devid's outbox events, read from an MQTT topic on the upstream broker.

MQTT messages are not signed, so an event is only a `Hint`: the gateway asks the signed status
source again at once, and only its verified answer revokes anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import aiomqtt

from devid.gateway.status import Hint

log = logging.getLogger("devid.gateway")

#: Event types that may change a certificate's status.
STATUS_EVENTS = frozenset({"certificate.revoked", "certificate.hold", "device.revoked", "device.suspended"})


def hint_of(payload: bytes) -> Hint | None:
    """The hint in one event message; None for other events and anything unreadable."""
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("type") not in STATUS_EVENTS:
        return None
    body = event.get("payload")
    body = body if isinstance(body, dict) else {}
    serial_text = body.get(
        "serial", event.get("subject") if event["type"].startswith("certificate.") else None
    )
    device = body.get("device", event.get("subject") if event["type"].startswith("device.") else None)
    ca = body.get("issuer")
    try:
        serial = int(serial_text, 16) if isinstance(serial_text, str) else None
    except ValueError:
        serial = None
    return Hint(
        serial=serial,
        device=device if isinstance(device, str) else None,
        ca=ca if isinstance(ca, str) else None,
    )


def subscription(topic: str) -> str:
    """The filter for `topic`: devid publishes under `<topic>/<type>` (or into `{type}`)."""
    if "{type}" in topic:
        return topic.replace("{type}", "+")
    if topic.endswith("#") or "+" in topic:
        return topic
    return f"{topic.rstrip('/')}/#"


async def listen(
    host: str, port: int, topic: str, on_hint: Callable[[Hint], Awaitable[None]], *, retry: float = 2.0
) -> None:
    """Subscribe to `topic` on the broker and pass each status event's hint on; reconnect forever."""
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier=None, timeout=10) as client:
                await client.subscribe(subscription(topic), qos=1)
                log.info("events: subscribed to %s on %s:%d", subscription(topic), host, port)
                async for message in client.messages:
                    hint = hint_of(
                        bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                    )
                    if hint is not None:
                        log.info("events: %s: refreshing status", hint)
                        await on_hint(hint)
        except aiomqtt.MqttError as exc:
            log.warning("events: broker %s:%d: %s; retrying in %.0f s", host, port, exc, retry)
            await asyncio.sleep(retry)
