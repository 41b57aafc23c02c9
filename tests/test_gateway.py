"""The enforcing edge gateway end to end: a real Mosquitto behind it, device certificates from a real
devid home, paho-mqtt clients over mTLS, `openssl ocsp` as an independent responder, and a small
signed snapshot format (standing in for devid.revocation.filter) served over HTTP."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import queue
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import paho.mqtt.client as mqtt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2e import devid
from paho.mqtt.enums import CallbackAPIVersion

from devid.authority.core import Authority
from devid.bench.gateway import (
    CONNACK_OK,
    Credential,
    client_context,
    device,
    gateway_server,
    mosquitto,
    mqtt_connack,
    openssl_ocsp,
    pem_certs,
    running_gateway,
    wait_for,
)
from devid.clock import SystemClock
from devid.errors import ConfigError, CredentialRefused
from devid.gateway.events import hint_of, subscription
from devid.gateway.ocsp import OcspStatus
from devid.gateway.proxy import FailMode, GatewayOptions
from devid.gateway.report import Reporter
from devid.gateway.snapshots import SnapshotKind, SnapshotStatus
from devid.gateway.status import CertRef, Hint, Verdict
from devid.pki.client_chain import check_client_chain

UTC = dt.UTC


@dataclass
class Pki:
    auth: Authority
    dir: Path
    root_file: Path
    anchors: list[x509.Certificate]
    server: Credential
    ocsp_signer: Credential


@pytest.fixture
def pki(auth: Authority, tmp_path: Path) -> Pki:
    anchors = [auth.root, auth.cas["operational"].certificate, auth.cas["manufacturing"].certificate]
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(pem_certs(auth.root))
    signer = auth.cas["operational-ocsp"]
    return Pki(
        auth,
        tmp_path,
        root_file,
        anchors,
        gateway_server(auth, tmp_path / "gw"),
        Credential.write(tmp_path / "ocsp", "signer", signer.certificate, signer.key),
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    with mosquitto(tmp_path / "mosquitto") as port:
        yield port


def options(broker: int, **kw: Any) -> GatewayOptions:
    kw.setdefault("tick", 0.05)
    kw.setdefault("handshake_timeout", 1.0)
    return GatewayOptions("127.0.0.1", 0, "127.0.0.1", broker, **kw)


class Client:
    """A paho-mqtt client connected through the gateway with a device certificate."""

    def __init__(self, port: int, pki: Pki, cred: Credential, name: str) -> None:
        self.connected, self.subscribed, self.gone = threading.Event(), threading.Event(), threading.Event()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, reconnect_on_failure=False)
        c.tls_set(ca_certs=str(pki.root_file), certfile=str(cred.cert_file), keyfile=str(cred.key_file))
        c.on_connect = lambda *a: self.connected.set() if not a[3].is_failure else None
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_disconnect = lambda *a: self.gone.set()
        c.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload))
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        assert self.connected.wait(5), f"{name} not connected"

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def flows(sub: Client, pub: Client, payload: bytes) -> None:
    """A message published by `pub` reaches `sub` through the gateway and the broker."""
    pub.publish("fleet/t", payload)
    assert sub.messages.get(timeout=5) == ("fleet/t", payload)


def publish_event(broker: int, event: dict[str, Any], topic: str = "devid/events") -> None:
    """What devid's outbox delivery does: the event as JSON under <topic>/<type>, plain MQTT."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devid-outbox")
    c.connect("127.0.0.1", broker)
    c.loop_start()
    c.publish(f"{topic}/{event['type']}", json.dumps(event), qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def revoked_event(cred: Credential, device_serial: str) -> dict[str, Any]:
    serial = f"{cred.cert.serial_number:x}"
    return {
        "type": "certificate.revoked",
        "subject": serial,
        "payload": {
            "issuer": "operational",
            "serial": serial,
            "reason": "keyCompromise",
            "device": device_serial,
        },
    }


# --- the credential check (pure) ----------------------------------------------------------------


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    start: dt.datetime,
    end: dt.datetime,
    *,
    ca: bool = False,
    eku: bool = True,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .add_extension(x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False), critical=True)
    )
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(signer, hashes.SHA256())


