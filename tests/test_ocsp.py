"""The OCSP responder over real sockets, with `openssl ocsp` and curl as independent clients.

A CA with a delegated responder certificate is made here; statuses come from a dict-backed
StatusSource. Both HTTP front ends (the plain-HTTP status port and the aiohttp routes) run in a
thread with their own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.bench.ocsp import MemoryStatusSource, export_openssl_index, make_cert, ocsp_request
from devid.clock import FixedClock
from devid.errors import ConfigError
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.publish.ocsp import OcspHttp
from devid.publish.plain_http import Limits, PlainHttpServer, dispatch
from devid.publish.service import status_service
from devid.revocation.ocsp import MALFORMED_REQUEST, UNAUTHORIZED, OcspIssuer, OcspResponder
from devid.revocation.status import CertStatus, StatusEntry

DER = serialization.Encoding.DER
SHA1 = hashes.SHA1()
REVOKED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Pki:
    dir: Path
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    issuer: OcspIssuer
    good: x509.Certificate
    revoked: x509.Certificate
    stranger: x509.Certificate  # issued by a CA this responder does not serve

    def pem(self, name: str, cert: x509.Certificate) -> str:
        path = self.dir / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def source(self) -> MemoryStatusSource:
        source = MemoryStatusSource("ca")
        source.set(StatusEntry(self.good.serial_number, CertStatus.GOOD))
        source.set(
            StatusEntry(self.revoked.serial_number, CertStatus.REVOKED, REVOKED_AT, Reason.KEY_COMPROMISE)
        )
        return source


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca_key, signer_key, other_key = _key(), _key(), _key()
    ca = make_cert("Test CA", "Test CA", ca_key.public_key(), ca_key, ca=True)
    signer = make_cert("Test OCSP", "Test CA", signer_key.public_key(), ca_key, ocsp_signing=True)
    return Pki(
        dir=tmp_path_factory.mktemp("ocsp"),
        ca=ca,
        ca_key=ca_key,
        issuer=OcspIssuer("ca", ca, signer, signer_key),
        good=make_cert("good device", "Test CA", _key().public_key(), ca_key),
        revoked=make_cert("revoked device", "Test CA", _key().public_key(), ca_key),
        stranger=make_cert("stranger", "Other CA", _key().public_key(), other_key),
    )


def request_der(pki: Pki, *certs: x509.Certificate, algorithm: hashes.HashAlgorithm = SHA1) -> bytes:
    builder = ocsp.OCSPRequestBuilder()
    for cert in certs:
        builder = builder.add_certificate(cert, pki.ca, algorithm)
    return builder.build().public_bytes(DER)


@dataclass
class Servers:
    plain: int
    aiohttp: int
    responder: OcspResponder
    source: MemoryStatusSource

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{getattr(self, kind)}"


@pytest.fixture(scope="module")
def servers(pki: Pki) -> Iterator[Servers]:
    clock = FixedClock(datetime.now(UTC))
    source = pki.source()
    responder = OcspResponder([pki.issuer], source, clock)
    http = OcspHttp(responder, clock)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    plain = PlainHttpServer(
        dispatch({"/ocsp": http.handle, "/boom": _boom}),
        Limits(request_timeout=0.5, max_body_bytes=16 * 1024),
    )
    runner = web.AppRunner(web.Application(client_max_size=1 << 20))

    async def start() -> int:
        await plain.start()
        runner.app.add_routes(http.routes())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    aiohttp_port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    yield Servers(plain.port, aiohttp_port, responder, source)

    async def stop() -> None:
        await plain.close()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


def _boom(method: str, target: str, headers: object, body: bytes) -> tuple[int, tuple[()], bytes]:
    raise RuntimeError("handler bug")


def openssl_ocsp(*args: str) -> str:
    done = subprocess.run(["openssl", "ocsp", *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["plain", "aiohttp"])
def test_openssl_asks_for_three_certificates_with_a_nonce(pki: Pki, servers: Servers, kind: str) -> None:
    out = openssl_ocsp(
        "-issuer", pki.pem("ca", pki.ca), "-CAfile", pki.pem("ca", pki.ca),
        "-cert", pki.pem("good", pki.good), "-cert", pki.pem("revoked", pki.revoked), "-serial", "0x1234",
        "-url", f"{servers.url(kind)}/ocsp",
    )  # fmt: skip
    assert "Response verify OK" in out
    assert "WARNING" not in out  # openssl warns when the nonce is missing or different
    assert "good.pem: good" in out
    assert "revoked.pem: revoked" in out
    assert "Reason: keyCompromise" in out
    assert "Revocation Time: Jan  2 03:04:05 2026 GMT" in out
    assert "0x1234: unknown" in out


def test_openssl_sha256_cert_ids_verified_against_the_responder_certificate(
    pki: Pki, servers: Servers
) -> None:
    out = openssl_ocsp(
        "-sha256", "-issuer", pki.pem("ca", pki.ca), "-VAfile", pki.pem("signer", pki.issuer.signer_cert),
        "-cert", pki.pem("good", pki.good), "-no_nonce", "-url", f"{servers.url('plain')}/ocsp", "-resp_text",
    )  # fmt: skip
    assert "Response verify OK" in out
    assert "Hash Algorithm: sha256" in out
    assert "good.pem: good" in out


@pytest.mark.parametrize("kind", ["plain", "aiohttp"])
def test_get_by_curl_carries_http_caching(pki: Pki, servers: Servers, kind: str) -> None:
    encoded = urllib.parse.quote(base64.b64encode(request_der(pki, pki.revoked)).decode(), safe="")
    url = f"{servers.url(kind)}/ocsp/{encoded}"
    body, headers = curl(url)
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    assert headers["content-type"] == "application/ocsp-response"
    max_age = int(headers["cache-control"].split("max-age=")[1].split(",")[0])
    # nextUpdate in 24 h, signed again 6 h before: caches keep it about 18 h.
    assert 18 * 3600 - 60 <= max_age <= 18 * 3600
    assert "public" in headers["cache-control"] and "must-revalidate" in headers["cache-control"]
    assert headers["last-modified"] == response.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert headers["expires"] == response.next_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    again, _ = curl(url, "-H", f"If-None-Match: {headers['etag']}")
    assert again == b""  # 304 Not Modified (curl -f would have failed on an error status)


def curl(url: str, *args: str) -> tuple[bytes, dict[str, str]]:
    done = subprocess.run(
        ["curl", "-sSf", "-D", "-", url, *args], capture_output=True, timeout=20, check=True
    )
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return body, headers


def post(port: int, body: bytes, content_type: str = "application/ocsp-request") -> tuple[int, bytes, str]:
    """POST over a raw socket (HTTP/1.0: the server closes); status, body, head."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = f"POST /ocsp HTTP/1.0\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        answer = read_all(sock)
    head_text, _, content = answer.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), content, head_text.decode("latin-1")


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _unknown_hash_oid(der: bytes) -> bytes:
    sha1 = bytes.fromhex("06052b0e03021a")
    assert sha1 in der
    return der.replace(sha1, bytes.fromhex("06052b0e03021b"))


