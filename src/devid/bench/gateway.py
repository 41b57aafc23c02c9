"""`devid bench gateway` figures, and the real peers the gateway's tests share with them: Mosquitto
on a free port, `openssl ocsp` as an independent responder, the gateway in a thread with its own
event loop, MQTT CONNECT over mTLS.

Figures (`run`):
- `gateway-connect`: new mTLS connections per second, each a TLS handshake with a client
  certificate plus MQTT CONNECT/CONNACK, through the gateway (OCSP status from a cached answer).
  Baseline: the same exchange against a plain TLS-terminating TCP proxy of the same code path
  (handshake + copy, no credential or status check), so the ratio is the price of the check;
  a second baseline figure gives the broker directly over plain TCP.
- `gateway-revocation-cut`: seconds from a revocation (openssl's index rewritten and the
  certificate.revoked event published on the broker) to the live session being cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.clock import SystemClock
from devid.gateway.events import listen
from devid.gateway.ocsp import OcspStatus
from devid.gateway.proxy import Gateway, GatewayOptions
from devid.gateway.status import StatusView
from devid.gateway.tls import gateway_context
from devid.pki.profiles import ProfileName

#: MQTT CONNACK: accepted, no session present.
CONNACK_OK = b"\x20\x02\x00\x00"

MOSQUITTO = "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def wait_for(condition: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> float:
    """Seconds until `condition()` holds; AssertionError after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


@contextmanager
def mosquitto(work: Path, extra: str = "") -> Iterator[int]:
    """A real Mosquitto on a free loopback port, anonymous, plain TCP; its port. `extra`: more
    configuration (another listener, say), whose ports are waited for too."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "mosquitto.conf"
    # `user`: run as root, Mosquitto would become user "mosquitto" and not read files in `work`.
    head = f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
    conf.write_text(f"{head}listener {port} 127.0.0.1\n{extra}")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        for line in extra.splitlines():
            if line.startswith("listener "):
                wait_port(int(line.split()[1]))
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pem_certs(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class Credential:
    """A certificate (with its chain) and clear key as PEM files, for ssl, paho and openssl."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path

    @classmethod
    def write(
        cls,
        directory: Path,
        name: str,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> Credential:
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        cert_file.write_bytes(pem_certs(cert, *chain))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cls(cert, key, cert_file, key_file)


def device(
    authority: Authority, directory: Path, serial: str, lifetime: timedelta | None = None
) -> Credential:
    """A device created with an IDevID, then its LDevID (operational CA) as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    authority.issue(IssueRequest(ProfileName.IDEVID, key.public_key(), new_device=NewDevice(serial)))
    issued = authority.issue(
        IssueRequest(ProfileName.LDEVID, key.public_key(), device_serial=serial, lifetime=lifetime)
    )
    return Credential.write(directory, serial, issued.certificate, key)


def gateway_server(authority: Authority, directory: Path) -> Credential:
    """The gateway's own server certificate (operational CA, for 127.0.0.1 and localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(
        IssueRequest(ProfileName.SERVER, key.public_key(), dns=("localhost",), ips=("127.0.0.1",))
    )
    return Credential.write(
        directory, "gateway", issued.certificate, key, tuple(authority.chain("operational"))
    )