def _name(cn: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def test_client_chain_check_refuses_with_the_authoritys_codes(auth: Authority, tmp_path: Path) -> None:
    now = dt.datetime.now(UTC)
    good = device(auth, tmp_path, "DEV-GOOD")
    anchors = [auth.root, auth.cas["operational"].certificate]
    checked = check_client_chain(good.cert.public_bytes(Encoding.DER), [], anchors, now)
    assert (checked.device_serial, checked.issuer, checked.cas[-1]) == ("DEV-GOOD", anchors[1], auth.root)
    # The operational CA alone is enough of an anchor; the root alone needs it presented.
    assert check_client_chain(good.cert, [], anchors[1:], now).cas == (anchors[1],)
    assert check_client_chain(good.cert, [anchors[1]], [auth.root], now).cas == (anchors[1], auth.root)

    day, year = dt.timedelta(days=1), dt.timedelta(days=365)
    k = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
    root = _cert(_name("R"), k[0], _name("R"), k[0], now - year, now + 10 * year, ca=True)
    short_ca = _cert(_name("I"), k[1], _name("R"), k[0], now - year, now - day, ca=True)
    leaf_under_short = _cert(_name("D", "S1"), k[2], _name("I"), k[1], now - day, now + year)
    no_eku = _cert(_name("D", "S2"), k[2], _name("R"), k[0], now - day, now + year, eku=False)
    no_serial = _cert(_name("D"), k[2], _name("R"), k[0], now - day, now + year)
    leaf = _cert(_name("L", "S3"), k[2], _name("R"), k[0], now - day, now + year)
    # A device key signing a "certificate" under its own: signatures chain, RFC 5280 does not.
    under_leaf = _cert(_name("X", "S4"), k[3], _name("L", "S3"), k[2], now - day, now + year)
    cases = {
        "client-cert-malformed": (b"not a certificate", [], [root], now),
        "client-cert-unknown-issuer": (good.cert, [], [root], now),
        "client-cert-expired": (good.cert, [], anchors, now + 2 * year),
        "client-cert-not-yet-valid": (good.cert, [], anchors, now - day),
        "client-cert-issuer-expired": (leaf_under_short, [short_ca], [root], now),
        "client-cert-profile": (no_eku, [], [root], now),
        "client-cert-identity": (no_serial, [], [root], now),
    }
    for code, (cert, presented, trusted, when) in cases.items():
        with pytest.raises(CredentialRefused) as info:
            check_client_chain(cert, presented, trusted, when)
        assert info.value.code == code, (code, info.value.message)
    with pytest.raises(CredentialRefused) as info:
        check_client_chain(under_leaf, [leaf], [root], now)
    assert info.value.code == "client-cert-unknown-issuer" and "may not issue" in info.value.message


def test_events_become_hints_only_for_status_changes() -> None:
    body = {
        "type": "certificate.revoked",
        "subject": "4d01",
        "payload": {"issuer": "operational", "device": "D"},
    }
    assert hint_of(json.dumps(body).encode()) == Hint(0x4D01, "D", "operational")
    assert hint_of(b'{"type": "device.revoked", "subject": "DEV-9", "payload": {}}') == Hint(None, "DEV-9")
    for junk in (b"\xff", b"[]", b'{"type": "device.created", "subject": "D"}', b'{"type": 1}'):
        assert hint_of(junk) is None
    assert subscription("devid/events") == "devid/events/#"
    assert subscription("devid/{type}") == "devid/+"


# --- OCSP mode against openssl ocsp -------------------------------------------------------------


def test_ocsp_good_flows_revoked_refused_and_push_cuts_a_live_session(pki: Pki, broker: int) -> None:
    auth = pki.auth
    a, b, bad = (device(auth, pki.dir / "dev", s) for s in ("DEV-A", "DEV-B", "DEV-BAD"))
    operational = auth.cas["operational"].certificate
    with openssl_ocsp(
        pki.dir / "ocsp", operational, pki.ocsp_signer, [a.cert, b.cert], [bad.cert]
    ) as responder:
        view = OcspStatus(responder.url, SystemClock())
        opts = options(broker, max_staleness=dt.timedelta(minutes=10))
        with running_gateway(
            opts, pki.server, pki.anchors, view, events=("127.0.0.1", broker, "devid/events")
        ) as gw:
            sub, pub = Client(gw.port, pki, a, "dev-a"), Client(gw.port, pki, b, "dev-b")
            sub.subscribe("fleet/#")
            flows(sub, pub, b"hello")
            # Revoked at the responder: refused after the handshake, with the reason logged.
            assert mqtt_connack(gw.port, client_context(pki.root_file, bad)) is None
            assert gw.gateway.counters.refused["cert-revoked"] == 1
            assert gw.gateway.counters.admitted == 2

            # An event alone revokes nothing: the responder still says good.
            publish_event(broker, revoked_event(a, "DEV-A"))
            wait_for(lambda: gw.gateway.counters.refreshes >= 2)
            time.sleep(0.2)
            assert not sub.gone.is_set()
            flows(sub, pub, b"still here")

            # Revoked at the responder, then pushed: the live session is cut within seconds.
            responder.write([b.cert], [bad.cert, a.cert])
            started = time.monotonic()
            publish_event(broker, revoked_event(a, "DEV-A"))
            assert sub.gone.wait(5)
            assert time.monotonic() - started < 3
            assert gw.gateway.counters.cut == 1
            assert mqtt_connack(gw.port, client_context(pki.root_file, a)) is None
            # The other device's session is untouched and still works end to end.
            assert not pub.gone.is_set()
            watcher = Client(gw.port, pki, b, "dev-b-2")
            watcher.subscribe("fleet/#")
            flows(watcher, pub, b"after the cut")
            for c in (sub, pub, watcher):
                c.close()


def test_bad_clients_are_refused_without_disturbing_live_sessions(
    pki: Pki, broker: int, tmp_path: Path
) -> None:
    auth = pki.auth
    a, b = device(auth, tmp_path / "dev", "DEV-A"), device(auth, tmp_path / "dev", "DEV-B")
    auth.clock.advance(-dt.timedelta(days=2))  # type: ignore[attr-defined]
    expired = device(auth, tmp_path / "dev", "DEV-OLD", lifetime=dt.timedelta(days=1))
    auth.clock.advance(dt.timedelta(days=2))  # type: ignore[attr-defined]
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    foreign = Credential.write(
        tmp_path / "foreign",
        "dev",
        _cert(
            _name("F", "DEV-A"),
            key,
            _name("Foreign"),
            key,
            now - dt.timedelta(days=1),
            now + dt.timedelta(days=9),
        ),
        key,
    )
    operational = auth.cas["operational"].certificate
    with openssl_ocsp(
        tmp_path / "ocsp", operational, pki.ocsp_signer, [a.cert, b.cert, expired.cert]
    ) as responder:
        view = OcspStatus(responder.url, SystemClock())
        opts = options(broker, handshake_timeout=0.5, metrics_port=0)
        with running_gateway(opts, pki.server, pki.anchors, view) as gw:
            sub, pub = Client(gw.port, pki, a, "dev-a"), Client(gw.port, pki, b, "dev-b")
            sub.subscribe("fleet/#")
            refused = gw.gateway.counters.refused
            # No client certificate, a foreign CA's: the handshake fails and is logged as such.
            assert mqtt_connack(gw.port, client_context(pki.root_file, None)) is None
            assert mqtt_connack(gw.port, client_context(pki.root_file, foreign)) is None
            wait_for(lambda: refused["tls-handshake"] == 2)
            # Expired: through TLS (times are not checked there), refused with the specific reason.
            assert mqtt_connack(gw.port, client_context(pki.root_file, expired)) is None
            wait_for(lambda: refused["client-cert-expired"] == 1)
            # Garbage instead of a ClientHello; a client that never says anything (handshake timeout).
            with socket.create_connection(("127.0.0.1", gw.port)) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
                raw.settimeout(5)
                assert raw.recv(100)[:1] in (b"", b"\x15")  # closed, or a TLS alert record
            with socket.create_connection(("127.0.0.1", gw.port)) as idle:
                idle.settimeout(5)
                started = time.monotonic()
                assert idle.recv(100) == b""
                assert time.monotonic() - started < 2
            wait_for(lambda: refused["tls-handshake"] == 4)
            assert gw.gateway.counters.admitted == 2 and not sub.gone.is_set() and not pub.gone.is_set()
            flows(sub, pub, b"undisturbed")
            # The plain broker behind it answers a device that comes through the gateway.
            assert mqtt_connack(gw.port, client_context(pki.root_file, b), "dev-b-2") == CONNACK_OK
            for c in (sub, pub):
                c.close()
            # The gateway's own /metrics says the same: admissions, and refusals by reason.
            wait_for(lambda: gw.gateway.counters.admitted == 3)
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.gateway.metrics_port}/metrics") as answer:
                scraped = answer.read().decode()
            assert "devid_gateway_admissions_total 3.0" in scraped, scraped
            assert 'devid_gateway_refusals_total{reason="tls-handshake"} 4.0' in scraped
            assert 'devid_gateway_refusals_total{reason="client-cert-expired"} 1.0' in scraped


