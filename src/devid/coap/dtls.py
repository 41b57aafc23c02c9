"""DTLS 1.2 for EST-coaps: the server side of each peer's session over one UDP socket (Mbed TLS
through python-mbedtls, driven sans-I/O: datagrams in, records out).

A peer costs nothing until it proves it owns its address: the first ClientHello of an address is
answered with a HelloVerifyRequest carrying a stateless cookie (RFC 6347 4.2.1) and forgotten,
so a spoofed source never receives more than it sent and leaves no state. Only a ClientHello
with a valid cookie makes a session, and sessions are bounded (`DtlsLimits.max_sessions`), each
given `handshake_timeout` to finish its handshake and dropped after `idle_timeout` without a
datagram. Anything else from an address without a session (garbage, stray records) is dropped.

Client certificates are asked for but not required, and Mbed TLS checks only the handshake's
proof of possession (CertificateVerify) and records, not whom the certificate names: like the
HTTPS server, every use of the certificate goes through devid's one credential check
(`devid.authority.credentials`), which verifies the chain, the times by the authority's clock,
the store record and its status, and refuses with a reason instead of a dropped handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mbedtls import exceptions as mbedtls_errors
from mbedtls import pk, tls
from mbedtls import x509 as mbedtls_x509

from devid.errors import ConfigError, KeyAccessError
from devid.pki.encoding import cert_der, load_certificates

log = logging.getLogger("devid.coap")

#: Largest datagram read or record written (a DTLS record carries at most 16 KiB of plaintext).
MAX_DATAGRAM = 65_535
_HANDSHAKE, _CLIENT_HELLO = 22, 1


@dataclass(frozen=True)
class DtlsIdentity:
    """The server's certificate chain (DER, leaf first) and its private key (PKCS#8 DER)."""

    chain: tuple[bytes, ...]
    key: bytes

    @classmethod
    def load(cls, cert_file: Path, key_file: Path, passphrase: bytes | None) -> DtlsIdentity:
        """From the HTTPS server's own files (`devid.server.tls`): the key clear or encrypted
        with the devid passphrase."""
        try:
            certs = load_certificates(cert_file.read_bytes())
            pem = key_file.read_bytes()
        except OSError as exc:
            raise ConfigError("tls-files", f"cannot read TLS certificate or key: {exc}") from None
        key = None
        for password in (passphrase, None) if passphrase else (None,):
            with contextlib.suppress(ValueError, TypeError):
                key = serialization.load_pem_private_key(pem, password=password)
                break
        if key is None:
            raise KeyAccessError("tls-key", f"cannot open the TLS key {key_file} for DTLS")
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(tuple(cert_der(c) for c in certs), der)


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


def server_context(identity: DtlsIdentity, trust: Sequence[x509.Certificate]) -> tls.ServerContext:
    """DTLS 1.2 only, the server's chain, client certificates asked for (`trust` names the CAs)."""
    store = tls.TrustStore([mbedtls_x509.CRT.from_DER(cert_der(c)) for c in trust])
    chain = tuple(mbedtls_x509.CRT.from_DER(der) for der in identity.chain)
    configuration = tls.DTLSConfiguration(
        validate_certificates=False,  # OPTIONAL: the application checks (see the module doc)
        certificate_chain=(chain, pk.ECC.from_DER(identity.key)),
        trust_store=store,
        lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        highest_supported_version=tls.DTLSVersion.DTLSv1_2,
    )
    return tls.ServerContext(configuration)


def is_client_hello(data: bytes) -> bool:
    """A DTLS record of epoch 0 holding (the start of) a ClientHello: all a new peer may send."""
    return (
        len(data) >= 25
        and data[0] == _HANDSHAKE
        and data[1] == 0xFE
        and data[3:5] == b"\0\0"
        and data[13] == _CLIENT_HELLO
    )


def flush(buffer: tls.TLSWrappedBuffer, send: Callable[[bytes], None]) -> None:
    """Send what Mbed TLS wrote (records, coalesced into datagrams)."""
    while out := buffer.peek_outgoing(MAX_DATAGRAM):
        buffer.consume_outgoing(len(out))
        send(out)


