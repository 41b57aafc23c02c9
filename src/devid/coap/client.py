"""An EST-coaps client: one DTLS 1.2 session (pyOpenSSL, with the device's certificate) and
confirmable CoAP requests over it, block-wise both ways. The device agent
(`devid.device.coaps`) and `devid bench coaps` speak EST-coaps through it.

The server is authenticated by its chain to the trust anchors given (OpenSSL), then by name: the
host of the URL must be among the certificate's subjectAltName DNS names or IP addresses.
`sent` and `received` count the bytes of every datagram, `handshake_bytes` those of the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import time
import urllib.parse
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from devid.coap.dtls import MTU, advance, dtls_context, flush, present, read_records
from devid.coap.message import (
    Block,
    Code,
    Message,
    MessageFormatError,
    Option,
    Type,
    decode,
    dotted,
    encode_uint,
)
from devid.errors import ConfigError, DevidError

DEFAULT_PORT = 5684
#: RFC 7252 4.8: first retransmission of a confirmable message after 2 s, doubling, 4 times.
ACK_TIMEOUT = 2.0
MAX_RETRANSMIT = 4


class CoapsError(DevidError):
    """The server refused (`coap_code`, e.g. 132 for 4.04), or could not be reached (0)."""

    def __init__(self, coap_code: int, reason: str, max_age: int | None = None) -> None:
        super().__init__(f"coap-{dotted(coap_code)}" if coap_code else "coaps-unreachable", reason)
        self.coap_code = coap_code
        self.max_age = max_age


def client_context(
    trust: Sequence[x509.Certificate],
    chain: Sequence[x509.Certificate] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> SSL.Context:
    """DTLS 1.2 client trusting `trust` only, presenting `chain` (leaf first) with `key`."""
    context = dtls_context(SSL.DTLS_CLIENT_METHOD)
    store = context.get_cert_store()
    assert store is not None
    for anchor in trust:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    context.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _errno, _depth, ok: bool(ok))
    if chain and key is not None:
        present(context, chain, key)
    return context


def _address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "coaps" or not parts.hostname:
        raise ConfigError("coaps-url", f"{url!r} is not a coaps://HOST[:PORT] URL")
    return parts.hostname, parts.port or DEFAULT_PORT


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(b"")  # ICMP unreachable: wakes the reader, which gives up


class CoapsClient:
    """`async with CoapsClient(url, context) as client: await client.request(...)`."""

    def __init__(self, url: str, context: SSL.Context, *, timeout: float = 30.0, szx: int = 6) -> None:
        self.url = url
        self.host, self.port = _address(url)
        self.context = context
        self.timeout = timeout
        self.szx = szx
        self.sent = self.received = 0
        #: Bytes both ways until the handshake was over (the cookie round trip included).
        self.handshake_bytes = 0
        self._mids = itertools.count(int.from_bytes(os.urandom(2), "big"))
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _Datagrams()
        self._tls: SSL.Connection | None = None
        self._records: list[bytes] = []

    async def __aenter__(self) -> CoapsClient:
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: self._protocol, remote_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise CoapsError(0, f"cannot reach the EST-coaps server at {self.url}: {exc}") from None
        try:
            await self._handshake()
        except BaseException:
            self._transport.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._tls is not None:
            with contextlib.suppress(SSL.Error):
                self._tls.shutdown()
                flush(self._tls, self._sendto)
        if self._transport is not None:
            self._transport.close()

    def _sendto(self, data: bytes) -> None:
        assert self._transport is not None
        self.sent += len(data)
        self._transport.sendto(data)

    async def _datagram(self, timeout: float) -> bytes | None:
        try:
            data = await asyncio.wait_for(self._protocol.queue.get(), timeout)
        except TimeoutError:
            return None
        if not data:
            raise CoapsError(0, f"the EST-coaps server at {self.url} is unreachable (ICMP)")
        self.received += len(data)
        return data

    async def _handshake(self) -> None:
        connection = SSL.Connection(self.context)
        connection.set_connect_state()
        connection.set_ciphertext_mtu(MTU)
        if _ip(self.host) is None:
            connection.set_tlsext_host_name(self.host.encode())
        deadline = time.monotonic() + self.timeout
        try:
            while not advance(connection, self._sendto):
                if time.monotonic() > deadline:
                    raise CoapsError(0, f"DTLS handshake with {self.url} timed out")
                wait = connection.DTLSv1_get_timeout() or 1.0
                data = await self._datagram(wait)
                if data is not None:
                    connection.bio_write(data)
                elif connection.DTLSv1_handle_timeout():  # the flight's timer ran out: resend it
                    flush(connection, self._sendto)
        except SSL.Error as exc:
            raise CoapsError(0, f"DTLS handshake with {self.url} failed: {exc}") from None
        self._check_name(connection)
        self._tls = connection
        self.handshake_bytes = self.sent + self.received

    def _check_name(self, connection: SSL.Connection) -> None:
        leaf = connection.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            raise CoapsError(0, f"the server at {self.url} sent no certificate")
        try:
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names = x509.SubjectAlternativeName([])
        ip = _ip(self.host)
        if ip is not None:
            named = ip in names.get_values_for_type(x509.IPAddress)
        else:
            named = self.host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))
        if not named:
            raise CoapsError(0, f"the server certificate at {self.url} does not name {self.host}")

    # --- messages -------------------------------------------------------------------------------

    async def exchange(self, request: Message) -> Message:
        """Send `request` as a confirmable message and wait for its piggybacked response
        (retransmitting, RFC 7252 4.2); a separate response is acknowledged and returned."""
        assert self._tls is not None, "use `async with CoapsClient(...)`"
        wire = request.encode()
        deadline = time.monotonic() + self.timeout
        wait = ACK_TIMEOUT
        for _ in range(MAX_RETRANSMIT + 1):
            self._tls.send(wire)
            flush(self._tls, self._sendto)
            until = min(deadline, time.monotonic() + wait)
            while (left := until - time.monotonic()) > 0:
                answer = await self._message(left)
                if answer is None:
                    break
                if answer.type is Type.CON:
                    self._tls.send(Message(Type.ACK, Code.EMPTY, answer.mid).encode())
                    flush(self._tls, self._sendto)
                if answer.token == request.token and answer.code != Code.EMPTY:
                    return answer
            wait *= 2
            if time.monotonic() >= deadline:
                break
        raise CoapsError(0, f"no answer from the EST-coaps server at {self.url}")

    async def _message(self, timeout: float) -> Message | None:
        assert self._tls is not None
        while not self._records:
            data = await self._datagram(timeout)
            if data is None:
                return None
            try:
                self._tls.bio_write(data)
                self._records.extend(read_records(self._tls))
            except SSL.Error as exc:
                raise CoapsError(0, f"the DTLS session with {self.url} ended: {exc}") from None
        try:
            return decode(self._records.pop(0))
        except MessageFormatError:
            return None

    def _request(
        self, method: int, path: str, options: Sequence[tuple[int, bytes]], payload: bytes
    ) -> Message:
        segments = [(int(Option.URI_PATH), s.encode()) for s in path.strip("/").split("/")]
        return Message(
            Type.CON, method, next(self._mids) & 0xFFFF, os.urandom(4), (*segments, *options), payload
        )

    async def request(
        self,
        method: int,
        path: str,
        payload: bytes = b"",
        *,
        content_format: int | None = None,
        accept: int | None = None,
    ) -> Message:
        """The whole response to one request (bodies block-wise as needed); CoapsError for an
        error response (its diagnostic payload as the reason, Max-Age as when to retry)."""
        options: list[tuple[int, bytes]] = []
        if content_format is not None:
            options.append((Option.CONTENT_FORMAT, encode_uint(content_format)))
        if accept is not None:
            options.append((Option.ACCEPT, encode_uint(accept)))
        size = 16 << self.szx
        if len(payload) <= size:
            answer = await self.exchange(self._request(method, path, options, payload))
        else:
            for num in range((len(payload) + size - 1) // size):
                block = Block(num, (num + 1) * size < len(payload), self.szx)
                chunk = payload[block.offset : block.offset + size]
                extra = [(int(Option.BLOCK1), block.encode())]
                if num == 0:
                    extra.append((int(Option.SIZE1), encode_uint(len(payload))))
                answer = await self.exchange(self._request(method, path, [*options, *extra], chunk))
                if block.more and answer.code != Code.CONTINUE:
                    break
        body = bytearray(answer.payload)
        block2 = answer.block(Option.BLOCK2)
        while answer.code < 128 and block2 is not None and block2.more:
            following = Block(block2.num + 1, False, block2.szx)
            answer = await self.exchange(
                self._request(method, path, [*options, (int(Option.BLOCK2), following.encode())], b"")
            )
            body += answer.payload
            block2 = answer.block(Option.BLOCK2)
        if answer.code >= 128:
            raise CoapsError(
                answer.code,
                answer.payload.decode(errors="replace").strip() or dotted(answer.code),
                answer.uint(Option.MAX_AGE),
            )
        return Message(answer.type, answer.code, answer.mid, answer.token, answer.options, bytes(body))