def client_context(root_file: Path, device: Credential | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root_file))
    if device is not None:
        ctx.load_cert_chain(str(device.cert_file), str(device.key_file))
    return ctx


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keepalive 60 s."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def mqtt_connack(
    port: int, ctx: ssl.SSLContext | None, client_id: str = "probe", timeout: float = 5.0
) -> bytes | None:
    """CONNECT over TLS (plain TCP with `ctx` None); the CONNACK, or None if the connection was refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            # As MQTT clients do: else Nagle holds CONNECT behind the TLS Finished for a delayed ACK.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1") if ctx is not None else raw
            with sock:
                sock.sendall(connect_packet(client_id))
                return sock.recv(4) or None
    except (ssl.SSLError, OSError):
        return None


@dataclass
class RunningGateway:
    gateway: Gateway
    port: int
    loop: asyncio.AbstractEventLoop


@contextmanager
def running_gateway(
    options: GatewayOptions,
    server: Credential,
    anchors: list[x509.Certificate],
    view: StatusView,
    *,
    events: tuple[str, int, str] | None = None,
    mode: str = "bench",
) -> Iterator[RunningGateway]:
    """The gateway on `options` (port 0: a free one) in a thread with its own loop, running its
    schedule and (with `events`: broker host, port, topic) taking pushed hints."""
    ctx = gateway_context(server.cert_file, server.key_file, anchors)
    gateway = Gateway(options, ctx, anchors, view, SystemClock(), mode=mode)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(timeout=30)
    tasks = [asyncio.run_coroutine_threadsafe(gateway.run(), loop)]
    if events is not None:
        tasks.append(asyncio.run_coroutine_threadsafe(listen(*events, gateway.on_hint, retry=0.2), loop))
    try:
        yield RunningGateway(gateway, port, loop)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# --- openssl ocsp ---------------------------------------------------------------------------------


def index_line(cert: x509.Certificate, revoked_at: datetime | None = None) -> str:
    """One line of an `openssl ca` index.txt, which `openssl ocsp -index` answers from."""
    expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    if revoked_at is None:
        return f"V\t{expiry}\t\t{cert.serial_number:X}\tunknown\t/CN={cert.serial_number:x}\n"
    when = revoked_at.strftime("%y%m%d%H%M%SZ")
    return f"R\t{expiry}\t{when},keyCompromise\t{cert.serial_number:X}\tunknown\t/CN={cert.serial_number:x}\n"


@dataclass
class OcspResponder:
    url: str
    index: Path

    def write(self, good: Sequence[x509.Certificate], revoked: Sequence[x509.Certificate]) -> None:
        """Replace the index, and make the responder load it: openssl looks for a changed index
        only after answering a request, so the next answer would otherwise come from the old one."""
        now = datetime.now(UTC) - timedelta(seconds=1)
        text = "".join([index_line(c) for c in good] + [index_line(c, now) for c in revoked])
        tmp = self.index.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.index)
        if self.url:
            request = urllib.request.Request(self.url, data=b"reload", method="POST")
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as resp:
                resp.read()


@contextmanager
def openssl_ocsp(
    work: Path,
    ca: x509.Certificate,
    signer: Credential,
    good: Sequence[x509.Certificate],
    revoked: Sequence[x509.Certificate] = (),
    next_minutes: int = 5,
) -> Iterator[OcspResponder]:
    """`openssl ocsp` on a free port answering for `ca` from an index of `good` and `revoked`
    certificates, its responses signed by `signer` (a delegated responder of `ca`)."""
    work.mkdir(parents=True, exist_ok=True)
    index = work / "index.txt"
    OcspResponder("", index).write(good, revoked)
    ca_file = work / "ca.pem"
    ca_file.write_bytes(pem_certs(ca))
    port = free_port()
    cmd = ["openssl", "ocsp", "-index", str(index), "-port", str(port), "-CA", str(ca_file)]
    cmd += ["-rsigner", str(signer.cert_file), "-rkey", str(signer.key_file), "-nmin", str(next_minutes)]
    log = work / "ocsp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "-ignore_err"], stdout=subprocess.DEVNULL, stderr=out)
    try:
        # Not a probing connect: a connection closed without a request wedges openssl 3.0's responder.
        wait_for(lambda: b"waiting for OCSP client connections" in log.read_bytes(), timeout=10)
        yield OcspResponder(f"http://127.0.0.1:{port}", index)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- figures ---------------------------------------------------------------------------------------


def _rate(port: int, ctx: ssl.SSLContext, n: int) -> float:
    """New mTLS connections per second, each to CONNACK, one after another (a device's view)."""
    start = time.perf_counter()
    for i in range(n):
        if mqtt_connack(port, ctx, f"bench-{i}") != CONNACK_OK:
            raise RuntimeError(f"connection {i} to port {port} was not accepted")
    return n / (time.perf_counter() - start)


def _cut_seconds(
    port: int, responder: OcspResponder, broker: int, creds: list[Credential], root: Path
) -> list[float]:
    """Per device: a live session, then its revocation (index rewritten, event published on the
    broker, as devid's outbox does): seconds until the gateway closes the session."""
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="devid-outbox")
    publisher.connect("127.0.0.1", broker)
    publisher.loop_start()
    times: list[float] = []
    revoked: list[x509.Certificate] = []
    try:
        for cred in creds:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                sock = client_context(root, cred).wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(connect_packet(f"cut-{cred.cert.serial_number:x}"))
                if sock.recv(4) != CONNACK_OK:
                    raise RuntimeError("session not admitted")
                revoked.append(cred.cert)
                responder.write([c.cert for c in creds if c.cert not in revoked], revoked)
                serial = f"{cred.cert.serial_number:x}"
                event = {"type": "certificate.revoked", "subject": serial, "payload": {"serial": serial}}
                start = time.perf_counter()
                publisher.publish("devid/events/certificate.revoked", json.dumps(event), qos=1)
                with contextlib.suppress(ssl.SSLError, OSError):
                    sock.recv(1)
                times.append(time.perf_counter() - start)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    return times


