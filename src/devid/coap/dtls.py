"""DTLS 1.2 for EST-coaps: the server side of each peer's session over one UDP socket (OpenSSL
through pyOpenSSL, driven over memory BIOs: datagrams in, records out).

A peer costs nothing until it proves it owns its address: the first ClientHello of an address is
answered with a HelloVerifyRequest carrying a stateless cookie (RFC 6347 4.2.1: an HMAC of the
address under a per-process secret, `DTLSv1_listen`) and forgotten, so a spoofed source never
receives more than it sent and leaves no state. Only a ClientHello with a valid cookie makes a
session, and sessions are bounded (`DtlsLimits.max_sessions`), each given `handshake_timeout` to
finish its handshake and dropped after `idle_timeout` without a datagram. Anything else from an
address without a session (garbage, stray records) is dropped.

Client certificates are asked for, not required, and OpenSSL checks only the handshake's proof of
possession (CertificateVerify), not whom the certificate names: like the HTTPS server, every use
of the certificate goes through devid's one credential check (`devid.authority.credentials`),
which verifies the chain, the times by the authority's clock, the store record and its status,
and refuses with a reason instead of a dropped handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from devid.errors import ConfigError, KeyAccessError
from devid.pki.encoding import cert_der, load_certificates

log = logging.getLogger("devid.coap")

#: Largest datagram read or record written (a DTLS record carries at most 16 KiB of plaintext).
MAX_DATAGRAM = 65_535
#: Largest datagram sent: records are packed into datagrams up to this size (IPv6's minimum MTU
#: of 1280 less the IP and UDP headers), and OpenSSL fragments handshake messages to fit.
MTU = 1232
DTLS_1_2 = 0xFEFD
#: AEAD suites with ECDHE only; AES-128-CCM-8 is RFC 7925's mandatory suite for constrained devices.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE-ECDSA-AES128-CCM8"
_HANDSHAKE, _CLIENT_HELLO = 22, 1


@dataclass(frozen=True)
class DtlsIdentity:
    """The server's certificate chain (leaf first) and its private key."""

    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, passphrase: bytes | None) -> DtlsIdentity:
        """From the HTTPS server's own files (`devid.server.tls`): the key clear or encrypted
        with the devid passphrase."""
        try:
            certs = load_certificates(cert_file.read_bytes())
            pem = key_file.read_bytes()
        except OSError as exc:
            raise ConfigError("tls-files", f"cannot read TLS certificate or key: {exc}") from None
        for password in (passphrase, None) if passphrase else (None,):
            with contextlib.suppress(ValueError, TypeError):
                key = serialization.load_pem_private_key(pem, password=password)
                if isinstance(key, ec.EllipticCurvePrivateKey) and certs:
                    return cls(tuple(certs), key)
        raise KeyAccessError("tls-key", f"cannot open the TLS key {key_file} (EC) with {cert_file} for DTLS")


@dataclass(frozen=True)
class DtlsLimits:
    max_sessions: int = 1024
    #: Seconds a peer whose cookie was valid has to finish its handshake.
    handshake_timeout: float = 10.0
    #: Seconds a session lives without a datagram from its peer.
    idle_timeout: float = 60.0


class Endpoint(Protocol):
    """What runs inside one peer's DTLS session (the CoAP endpoint)."""

    def received(self, data: bytes) -> None:
        """One record's plaintext from the peer."""

    def sweep(self, now: float) -> None:
        """Forget what has waited too long (called about once a second)."""

    def closed(self) -> None:
        """The session is gone."""


def present(context: SSL.Context, chain: Sequence[x509.Certificate], key: ec.EllipticCurvePrivateKey) -> None:
    """Have `context` present `chain` (leaf first) and sign its handshakes with `key`."""
    context.use_certificate(chain[0])
    for cert in chain[1:]:
        context.add_extra_chain_cert(cert)
    context.use_privatekey(key)