def advance(buffer: tls.TLSWrappedBuffer, send: Callable[[bytes], None]) -> bool:
    """Run the handshake as far as the data in hand allows; True once it is over."""
    while buffer._handshake_state.name != "HANDSHAKE_OVER":
        try:
            buffer.do_handshake()
        except tls.WantWriteError:
            flush(buffer, send)
        except tls.WantReadError:
            flush(buffer, send)
            return False
    flush(buffer, send)
    return True


def read_records(buffer: tls.TLSWrappedBuffer) -> list[bytes]:
    """The application records the data fed in holds (one CoAP message each)."""
    records: list[bytes] = []
    space = bytearray(MAX_DATAGRAM)
    while True:
        try:
            size = buffer.readinto(space, len(space))  # type: ignore[arg-type]  # any writable buffer
        except tls.WantReadError:
            return records
        records.append(bytes(space[:size]))


class DtlsSession:
    """One peer's DTLS session; `send` encrypts a record to it."""

    def __init__(self, server: DtlsServer, address: tuple[str, int], buffer: tls.TLSWrappedBuffer) -> None:
        self.server = server
        self.address = address
        self.buffer = buffer
        self.started = self.seen = server.clock()
        self.established = False
        self.endpoint: Endpoint | None = None

    @property
    def host(self) -> str:
        return self.address[0]

    def peer_certificate(self) -> bytes | None:
        """DER of the client's certificate, None when it sent none."""
        der = self.buffer.getpeercert(binary_form=True)
        return bytes(der) if der else None

    def send(self, plaintext: bytes) -> None:
        if self.server.sessions.get(self.address) is not self:
            return  # closed meanwhile (an answer computed for a peer that went away)
        self.buffer.write(plaintext)
        flush(self.buffer, self._sendto)

    def _sendto(self, data: bytes) -> None:
        self.server.sendto(data, self.address)


class DtlsServer(asyncio.DatagramProtocol):
    """DTLS sessions over one UDP socket; `endpoint(session)` makes what serves each one."""

    def __init__(
        self,
        context: tls.ServerContext,
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
            session.buffer.receive_from_network(data)
            if not session.established:
                if not advance(session.buffer, session._sendto):
                    return
                session.established = True
                session.endpoint = self.endpoint(session)
            for record in read_records(session.buffer):
                session.endpoint.received(record)  # type: ignore[union-attr]
        except (mbedtls_errors.TLSError, tls.RaggedEOF) as exc:
            self._close(session, f"DTLS session ended: {exc}")

    def _hello(self, address: tuple[str, int], data: bytes) -> None:
        if not is_client_hello(data):
            self.stats["dropped"] += 1
            return
        buffer = self.context.wrap_buffers()
        buffer.setcookieparam(f"{address[0]}:{address[1]}".encode())
        try:
            buffer.receive_from_network(data)
            done = advance(buffer, lambda out: self.sendto(out, address))
        except tls.HelloVerifyRequest:
            flush(buffer, lambda out: self.sendto(out, address))
            self.stats["hello-verify"] += 1
            return
        except mbedtls_errors.TLSError as exc:
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
        session = DtlsSession(self, address, buffer)
        self.sessions[address] = session
        if done:  # pragma: no cover - a handshake never ends on its ClientHello
            session.established = True
            session.endpoint = self.endpoint(session)

    def _close(self, session: DtlsSession, why: str) -> None:
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]
        log.debug("DTLS session of %s closed: %s", session.address[0], why)
        if session.endpoint is not None:
            session.endpoint.closed()

    def sweep(self) -> None:
        """Drop sessions past their handshake or idle deadline; let endpoints expire their state."""
        now = self.clock()
        for session in list(self.sessions.values()):
            if not session.established and now - session.started > self.limits.handshake_timeout:
                self.stats["handshake-timeout"] += 1
                self._close(session, "handshake not finished in time")
            elif now - session.seen > self.limits.idle_timeout:
                self._close(session, "idle")
            elif session.endpoint is not None:
                session.endpoint.sweep(now)

    def close(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(mbedtls_errors.TLSError):
                session.buffer.shutdown()
                flush(session.buffer, session._sendto)
            self._close(session, "server stopping")
        if self.transport is not None:
            self.transport.close()