def run(connections: int = 300, cuts: int = 5) -> list[Figure]:
    """The gateway's figures (see the module docstring), on a fresh home in a temporary directory."""
    passphrase = b"bench gateway passphrase"
    with tempfile.TemporaryDirectory(prefix="devid-bench-gateway-") as tmp:
        work = Path(tmp)
        authority = open_authority(init_home(work / "home", org="Bench", passphrase=passphrase), passphrase)
        try:
            root = work / "root.pem"
            root.write_bytes(pem_certs(authority.root))
            operational = authority.cas["operational"].certificate
            anchors = [authority.root, operational]
            server = gateway_server(authority, work / "gw")
            bundle = work / "bundle.pem"
            bundle.write_bytes(pem_certs(*anchors))
            signer = authority.cas["operational-ocsp"]
            ocsp_signer = Credential.write(work / "ocsp", "signer", signer.certificate, signer.key)
            devices = [device(authority, work / "dev", f"BENCH-{i}") for i in range(cuts + 1)]
            tls_port = free_port()
            direct_tls = (
                f"listener {tls_port} 127.0.0.1\ncafile {bundle}\ncertfile {server.cert_file}\n"
                f"keyfile {server.key_file}\nrequire_certificate true\n"
            )
            with (
                mosquitto(work / "mosquitto", direct_tls) as broker,
                openssl_ocsp(work / "ocsp", operational, ocsp_signer, [d.cert for d in devices]) as responder,
            ):
                view = OcspStatus(responder.url, SystemClock())
                options = GatewayOptions("127.0.0.1", 0, "127.0.0.1", broker, tick=0.05)
                events = ("127.0.0.1", broker, "devid/events")
                with running_gateway(options, server, anchors, view, events=events, mode="ocsp") as gw:
                    ctx = client_context(root, devices[0])
                    _rate(gw.port, ctx, 10)  # warm-up: the OCSP answer cached, the code paths loaded
                    through = _rate(gw.port, ctx, connections)
                    direct = _rate(tls_port, ctx, connections)
                    cut = _cut_seconds(gw.port, responder, broker, devices[1:], root)
        finally:
            authority.close()
    return [
        Figure(
            "gateway.connections_per_s",
            through,
            "connections/s",
            direct,
            "Mosquitto's own TLS listener requiring client certificates, same client, same run",
            "one client, one connection after another: TLS handshake with a client certificate, MQTT "
            "CONNECT, CONNACK, close; the gateway adds the chain check, the (cached) OCSP status and "
            "the upstream TCP connection",
        ),
        Figure(
            "gateway.revoke_to_cut_s",
            statistics.median(cut),
            "s",
            note=f"median of {len(cut)} (max {max(cut):.3f} s): from certificate.revoked published on the "
            "broker (index already rewritten at openssl ocsp) to the live session closed",
        ),
    ]
