"""`devid bench soak`: mixed traffic for minutes at about half of the capacity measured first, with
the resident memory and open descriptors of every devid process sampled over time.

The traffic: enrollments (IDevID), re-enrollments (the device's current LDevID, replaced by the
answer), OCSP requests over plain HTTP, session tokens, revocations through the admin API (of
certificates the run enrolled) and device connections through a `devid gateway` (OCSP mode) to a
Mosquitto broker. A calibration phase first runs the same mix unpaced: its rate is the capacity,
the baseline of the soak's throughput. The soak then paces the mix at half of it. A process that
leaks shows as a slope: memory in MB and descriptors per hour, fitted by least squares over the
samples after the first fifth of the run (start-up caches filling are not a leak).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from devid.api import tokens
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench.est import PASSPHRASE, _start_server, make_csrs, provision
from devid.bench.gateway import (
    Credential,
    device,
    free_port,
    gateway_server,
    mosquitto,
    mqtt_connack,
    pem_certs,
    wait_port,
)
from devid.bench.ocsp import ocsp_request
from devid.bench.slowdrip import rss_mb, worker_pids
from devid.est.client import tls_context


class Op(StrEnum):
    ENROLL = "enroll"
    REENROLL = "re-enroll"
    OCSP = "ocsp"
    TOKEN = "token"
    REVOKE = "revoke"
    GATEWAY = "gateway connect"


#: One round of the mix: status checks and connects dominate, as in a fleet.
MIX = (Op.OCSP, Op.GATEWAY, Op.ENROLL, Op.TOKEN, Op.OCSP, Op.REENROLL, Op.GATEWAY, Op.TOKEN, Op.REVOKE)


@dataclass
class _Device:
    """A device of one client thread: its IDevID and its current LDevID (renewed by re-enroll)."""

    idevid: ssl.SSLContext
    ldevid: Credential
    context: ssl.SSLContext


@dataclass
class _Target:
    root_pem: bytes
    work: Path
    port: int
    http_port: int
    gateway_port: int
    token: str
    issuer: x509.Certificate
    devices: list[_Device]
    enrolled: list[int] = field(default_factory=list)
    serials: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tls(self, cred: Credential | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        if cred is not None:
            ctx.load_cert_chain(str(cred.cert_file), str(cred.key_file))
        return ctx


def _request(
    port: int, ctx: ssl.SSLContext | None, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        if ctx is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    )
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _first_cert(body: bytes) -> x509.Certificate:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]


def _op(target: _Target, op: Op, dev: _Device, rng: random.Random) -> bool:
    pkcs10 = {"Content-Type": "application/pkcs10"}
    if op is Op.ENROLL:
        status, body = _request(
            target.port, dev.idevid, "POST", "/.well-known/est/simpleenroll", make_csrs(1)[0], pkcs10
        )
        if status == 200:
            with target.lock:
                target.enrolled.append(_first_cert(body).serial_number)
        return status == 200
    if op is Op.REENROLL:
        key = ec.generate_private_key(ec.SECP256R1())
        current = dev.ldevid.cert
        san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(current.subject)
            .add_extension(san, critical=False)
            .sign(key, hashes.SHA256())
        )
        der = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
        status, body = _request(
            target.port, dev.context, "POST", "/.well-known/est/simplereenroll", der, pkcs10
        )
        if status != 200:
            return False
        renewed = _first_cert(body)
        dev.ldevid = Credential.write(target.work, dev.ldevid.cert_file.stem, renewed, key)
        dev.context = target.tls(dev.ldevid)
        with target.lock:
            target.serials.append(renewed.serial_number)
        return True
    if op is Op.OCSP:
        with target.lock:
            serial = rng.choice(target.serials)
        request = ocsp_request(target.issuer, serial)
        status, _ = _request(
            target.http_port, None, "POST", "/ocsp", request, {"Content-Type": "application/ocsp-request"}
        )
        return status == 200
    if op is Op.TOKEN:
        status, _ = _request(target.port, dev.context, "POST", "/token", b"", {})
        return status == 200
    if op is Op.REVOKE:
        with target.lock:
            if not target.enrolled:
                return True  # nothing enrolled yet to revoke
            serial = target.enrolled.pop()
        revoke = json.dumps({"selector": "serial", "value": format(serial, "x"), "reason": "superseded"})
        headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"}
        status, _ = _request(
            target.port, target.tls(), "POST", "/api/v1/revocations", revoke.encode(), headers
        )
        return status == 201
    connack = mqtt_connack(target.gateway_port, dev.context, client_id=f"soak-{id(dev)}")
    return connack is not None and connack[:2] == b"\x20\x02" and connack[3:4] == b"\x00"


@dataclass(frozen=True)
class Phase:
    seconds: float
    latencies: list[float]
    errors: dict[str, int]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0


@dataclass(frozen=True)
class Sample:
    at: float
    process: str
    rss_mb: float
    fds: int


def _traffic(
    target: _Target, seconds: float, rate: float | None, tick: Callable[[], None] = lambda: None
) -> Phase:
    """The mix from one thread per device for `seconds`; paced to `rate` requests/s (None: flat out)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    interval = len(target.devices) / rate if rate else 0.0

    def client(index: int, dev: _Device) -> None:
        rng = random.Random(index)
        step = index  # the clients start at different places in the mix
        due = start + rng.uniform(0, interval)
        while time.monotonic() - start < seconds:
            if interval:
                time.sleep(max(0.0, due - time.monotonic()))
                due += interval
            op = MIX[step % len(MIX)]
            step += 1
            began = time.perf_counter()
            try:
                ok = _op(target, op, dev, rng)
            except (OSError, ValueError):
                ok = False
            elapsed = time.perf_counter() - began
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors[op.value] = errors.get(op.value, 0) + 1

    threads = [
        threading.Thread(target=client, args=(i, d), daemon=True) for i, d in enumerate(target.devices)
    ]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        tick()
        for t in threads:
            t.join(0.5)
    return Phase(time.monotonic() - start, latencies, errors)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _sampler(processes: dict[str, int], every: float) -> tuple[list[Sample], Callable[[], None]]:
    samples: list[Sample] = []
    last = [float("-inf")]
    start = time.monotonic()

    def tick() -> None:
        now = time.monotonic()
        if now - last[0] < every:
            return
        last[0] = now
        for name, pid in processes.items():
            try:
                samples.append(Sample(now - start, name, rss_mb(pid), _fds(pid)))
            except OSError:
                continue  # gone: its absence shows in the figures

    return samples, tick