# --- snapshot modes: the machinery with a stand-in signed format ---------------------------------


def _sign(key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    return base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))) + b"." + body


def _open(data: bytes, public_key: Any) -> dict[str, Any]:
    signature, _, body = data.partition(b".")
    public_key.verify(base64.b64decode(signature), body, ec.ECDSA(hashes.SHA256()))
    doc: dict[str, Any] = json.loads(body)
    return doc


@dataclass(frozen=True)
class FakeFilter:
    """A signed list of revoked serials: what devid.revocation.filter will be, minus the compression."""

    version: int
    revoked: frozenset[int]

    def verdict(self, ref: CertRef) -> Verdict:
        return Verdict.REVOKED if ref.serial in self.revoked else Verdict.GOOD

    def apply(self, delta: bytes, public_key: Any) -> FakeFilter:
        doc = _open(delta, public_key)
        if doc["since"] != self.version:
            raise ValueError("delta for another version")
        return FakeFilter(doc["version"], self.revoked | {int(s, 16) for s in doc["revoked"]})


class FakeFormat:
    def load(self, data: bytes, public_key: Any) -> FakeFilter:
        doc = _open(data, public_key)
        return FakeFilter(doc["version"], frozenset(int(s, 16) for s in doc["revoked"]))


@dataclass
class FilterServer:
    """`/filter/<ca>` and deltas over HTTP, signed by `key` (the CA's, or a forger's)."""

    key: ec.EllipticCurvePrivateKey
    history: list[set[int]] = field(default_factory=lambda: [set()])
    requests: list[str] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    def revoke(self, serial: int) -> None:
        self.history.append(self.history[-1] | {serial})

    def body(self, path: str) -> tuple[int, bytes]:
        url = urlsplit(path)
        self.requests.append(path)
        if url.path != "/filter/operational":
            return 404, b""
        version = len(self.history) - 1
        since = parse_qs(url.query).get("since")
        if since is None:
            return 200, _sign(self.key, {"version": version, "revoked": [f"{s:x}" for s in self.history[-1]]})
        if int(since[0]) == version:
            return 304, b""
        new = self.history[-1] - self.history[int(since[0])]
        return 200, _sign(
            self.key, {"since": int(since[0]), "version": version, "revoked": [f"{s:x}" for s in new]}
        )

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = server.body(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()


def filter_view(pki: Pki, url: str, every: float = 60.0) -> SnapshotStatus:
    return SnapshotStatus(
        SnapshotKind.FILTER,
        ["operational"],
        url,
        FakeFormat(),
        pki.anchors,
        SystemClock(),
        refresh_every=dt.timedelta(seconds=every),
    )


def test_filter_push_fetches_a_signed_delta_and_cuts_only_on_it(
    pki: Pki, broker: int, tmp_path: Path
) -> None:
    auth = pki.auth
    a, b = device(auth, tmp_path / "dev", "DEV-A"), device(auth, tmp_path / "dev", "DEV-B")
    honest = FilterServer(auth.cas["operational"].key)
    url = honest.start()
    view = filter_view(pki, url)
    try:
        with running_gateway(
            options(broker), pki.server, pki.anchors, view, events=("127.0.0.1", broker, "devid/events")
        ) as gw:
            sub, pub = Client(gw.port, pki, a, "dev-a"), Client(gw.port, pki, b, "dev-b")
            sub.subscribe("fleet/#")
            flows(sub, pub, b"hi")
            assert view.version == "operational=0"
            # A push with nothing new behind it: the delta says "not modified", nobody is cut.
            publish_event(broker, {"type": "device.revoked", "subject": "DEV-A", "payload": {}})
            wait_for(
                lambda: honest.requests[-1] == "/filter/operational?since=0" and len(honest.requests) >= 2
            )
            time.sleep(0.2)
            assert not sub.gone.is_set()
            honest.revoke(a.cert.serial_number)
            started = time.monotonic()
            publish_event(broker, revoked_event(a, "DEV-A"))
            assert sub.gone.wait(5)
            assert time.monotonic() - started < 3
            assert view.version == "operational=1" and honest.requests[-1] == "/filter/operational?since=0"
            assert mqtt_connack(gw.port, client_context(pki.root_file, a)) is None
            assert gw.gateway.counters.refused["cert-revoked"] == 1
            assert not pub.gone.is_set()
            pub.close()
    finally:
        honest.stop()


def test_a_filter_not_signed_by_the_ca_is_not_believed(pki: Pki, broker: int, tmp_path: Path) -> None:
    a = device(pki.auth, tmp_path / "dev", "DEV-A")
    forger = FilterServer(ec.generate_private_key(ec.SECP256R1()))
    url = forger.start()
    try:
        with running_gateway(options(broker), pki.server, pki.anchors, filter_view(pki, url)) as gw:
            assert mqtt_connack(gw.port, client_context(pki.root_file, a)) is None
            assert gw.gateway.counters.refused["status-stale"] == 1
            assert "not signed by a CA of the bundle" in (gw.gateway.last_error or "")
    finally:
        forger.stop()


@pytest.mark.parametrize("fail", [FailMode.CLOSED, FailMode.OPEN])
def test_past_max_staleness_fail_closed_cuts_and_fail_open_keeps(
    pki: Pki, broker: int, tmp_path: Path, fail: FailMode
) -> None:
    a, b = device(pki.auth, tmp_path / "dev", "DEV-A"), device(pki.auth, tmp_path / "dev", "DEV-B")
    server = FilterServer(pki.auth.cas["operational"].key)
    url = server.start()
    view = filter_view(pki, url, every=0.2)
    opts = options(
        broker, max_staleness=dt.timedelta(seconds=1), fail=fail, status_file=tmp_path / "status.json"
    )
    with running_gateway(opts, pki.server, pki.anchors, view) as gw:
        sub = Client(gw.port, pki, a, "dev-a")
        time.sleep(1.2)  # refreshed every 0.2 s: never stale while the server answers
        assert not sub.gone.is_set()
        server.stop()
        report = json.loads((tmp_path / "status.json").read_text())
        assert report["sessions"] == 1 and report["version"] == "operational=0"
        if fail is FailMode.CLOSED:
            assert 0.5 < wait_for(sub.gone.is_set, timeout=4) < 2.5
            assert mqtt_connack(gw.port, client_context(pki.root_file, b)) is None
            assert gw.gateway.counters.refused["status-stale"] == 1
        else:
            time.sleep(1.5)
            assert not sub.gone.is_set()
            assert mqtt_connack(gw.port, client_context(pki.root_file, b)) == CONNACK_OK
        wait_for(lambda: json.loads((tmp_path / "status.json").read_text())["stale"])
        report = json.loads((tmp_path / "status.json").read_text())
        assert report["last_error"] and report["staleness_seconds"] >= 1
        sub.close()


def test_a_failed_report_is_kept_merged_and_sent_in_batches(pki: Pki) -> None:
    """The reporter against a TLS server that refuses the first report: nothing is lost, sightings
    of the same certificate merge (earliest first, latest last), and 650 go as 300 + 300 + 50."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        bodies.append(await request.json())
        if len(bodies) == 1:
            return web.json_response({"error": {"code": "store-unavailable"}}, status=503)
        return web.json_response({"recorded": len(bodies[-1]["sessions"]), "unknown": 0, "revoked": 1})

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/api/v1/gateways/{name}/sightings", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        served.load_cert_chain(pki.server.cert_file, pki.server.key_file)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
        await site.start()
        port = runner.addresses[0][1]
        trust = ssl.create_default_context(cafile=str(pki.root_file))
        reporter = Reporter(
            f"https://127.0.0.1:{port}/.well-known/est", "tok", trust, "edge:1", dt.timedelta(minutes=1)
        )
        t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
        try:
            reporter.seen("aa" * 32, t0, t0 + dt.timedelta(minutes=1))
            assert not await reporter.send() and reporter.failures == 1 and reporter.pending == 1
            reporter.seen("aa" * 32, t0 - dt.timedelta(minutes=5), t0)  # an earlier sighting merges
            for i in range(649):
                reporter.seen(f"{i:064x}", t0, t0)
            assert await reporter.send() and reporter.pending == 0
        finally:
            await reporter.aclose()
            await runner.cleanup()
        assert [len(b["sessions"]) for b in bodies] == [1, 300, 300, 50]
        first = bodies[1]["sessions"][0]
        assert first == {
            "fingerprint": "aa" * 32,
            "first_seen": (t0 - dt.timedelta(minutes=5)).isoformat(),
            "last_seen": (t0 + dt.timedelta(minutes=1)).isoformat(),
        }
        assert (reporter.sent, reporter.revoked) == (650, 3)

    asyncio.run(run())


def test_a_report_url_must_be_https() -> None:
    with pytest.raises(ConfigError) as info:
        Reporter("http://devid:8443", "tok", ssl.create_default_context(), "edge", dt.timedelta(minutes=1))
    assert info.value.code == "gateway-report"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ([], "gateway-report"),  # no token file
        (["--report-token-file", "EMPTY"], "gateway-report"),
        (["--report-token-file", "TOKEN", "--name", "edge one"], "gateway-name"),
    ],
)
def test_report_options_are_checked_before_the_gateway_listens(pki: Pki, extra: list[str], code: str) -> None:
    (pki.dir / "EMPTY").write_text("\n")
    (pki.dir / "TOKEN").write_text("devid_token\n")
    (pki.dir / "bundle.pem").write_bytes(pem_certs(*pki.anchors))
    args = [str(pki.dir / a) if a in ("EMPTY", "TOKEN") else a for a in extra]
    result = devid(
        "gateway", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
        "--ca-bundle", pki.dir / "bundle.pem",
        "--cert", pki.server.cert_file, "--key", pki.server.key_file, "--server", "http://127.0.0.1:9/ocsp",
        "--status", "ocsp", "--no-events", "--report", "https://127.0.0.1:9", *args,
    )  # fmt: skip
    assert result.returncode == 2 and f"[{code}]" in result.stderr, result.stderr
    assert "devid gateway on" not in result.stdout  # it never listened
