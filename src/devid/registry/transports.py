"""How one event leaves devid: an HTTP POST to a webhook, or an MQTT publication at QoS 1.

A transport either delivers one event or raises `DeliveryError`; it never decides what to send
next. Ordering, cursors and retries belong to the dispatcher (`devid.registry.delivery`), so the
guarantees are the same whatever the sink is.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import aiomqtt

from devid.errors import PolicyError

#: `sha256=<hex HMAC-SHA256 of the request body>`, present when the sink has a secret.
SIGNATURE_HEADER = "X-Devid-Signature-256"
EVENT_ID_HEADER = "X-Devid-Event-Id"
EVENT_TYPE_HEADER = "X-Devid-Event-Type"
MQTT_QOS = 1


class DeliveryError(Exception):
    """The event was not (known to be) delivered: the dispatcher retries it later."""


@dataclass(frozen=True)
class Outgoing:
    """One event as it is sent: its outbox id and type, and the exact JSON bytes."""

    id: int
    type: str
    body: bytes


class Transport(Protocol):
    async def send(self, event: Outgoing) -> None:
        """Deliver `event` or raise DeliveryError."""
        ...

    async def aclose(self) -> None: ...


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: receivers recompute it over the raw body they read."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def check_webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError("sink-url", f"webhook URL {url!r} is not an http:// or https:// URL")
    return url


def check_mqtt_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise PolicyError("sink-url", f"MQTT URL {url!r} is not like mqtt://host:1883 or mqtts://host:8883")
    try:
        _ = parts.port
    except ValueError:
        raise PolicyError("sink-url", f"MQTT URL {url!r} has a bad port") from None
    if parts.path not in ("", "/") or parts.query:
        raise PolicyError("sink-url", f"MQTT URL {url!r}: give the topic with --topic, not in the URL")
    return url


def check_topic(topic: str) -> str:
    """A base topic (events go to `<topic>/<event type>`) or a template containing `{type}`."""
    if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 200:
        raise PolicyError(
            "sink-topic", f"MQTT topic {topic!r}: 1-200 bytes, no wildcards (+ #); may contain {{type}}"
        )
    return topic


def topic_for(base: str, event_type: str) -> str:
    if "{type}" in base:
        return base.replace("{type}", event_type)
    return f"{base.rstrip('/')}/{event_type}"


def redact(url: str) -> str:
    """`url` without its password, for listings and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class Webhook:
    """POSTs one event per request; any 2xx is delivered, anything else (redirects included,
    which are not followed) is a failure to retry."""

    def __init__(
        self, url: str, secret: bytes | None, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self.url = url
        self.secret = secret
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))

    async def send(self, event: Outgoing) -> None:
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: str(event.id),
            EVENT_TYPE_HEADER: event.type,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, event.body)
        try:
            async with self.session.post(
                self.url, data=event.body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"HTTP {response.status} from {redact(self.url)}")
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{type(exc).__name__} to {redact(self.url)}: {exc}") from None
        except TimeoutError:
            raise DeliveryError(f"no answer from {redact(self.url)} within {self.timeout.total}s") from None

    async def aclose(self) -> None:
        """The HTTP session is the dispatcher's (one connection pool for every webhook)."""


class Mqtt:
    """Publishes each event to its topic at QoS 1 and returns once the broker's PUBACK is in: the
    broker has taken responsibility for it. One connection per sink, kept between batches and
    opened again after any error."""

    def __init__(self, url: str, topic: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.topic = topic
        self.timeout = timeout
        self._host = parts.hostname or ""
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._tls = ssl.create_default_context() if parts.scheme == "mqtts" else None
        self._client: aiomqtt.Client | None = None

    async def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                tls_context=self._tls,
                timeout=self.timeout,
            )
            await client.__aenter__()
            self._client = client
        return self._client

    async def send(self, event: Outgoing) -> None:
        try:
            client = await self._connected()
            await client.publish(topic_for(self.topic, event.type), event.body, qos=MQTT_QOS)
        except (aiomqtt.MqttError, OSError) as exc:
            await self.aclose()
            raise DeliveryError(f"MQTT {redact(self.url)}: {exc}") from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)
