"""`devid bench coaps`: EST-coaps enrollments over DTLS beside EST over HTTPS, in the same run.

It starts one `devid serve --coaps-port 0` process on a throw-away home (EST-coaps is served by
one process, so HTTPS is measured on that same one), provisions one IDevID per client, and
measures both protocols the same way: every enrollment a new session with a full handshake
(DTLS: with its cookie exchange) authenticated by the device's IDevID, a CSR from a distinct
key, a certificate back. The HTTPS load is `devid bench est`'s (`devid.bench.est.load`).

Bytes on the wire per enrollment count what the transport carries for the client: every UDP
datagram's payload for DTLS (the HelloVerifyRequest round trip, handshake, request, response and
close_notify), every byte of the TCP stream for TLS (IP, UDP and TCP headers, and TCP's own
handshake and ACKs, are not counted).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import tempfile
import time
import urllib.parse
from pathlib import Path

from cryptography import x509

from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench.est import PASSPHRASE, Identity, Run, _start_server, make_csrs, provision, timed_load
from devid.coap.client import CoapsClient, client_context
from devid.coap.message import Code
from devid.coap.resources import ContentFormat
from devid.errors import DevidError
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem


async def _coaps_load(
    url: str, identities: list[Identity], csrs: list[bytes], root: list[x509.Certificate]
) -> tuple[Run, int, int]:
    """Each CSR through its own DTLS session, `len(identities)` at a time; (run, wire bytes,
    of which handshakes)."""
    contexts = [client_context(root, ident.chain, ident.key) for ident in identities]
    pending = iter(base64.b64decode(c) for c in csrs)
    latencies: list[float] = []
    failures = wire = handshakes = 0

    async def client(index: int) -> None:
        nonlocal failures, wire, handshakes
        for der in pending:
            start = time.perf_counter()
            session = CoapsClient(url, contexts[index], timeout=30)
            try:
                async with session:
                    await session.request(
                        Code.POST,
                        "/est/sen",
                        der,
                        content_format=ContentFormat.PKCS10,
                        accept=ContentFormat.PKIX_CERT,
                    )
            except DevidError:
                failures += 1
            latencies.append(time.perf_counter() - start)
            wire += session.sent + session.received
            handshakes += session.handshake_bytes

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(len(identities))))
    seconds = time.perf_counter() - start
    return Run(seconds, latencies, failures, time.process_time() - cpu), wire, handshakes


async def _one_enrollment_bytes(
    url: str, identity: Identity, root: list[x509.Certificate], accept: ContentFormat
) -> tuple[int, int]:
    """One `sen` in a DTLS session of its own asking for `accept`: (session bytes both ways, answer
    payload bytes)."""
    session = CoapsClient(url, client_context(root, identity.chain, identity.key), timeout=30)
    async with session:
        answer = await session.request(
            Code.POST,
            "/est/sen",
            base64.b64decode(make_csrs(1)[0]),
            content_format=ContentFormat.PKCS10,
            accept=accept,
        )
    return session.sent + session.received, len(answer.payload)


def https_wire_bytes(url: str, context: ssl.SSLContext, csr: bytes) -> tuple[int, int]:
    """Bytes of the TCP stream (both ways) of one `simpleenroll` on a new TLS connection: of its
    handshake, and in all."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    request = (
        f"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/pkcs10\r\nConnection: close\r\nContent-Length: {len(csr)}\r\n\r\n"
    ).encode() + csr
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    total = 0
    with socket.create_connection((host, port)) as sock:

        def send() -> None:
            nonlocal total
            data = outgoing.read()
            total += len(data)
            sock.sendall(data)

        def receive() -> bool:
            nonlocal total
            data = sock.recv(65536)
            total += len(data)
            if not data:
                return False
            incoming.write(data)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                send()
                receive()
        send()
        handshake = total
        tls.write(request)
        send()
        while True:
            try:
                if not tls.read(65536):
                    break  # the server closed the stream
            except ssl.SSLWantReadError:
                send()
                if not receive():
                    break
            except ssl.SSLZeroReturnError:
                send()
                break
    return handshake, total


def run(clients: int, n: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-coaps-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        identities = provision(authority, clients)
        root = [authority.root]
        trust = cert_pem(authority.root)
        contexts = [tls_context(trust, ident.chain, ident.key) for ident in identities]
        proc, url = _start_server(home.path, 1, "--max-per-address", "0", "--coaps-port", "0")
        try:
            assert proc.stdout is not None
            coaps_url = next(
                line.split(" at ", 1)[1].strip().removesuffix("/.well-known/core")
                for line in proc.stdout
                if "EST-coaps server at" in line
            )
            https_handshake, https_bytes = https_wire_bytes(url, contexts[0], make_csrs(1)[0])
            # Warm both paths, then the timed runs, HTTPS first.
            timed_load(url, contexts, make_csrs(min(clients * 2, 50)), False)
            https = timed_load(url, contexts, make_csrs(n), False)
            asyncio.run(_coaps_load(coaps_url, identities, make_csrs(min(clients * 2, 50)), root))
            coaps, wire, handshakes = asyncio.run(_coaps_load(coaps_url, identities, make_csrs(n), root))
            der_wire, der_answer, c509_wire, c509_answer = (
                size
                for accept in (ContentFormat.PKIX_CERT, ContentFormat.C509_CERT)
                for size in asyncio.run(_one_enrollment_bytes(coaps_url, identities[0], root, accept))
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            authority.close()
    note = f"{clients} clients, {n} CSRs from distinct keys, a full handshake each, devid serve (1 process)"
    return [
        Figure(
            "coaps.enroll_rate",
            coaps.rate,
            "enrollments/s",
            https.rate,
            "EST over HTTPS, a new mTLS connection per enrollment, same server and run",
            f"{note}, {coaps.failures} failures (HTTPS: {https.failures}); target ratio >= 0.5",
        ),
        Figure("coaps.enroll_p50", coaps.percentile_ms(50), "ms", https.percentile_ms(50), "HTTPS p50"),
        Figure("coaps.enroll_p99", coaps.percentile_ms(99), "ms", https.percentile_ms(99), "HTTPS p99"),
        Figure(
            "coaps.wire_bytes_per_enrollment",
            wire / max(len(coaps.latencies), 1),
            "bytes",
            float(https_bytes),
            "EST over HTTPS/TLS: TCP stream bytes of one enrollment on a new connection",
            "DTLS: UDP payloads incl. the cookie round trip; headers below UDP/TCP not counted",
        ),
        Figure(
            "coaps.wire_bytes_handshake",
            handshakes / max(len(coaps.latencies), 1),
            "bytes",
            float(https_handshake),
            "TLS handshake (mTLS, new connection)",
            "DTLS 1.2 with the HelloVerifyRequest round trip; the rest of each total is request and answer",
        ),
        Figure(
            "coaps.wire_bytes_c509",
            float(c509_wire),
            "bytes",
            float(der_wire),
            "the same enrollment answered in DER (Accept 287)",
            f"one EST-coaps enrollment answered in C509 (Accept {int(ContentFormat.C509_CERT)}), handshake "
            f"included; the certificate itself {c509_answer} B in C509 against {der_answer} B in DER",
        ),
        Figure(
            "coaps.client_cpu", coaps.cpu_ms(coaps.client_cpu) or 0.0, "ms/enrollment", note="load generator"
        ),
    ]