def _with_nonce(pki: Pki, nonce: bytes) -> bytes:
    """A request with any nonce: cryptography writes only 1 to 32 octets, asn1crypto writes any."""
    request = asn1_ocsp.OCSPRequest.load(request_der(pki, pki.good))
    extension = {"extn_id": "nonce", "critical": False, "extn_value": asn1_core.OctetString(nonce)}
    request["tbs_request"]["request_extensions"] = [extension]
    return bytes(request.dump(force=True))


@pytest.mark.parametrize("kind", ["plain", "aiohttp"])
def test_garbage_is_answered_malformed_request_never_an_error(pki: Pki, servers: Servers, kind: str) -> None:
    port = getattr(servers, kind)
    good = request_der(pki, pki.good)
    bodies = {
        "random": os.urandom(200),
        "empty": b"",
        "truncated": good[:-5],
        "trailing": good + b"\x00",
        "unknown hash": _unknown_hash_oid(good),
        "empty nonce": _with_nonce(pki, b""),
        "33-octet nonce": _with_nonce(pki, b"n" * 33),
    }
    for name, body in bodies.items():
        status, content, _ = post(port, body)
        assert (name, status, content) == (name, 200, MALFORMED_REQUEST)
    status, content, _ = post(port, _stranger(pki))
    assert (status, content) == (200, UNAUTHORIZED)
    assert post(port, os.urandom(20 * 1024))[0] == 413
    assert post(port, good, content_type="text/plain")[0] == 415