def dtls_context(method: int) -> SSL.Context:
    """DTLS 1.2 only, AEAD ECDHE suites, no MTU queries (the BIOs are memory)."""
    context = SSL.Context(method)
    context.set_min_proto_version(DTLS_1_2)
    context.set_max_proto_version(DTLS_1_2)
    context.set_cipher_list(CIPHERS.encode())
    context.set_options(SSL.OP_NO_QUERY_MTU)
    return context


def server_context(identity: DtlsIdentity) -> SSL.Context:
    """The server's chain; client certificates asked for and accepted whatever their chain (the
    application checks them, see the module doc); stateless cookies keyed by a random secret."""
    context = dtls_context(SSL.DTLS_SERVER_METHOD)
    present(context, identity.chain, identity.key)
    context.set_verify(SSL.VERIFY_PEER, lambda *_: True)
    secret = os.urandom(32)

    def cookie(connection: SSL.Connection) -> bytes:
        return hmac.new(secret, cast(bytes, connection.get_app_data()), hashlib.sha256).digest()[:16]

    context.set_cookie_generate_callback(cookie)
    context.set_cookie_verify_callback(lambda conn, given: hmac.compare_digest(cookie(conn), given))
    return context


def is_client_hello(data: bytes) -> bool:
    """A DTLS record of epoch 0 holding (the start of) a ClientHello: all a new peer may send."""
    return (
        len(data) >= 25
        and data[0] == _HANDSHAKE
        and data[1] == 0xFE
        and data[3:5] == b"\0\0"
        and data[13] == _CLIENT_HELLO
    )


def records(data: bytes) -> Iterator[bytes]:
    """The DTLS records in what OpenSSL wrote (13-byte header, length in its last two bytes)."""
    while len(data) >= 13:
        end = 13 + int.from_bytes(data[11:13], "big")
        yield data[:end]
        data = data[end:]


def flush(connection: SSL.Connection, send: Callable[[bytes], None]) -> None:
    """Send what OpenSSL wrote, its records packed into datagrams of at most `MTU` bytes."""
    try:
        written = connection.bio_read(MAX_DATAGRAM)
    except SSL.WantReadError:
        return
    datagram = b""
    for record in records(written):
        if datagram and len(datagram) + len(record) > MTU:
            send(datagram)
            datagram = b""
        datagram += record
    if datagram:
        send(datagram)


def advance(connection: SSL.Connection, send: Callable[[bytes], None]) -> bool:
    """Run the handshake as far as the data in hand allows; True once it is over."""
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        flush(connection, send)
        return False
    flush(connection, send)
    return True


def read_records(connection: SSL.Connection) -> list[bytes]:
    """The application records the data fed in holds (one CoAP message each)."""
    out: list[bytes] = []
    while True:
        try:
            out.append(connection.recv(MAX_DATAGRAM))
        except SSL.WantReadError:
            return out


class DtlsSession:
    """One peer's DTLS session; `send` encrypts a record to it."""

    def __init__(self, server: DtlsServer, address: tuple[str, int], connection: SSL.Connection) -> None:
        self.server = server
        self.address = address
        self.connection = connection
        self.started = self.seen = server.clock()
        self.established = False
        self.endpoint: Endpoint | None = None

    @property
    def host(self) -> str:
        return self.address[0]

    def peer_certificate(self) -> bytes | None:
        """DER of the client's certificate, None when it sent none."""
        cert = self.connection.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert_der(cert)

    def peer_chain(self) -> tuple[bytes, ...]:
        """DER of the certificates the client sent, leaf first (a hint: every link of a chain to
        a manufacturer CA is verified by the registry before it is used)."""
        leaf = self.peer_certificate()
        if leaf is None:
            return ()
        # On the server's side, OpenSSL's peer chain holds what came after the leaf.
        rest = self.connection.get_peer_cert_chain(as_cryptography=True) or []
        return (leaf, *(der for der in map(cert_der, rest) if der != leaf))

    def send(self, plaintext: bytes) -> None:
        if self.server.sessions.get(self.address) is not self:
            return  # closed meanwhile (an answer computed for a peer that went away)
        self.connection.send(plaintext)
        flush(self.connection, self._sendto)

    def _sendto(self, data: bytes) -> None:
        self.server.sendto(data, self.address)