def _listed(errors: dict[str, int]) -> str:
    return json.dumps(errors, sort_keys=True) if errors else "none"


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600


@contextmanager
def _deployment(work: Path, clients: int, workers: int) -> Iterator[tuple[_Target, dict[str, int]]]:
    """A home with `clients` devices, `devid serve --workers N` (with plain HTTP for OCSP), a
    Mosquitto and a `devid gateway` in front of it; the target and the devid processes' pids."""
    home = init_home(work / "home", org="Soak Org", passphrase=PASSPHRASE)
    authority = open_authority(home, PASSPHRASE)
    try:
        fresh = provision(authority, clients)  # IDevIDs that enroll
        creds = [device(authority, work / "devices", f"SOAK{i:04d}") for i in range(clients)]
        server = gateway_server(authority, work / "gateway")
        token, _ = tokens.create(authority, "soak", "admin", datetime.now(UTC), rate_per_minute=1_000_000)
        root_pem = pem_certs(authority.root)
        bundle = work / "bundle.pem"
        bundle.write_bytes(pem_certs(authority.root, *(ca.certificate for ca in authority.cas.values())))
        issuer = authority.cas["operational"].certificate
    finally:
        authority.close()
    http_port = free_port()
    proc, url = _start_server(home.path, workers, "--max-per-address", "0", "--http-port", str(http_port))
    try:
        with mosquitto(work / "mqtt") as mqtt_port:
            gateway_port = free_port()
            gateway = subprocess.Popen(
                [
                    *_DEVID,
                    "gateway",
                    "--listen",
                    f"127.0.0.1:{gateway_port}",
                    "--upstream",
                    f"127.0.0.1:{mqtt_port}",
                    "--ca-bundle",
                    str(bundle),
                    "--cert",
                    str(server.cert_file),
                    "--key",
                    str(server.key_file),
                    "--server",
                    f"http://127.0.0.1:{http_port}/ocsp",
                    "--status",
                    "ocsp",
                    "--no-events",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_port(gateway_port, 60)
                target = _Target(
                    root_pem,
                    work / "devices",
                    int(url.rsplit(":", 1)[1]),
                    http_port,
                    gateway_port,
                    token,
                    issuer,
                    [],
                )
                for identity, cred in zip(fresh, creds, strict=True):
                    enrolling = tls_context(root_pem, identity.chain, identity.key)
                    target.devices.append(_Device(enrolling, cred, target.tls(cred)))
                    target.serials.append(cred.cert.serial_number)
                processes = {"serve_supervisor": proc.pid, "gateway": gateway.pid}
                for i, pid in enumerate(worker_pids(proc.pid)):
                    processes[f"serve_worker_{i}"] = pid
                yield target, processes
            finally:
                gateway.terminate()
                gateway.wait(30)
    finally:
        proc.terminate()
        proc.wait(60)


_DEVID = (sys.executable, "-c", "from devid.cli.main import run; run()")


def run(
    minutes: float, clients: int = 8, workers: int = 2, calibrate: float = 15.0, every: float = 5.0
) -> list[Figure]:
    """Calibrate for `calibrate` seconds, then soak for `minutes` at half the calibrated rate."""
    with (
        tempfile.TemporaryDirectory(prefix="devid-bench-soak-") as tmp,
        _deployment(Path(tmp), clients, workers) as (target, processes),
    ):
        capacity = _traffic(target, calibrate, None)
        samples, tick = _sampler(processes, every)
        soak = _traffic(target, minutes * 60, capacity.rate / 2, tick)
        tick()
    setup = f"{clients} clients, devid serve --workers {workers}, devid gateway (OCSP), {minutes:g} min"
    figures = [
        Figure(
            "soak.throughput", soak.rate, "requests/s", capacity.rate, "unpaced calibration (capacity)", setup
        ),
        Figure("soak.p99", soak.p99_ms(), "ms", capacity.p99_ms(), "unpaced calibration p99"),
        Figure(
            "soak.errors",
            sum(soak.errors.values()),
            "requests",
            note=f"of {len(soak.latencies)}: {_listed(soak.errors)}",
        ),
    ]
    warm = minutes * 60 / 5
    for name in processes:
        mine = [s for s in samples if s.process == name]
        steady = [s for s in mine if s.at >= warm] or mine
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        span = (
            f"{first.rss_mb:.1f} -> {last.rss_mb:.1f} MB, {first.fds} -> {last.fds} fds, {len(mine)} samples"
        )
        figures.append(
            Figure(
                f"soak.rss_slope.{name}",
                slope_per_hour([(s.at, s.rss_mb) for s in steady]),
                "MB/h",
                note=span,
            )
        )
        figures.append(
            Figure(f"soak.fd_slope.{name}", slope_per_hour([(s.at, s.fds) for s in steady]), "fds/h")
        )
    return figures