def _stranger(pki: Pki) -> bytes:
    """A request for a certificate of a CA the responder does not serve."""
    other_ca = make_cert("Other CA", "Other CA", _key().public_key(), pki.ca_key, ca=True)
    builder = ocsp.OCSPRequestBuilder().add_certificate(pki.stranger, other_ca, hashes.SHA1())
    return builder.build().public_bytes(DER)


def test_nonce_of_32_octets_is_echoed_and_not_cached(pki: Pki, servers: Servers) -> None:
    for nonce in (b"a" * 32, b"b" * 32):
        status, body, head = post(servers.plain, _with_nonce(pki, nonce))
        response = ocsp.load_der_ocsp_response(body)
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert (status, echoed) == (200, nonce)
        assert "Cache-Control: no-cache" in head and "ETag" not in head


def test_presigned_cache_and_a_revocation_resigns_only_that_serial(pki: Pki) -> None:
    clock = FixedClock(datetime.now(UTC))
    source = pki.source()
    responder = OcspResponder([pki.issuer], source, clock, generation_check_interval=3600)
    good, other = request_der(pki, pki.good), request_der(pki, pki.revoked, algorithm=hashes.SHA256())
    first_good, first_other = responder.respond(good), responder.respond(other)
    assert responder.signed == 2
    assert responder.respond(good) == first_good and responder.respond(other) == first_other
    assert responder.signed == 2

    clock.advance(timedelta(minutes=1))
    source.set(StatusEntry(pki.good.serial_number, CertStatus.REVOKED, clock.now(), Reason.SUPERSEDED))
    assert responder.respond(good) == first_good  # not yet: the generation is checked on refresh
    responder.refresh()
    assert responder.respond(other) == first_other
    after = responder.respond(good)
    assert responder.signed == 3
    response = ocsp.load_der_ocsp_response(after.der)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.superseded

    # Near nextUpdate (within the refresh margin) an answer is signed afresh.
    assert first_other.cache_until is not None
    clock.advance(first_other.cache_until - clock.now())
    renewed = responder.respond(other)
    assert renewed.der != first_other.der and renewed.this_update == clock.now().replace(microsecond=0)