class DtlsServer(asyncio.DatagramProtocol):
    """DTLS sessions over one UDP socket; `endpoint(session)` makes what serves each one."""

    def __init__(
        self,
        context: SSL.Context,
        endpoint: Callable[[DtlsSession], Endpoint],
        limits: DtlsLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.context = context
        self.endpoint = endpoint
        self.limits = limits or DtlsLimits()
        self.clock = clock
        self.sessions: dict[tuple[str, int], DtlsSession] = {}
        #: What happened to datagrams that made no session (for logs, metrics and tests).
        self.stats: Counter[str] = Counter()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        address = (str(addr[0]), int(addr[1]))
        session = self.sessions.get(address)
        if session is None or (session.established and is_client_hello(data)):
            # A new peer, or (RFC 6347 4.2.8) a new connection from an address that had one.
            self._hello(address, data)
            return
        session.seen = self.clock()
        try:
            session.connection.bio_write(data)
            if not session.established:
                if not advance(session.connection, session._sendto):
                    return
                session.established = True
                session.endpoint = self.endpoint(session)
            for record in read_records(session.connection):
                session.endpoint.received(record)  # type: ignore[union-attr]
        except SSL.Error as exc:
            flush(session.connection, session._sendto)  # an alert, if OpenSSL wrote one
            self._close(session, f"DTLS session ended: {exc}")

    def _hello(self, address: tuple[str, int], data: bytes) -> None:
        if not is_client_hello(data):
            self.stats["dropped"] += 1
            return
        connection = SSL.Connection(self.context)
        connection.set_app_data(f"{address[0]}:{address[1]}".encode())
        connection.set_accept_state()
        connection.set_ciphertext_mtu(MTU)
        send = lambda out: self.sendto(out, address)  # noqa: E731
        try:
            connection.bio_write(data)
            connection.DTLSv1_listen()
        except SSL.WantReadError:  # no valid cookie: a HelloVerifyRequest was written, or nothing
            flush(connection, send)
            self.stats["hello-verify"] += 1
            return
        except SSL.Error as exc:
            self.stats["handshake-failed"] += 1
            log.info("DTLS ClientHello from %s refused: %s", address[0], exc)
            return
        old = self.sessions.get(address)
        if old is not None:
            self._close(old, "a new connection from its address")
        if len(self.sessions) >= self.limits.max_sessions:
            self.stats["refused-full"] += 1
            log.warning("DTLS session from %s refused: %d sessions open", address[0], len(self.sessions))
            return
        session = DtlsSession(self, address, connection)
        self.sessions[address] = session
        try:
            advance(connection, session._sendto)
        except SSL.Error as exc:
            self.stats["handshake-failed"] += 1
            self._close(session, f"handshake failed: {exc}")

    def _close(self, session: DtlsSession, why: str) -> None:
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]
        log.debug("DTLS session of %s closed: %s", session.address[0], why)
        if session.endpoint is not None:
            session.endpoint.closed()

    def sweep(self) -> None:
        """Drop sessions past their handshake or idle deadline, retransmit handshake flights
        whose timer ran out, let endpoints expire their state."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if not session.established and now - session.started > self.limits.handshake_timeout:
                self.stats["handshake-timeout"] += 1
                self._close(session, "handshake not finished in time")
            elif now - session.seen > self.limits.idle_timeout:
                self._close(session, "idle")
            elif not session.established:
                with contextlib.suppress(SSL.Error):
                    if session.connection.DTLSv1_handle_timeout():
                        flush(session.connection, session._sendto)
            elif session.endpoint is not None:
                session.endpoint.sweep(now)

    def close(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(SSL.Error):
                session.connection.shutdown()
                flush(session.connection, session._sendto)
            self._close(session, "server stopping")
        if self.transport is not None:
            self.transport.close()
