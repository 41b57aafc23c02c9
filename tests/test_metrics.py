"""`devid serve` observability: /metrics (Prometheus text, summed over workers), X-Request-Id on
every answer, and `--log-json` request lines. Scraped over real TLS and plain HTTP."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509 import ocsp
from est_helpers import EstServer, csr_b64, https, pem, provision, running_server
from event_peers import free_port
from manufacturer import Manufacturer
from prometheus_client.parser import text_string_to_metric_families
from test_onboarding import _sync, curl_enroll, register
from test_serve import PASSPHRASE, _enroll_over_tls, rest_of_output, start_serve

from devid.api import tokens
from devid.authority.core import Authority
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.server.app import METRICS
from devid.server.metrics import request_id

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition by (name, sorted labels); the parser rejects a bad exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(server: EstServer) -> Samples:
    answer = https(server, "GET", "/metrics")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    return samples(answer.text)


@pytest.fixture
def pub(tmp_path: Path, clock: FixedClock) -> Iterator[Authority]:
    home = init_home(
        tmp_path / "home", org="Test Org", passphrase=PASSPHRASE, public_url="http://127.0.0.1:1"
    )
    with open_authority(home, PASSPHRASE, clock=clock) as authority:
        yield authority


def _ocsp_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_counters_move_with_enrollment_ocsp_and_expiry(
    pub: Authority, clock: FixedClock, tmp_path: Path
) -> None:
    with running_server(pub, tmp_path / "srv") as server:
        before = scrape(server)
        assert value(before, "devid_certificates_issued_total", profile="ldevid") == 0
        device = provision(pub, "SN-M1", tmp_path / "dev")
        key = ec.generate_private_key(ec.SECP256R1())
        answer = https(
            server, "POST", "/.well-known/est/simpleenroll", csr_b64(key), cert=device.idevid_files
        )
        assert answer.status == 200, answer.text
        assert https(server, "POST", "/.well-known/est/simpleenroll", b"junk").status == 401
        issuer = pub.cas["operational"].certificate
        leaf = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(answer.body.split())))[0]
        request = _ocsp_request(leaf, issuer)
        for _ in range(3):  # the first is signed, the two others come from the pre-signed answer
            got = https(server, "POST", "/ocsp", request, content_type="application/ocsp-request")
            assert got.status == 200
            assert ocsp.load_der_ocsp_response(got.body).certificate_status == ocsp.OCSPCertStatus.GOOD
        # notAfter of the new certificate 10 days ahead: expiring within 30 days, not within 7.
        clock.advance(leaf.not_valid_after_utc - clock.now() - timedelta(days=10))
        assert value(scrape(server), "devid_certificates_expiring", within="30d") == 0  # cached 30 s
        server.running.runner.app[METRICS].store.ttl = 0
        after = scrape(server)
    assert value(after, "devid_est_requests_total", operation="simpleenroll", status="200") == 1
    assert value(after, "devid_est_requests_total", operation="simpleenroll", status="401") == 1
    assert value(after, "devid_certificates_issued_total", profile="ldevid") == 1
    assert value(after, "devid_certificates_issued_total", profile="idevid") == 1  # provisioned in-process
    assert value(after, "devid_issuance_seconds_count", profile="ldevid") == 1
    assert value(after, "devid_issuance_seconds_sum", profile="ldevid") > 0
    assert value(after, "devid_ocsp_requests_total") == 3
    assert value(after, "devid_ocsp_cache_hits_total") == 2
    assert value(after, "devid_ocsp_responses_signed_total") >= 1
    assert value(after, "devid_certificates_expiring", within="7d") == 0
    assert value(after, "devid_certificates_expiring", within="30d") == 1
    assert value(after, "devid_outbox_backlog") == 0


@pytest.fixture
def acme(tmp_path: Path, clock: FixedClock) -> Manufacturer:
    made = Manufacturer(tmp_path / "acme")
    clock.advance(timedelta(minutes=1))  # openssl's notBefore is "now": step past it
    return made


def test_jitr_registrations_counted(server: EstServer, acme: Manufacturer) -> None:
    register(server.authority, acme, auto_register=True, auto_activate=True)
    _sync(server, acme)
    made = [acme.device(serial) for serial in ("ACME-M1", "ACME-M2")]
    for _cert, key, chain in [*made, made[0]]:  # the first device twice: registered once
        assert curl_enroll(server, chain, key)[0] == 200
    assert value(scrape(server), "devid_jitr_registrations_total") == 2


def test_request_ids_echoed_or_made(pub: Authority, tmp_path: Path) -> None:
    with running_server(pub, tmp_path / "srv") as server:
        sane = "client-req.42_A"
        got = https(server, "GET", "/.well-known/est/cacerts", headers={"X-Request-Id": sane})
        assert got.status == 200 and got.headers["X-Request-Id"] == sane
        made = set()
        for sent in ("bad id!", "x" * 65, None):
            headers = {"X-Request-Id": sent} if sent else {}
            for path in ("/.well-known/est/cacerts", "/api/v1/devices", "/nowhere"):
                got = https(server, "GET", path, headers=headers)
                rid = got.headers["X-Request-Id"]
                assert re.fullmatch(r"[0-9a-f]{16}", rid), (path, got.status, rid)
                made.add(rid)
        assert len(made) == 9  # a new one each time
        # The admin API refuses without a token, and still names the request.
        assert (
            https(server, "GET", "/api/v1/devices", headers={"X-Request-Id": sane}).headers["X-Request-Id"]
            == sane
        )
    assert request_id("a" * 64) == "a" * 64 and request_id("a" * 65) != "a" * 65


def test_api_requests_counted_by_operation_and_status(pub: Authority, tmp_path: Path) -> None:
    token, _ = tokens.create(pub, "ops", "admin", pub.clock.now())
    bearer = {"Authorization": f"Bearer {token}"}
    with running_server(pub, tmp_path / "srv") as server:
        for headers in (bearer, bearer, {}):
            https(server, "GET", "/api/v1/devices", headers=headers)
        assert https(server, "GET", "/api/v1/devices/SN-NONE", headers=bearer).status == 404
        assert https(server, "GET", "/api/v1/nowhere", headers=bearer).status == 404
        assert https(server, "GET", "/api/v1/openapi.json").status == 200
        found = scrape(server)
    assert value(found, "devid_api_requests_total", operation="get_devices", status="200") == 2
    assert value(found, "devid_api_requests_total", operation="get_devices", status="401") == 1
    assert value(found, "devid_api_requests_total", operation="get_devices_serial", status="404") == 1
    assert value(found, "devid_api_requests_total", operation="other", status="404") == 1
    assert value(found, "devid_api_requests_total", operation="openapi", status="200") == 1
    # EST requests are not API requests, and the other way round.
    assert not any(name == "devid_api_requests_total" and "est" in str(labels) for name, labels in found)


def test_workers_sum_and_log_json(tmp_path: Path) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE)
    auth = open_authority(home, PASSPHRASE)
    try:
        (tmp_path / "root.pem").write_bytes(pem(auth.root))
        devices = [provision(auth, f"SN-MW-{i}", tmp_path / "devices") for i in range(16)]
    finally:
        auth.close()
    root_pem = tmp_path / "root.pem"
    http_port = free_port()
    served = start_serve(home.path, "--workers", "2", "--log-json", "--http-port", str(http_port))
    try:
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in devices]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda dk: _enroll_over_tls(served.port, root_pem, *dk), zip(devices, keys, strict=True)
                )
            )
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:100] for a in answers]
        # Each scrape is answered by whichever worker the kernel picks: every one sees the sum.
        for _ in range(4):
            found = samples(_get_tls(served.port, root_pem))
            assert value(found, "devid_est_requests_total", operation="simpleenroll", status="200") == 16
            assert value(found, "devid_certificates_issued_total", profile="ldevid") == 16
            assert value(found, "devid_issuance_seconds_count", profile="ldevid") == 16
        # The plain-HTTP status port names its requests too: the client's id echoed, or a new one.
        sent = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/metrics", headers={"X-Request-Id": "scrape-7"}
        )
        with urllib.request.urlopen(sent, timeout=10) as plain:
            assert plain.headers["X-Request-Id"] == "scrape-7"
            found = samples(plain.read().decode())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/nowhere", timeout=10)
        assert missing.value.code == 404 and re.fullmatch(
            r"[0-9a-f]{16}", missing.value.headers["X-Request-Id"]
        )
        assert value(found, "devid_certificates_issued_total", profile="ldevid") == 16
        assert value(found, "devid_status_published_bytes", kind="crl", scope="operational") > 0
        assert value(found, "devid_status_rebuilds_total", kind="crl") >= 1
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    rest_of_output(served)
    assert served.proc.stderr is not None
    logged = [json.loads(line) for line in served.proc.stderr.read().splitlines() if line.startswith("{")]
    scraped = [line for line in logged if line.get("request_id") == "scrape-7"]
    assert [(x["method"], x["path"], x["status"]) for x in scraped] == [("GET", "/metrics", 200)], scraped
    enrolls = [line for line in logged if line.get("path") == "/.well-known/est/simpleenroll"]
    assert len(enrolls) == 16
    # Both workers served enrollments (the kernel spreads 16 connections: all on one has odds 2^-15).
    assert len({line["pid"] for line in enrolls}) == 2
    assert {line["device"] for line in enrolls} == {d.serial for d in devices}
    for line in enrolls:
        assert line["status"] == 200 and line["method"] == "POST" and line["peer"] == "127.0.0.1"
        assert re.fullmatch(r"[0-9a-f]{16}", line["request_id"]) and line["duration_ms"] > 0
        assert line["time"].endswith("+00:00")


def _get_tls(port: int, root_pem: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(root_pem))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()