def test_an_unavailable_source_serves_the_last_answer_until_its_next_update(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FixedClock(datetime.now(UTC))
    source = pki.source()
    responder = OcspResponder([pki.issuer], source, clock)
    good = request_der(pki, pki.good)
    first = responder.respond(good)
    assert first.cache_until is not None and first.next_update is not None

    def away(*_: object) -> None:
        raise OSError("the database is away")

    monkeypatch.setattr(source, "statuses", away)
    # Due for re-signing, the store away: the answer signed before is still true, and served.
    clock.advance(first.cache_until - clock.now())
    assert responder.respond(good) == first
    # Past its nextUpdate it is not, and nothing else is known: internalError.
    clock.advance(first.next_update - clock.now())
    failed = ocsp.load_der_ocsp_response(responder.respond(good).der)
    assert failed.response_status is ocsp.OCSPResponseStatus.INTERNAL_ERROR
    # A request never answered before has nothing to fall back on either.
    never = ocsp.load_der_ocsp_response(responder.respond(request_der(pki, pki.revoked)).der)
    assert never.response_status is ocsp.OCSPResponseStatus.INTERNAL_ERROR


def test_responses_verify_with_cryptography(pki: Pki) -> None:
    clock = FixedClock(datetime.now(UTC))
    responder = OcspResponder([pki.issuer], pki.source(), clock)
    response = ocsp.load_der_ocsp_response(responder.respond(request_der(pki, pki.good)).der)
    signer = pki.issuer.signer_cert
    assert response.certificates == [signer]
    assert (
        response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(signer.public_key()).digest
    )
    public_key = signer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD


def test_a_signer_without_the_ocsp_signing_eku_is_refused(pki: Pki) -> None:
    plain = make_cert("not a responder", "Test CA", pki.issuer.signer_key.public_key(), pki.ca_key)
    issuer = OcspIssuer("ca", pki.ca, plain, pki.issuer.signer_key)
    with pytest.raises(ConfigError):
        OcspResponder([issuer], pki.source(), FixedClock(datetime.now(UTC)))


def test_openssl_index_export(pki: Pki) -> None:
    entries = [
        StatusEntry(0xABC, CertStatus.REVOKED, REVOKED_AT, Reason.KEY_COMPROMISE),
        StatusEntry(pki.good.serial_number, CertStatus.GOOD),
        StatusEntry(0x5, CertStatus.UNKNOWN),
    ]
    text = export_openssl_index(entries, {pki.good.serial_number: pki.good, 0xABC: pki.revoked})
    lines = [line.split("\t") for line in text.splitlines()]
    assert lines[0][:4] == ["R", pki.revoked.not_valid_after_utc.strftime("%y%m%d%H%M%SZ"),
                            "260102030405Z,keyCompromise", "0ABC"]  # fmt: skip
    assert lines[1][0] == "V" and lines[1][2] == "" and lines[1][5] == "/CN=good device"
    assert len(lines) == 2


# The plain-HTTP server itself, over raw sockets.


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return read_all(sock)


def test_plain_http_keep_alive_and_pipelining(pki: Pki, servers: Servers) -> None:
    path = "/ocsp/" + urllib.parse.quote(base64.b64encode(request_der(pki, pki.good)).decode(), safe="")
    get = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", servers.plain), timeout=5) as sock:
        sock.sendall(get)
        first = sock.recv(65536)
        sock.sendall(get + get[:10])  # one request and the start of the next
        time.sleep(0.05)
        sock.sendall(get[10:-2].replace(b"Host: x", b"Host: x\r\nConnection: close") + b"\r\n")
        rest = read_all(sock)
    assert first.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" not in first
    assert rest.count(b"HTTP/1.1 200 OK") == 2 and rest.count(b"Connection: close") == 1
    # HTTP/1.0 closes after its answer.
    assert exchange(servers.plain, f"GET {path} HTTP/1.0\r\n\r\n".encode()).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
        (b"GET /ocsp HTTP/2.0\r\n\r\n", b"505"),
        (b"POST /ocsp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"411"),
        (b"POST /ocsp HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", b"413"),
        (b"POST /ocsp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", b"400"),
        (b"GET /ocsp HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET /ocsp HTTP/1.1\r\n folded\r\n\r\n", b"400"),
        (b"GET /boom HTTP/1.1\r\n\r\n", b"500"),
        (b"GET /elsewhere HTTP/1.1\r\nConnection: close\r\n\r\n", b"404"),
        (b"PUT /ocsp HTTP/1.1\r\nConnection: close\r\n\r\n", b"405"),
    ],
)
def test_plain_http_refuses_what_it_cannot_serve_and_closes(
    servers: Servers, request_bytes: bytes, status: bytes
) -> None:
    answer = exchange(servers.plain, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status)


def test_plain_http_drops_a_slow_sender(servers: Servers) -> None:
    with socket.create_connection(("127.0.0.1", servers.plain), timeout=5) as sock:
        sock.sendall(b"GET /ocsp HTTP/1.1\r\n")  # and never the rest
        started = time.monotonic()
        assert read_all(sock) == b""
    assert time.monotonic() - started < 3


def test_refresh_right_after_a_revocation_reads_the_store_not_a_recent_generation(auth: Authority) -> None:
    """The store-backed source keeps a generation for a moment (the hot path's poll); the refresh
    the server makes right after a revocation must not be answered from it."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    auth.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice("OCSP-FRESH")))
    issued = auth.issue(IssueRequest(ProfileName.LDEVID, key, device_serial="OCSP-FRESH"))
    responder = status_service(auth).responder
    request = ocsp_request(auth.cas["operational"].certificate, issued.certificate.serial_number)
    status = lambda: ocsp.load_der_ocsp_response(responder.respond(request).der).certificate_status  # noqa: E731
    assert status() is ocsp.OCSPCertStatus.GOOD  # answered, pre-signed and cached, generation read
    revoke(auth, RevokeRequest(Selector.DEVICE, "OCSP-FRESH", Reason.KEY_COMPROMISE), "t")
    responder.refresh()
    assert status() is ocsp.OCSPCertStatus.REVOKED
