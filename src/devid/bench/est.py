"""`devid bench est`: full mTLS `simpleenroll` round trips against an EST server.

By default it starts `devid serve --workers 2` on a throw-away home in its own processes (so server
and load generator do not share an interpreter lock, and the server uses both cores of the machine
the targets were set for), provisions one IDevID per client, and sends CSRs from distinct keys.
The load generator is deliberately lean (see `load`): its CPU counts against the same cores.
With `--server URL` it measures any EST server the same way, given a client identity and the
server's trust anchor. The baseline is the authority's direct issuance rate,
one certificate per call, in the same run.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.est.client import tls_context
from devid.fsutil import read_file
from devid.pki.encoding import cert_pem
from devid.pki.profiles import ProfileName

PASSPHRASE = b"devid-bench-passphrase"
_URL = re.compile(r"(https://\S+?)/\.well-known/est")


@dataclass(frozen=True)
class Identity:
    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey


def make_csrs(n: int) -> list[bytes]:
    """Base64 DER CSRs, each from its own new P-256 key."""
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"bench-{i}")])
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
        out.append(base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))
    return out


class _Response:
    """One HTTP/1.1 answer read off a blocking socket: status, body, whether the server closes."""

    def __init__(self, sock: ssl.SSLSocket, buffered: bytes) -> None:
        self._sock = sock
        self._buf = buffered
        head = self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ConnectionError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
        self.status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self.close = headers.get(b"connection") == b"close" or parts[0] == b"HTTP/1.0"
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.body = self._chunked()
        elif b"content-length" in headers:
            self.body = self._exactly(int(headers[b"content-length"]))
        else:  # the body ends with the connection
            self.body, self._buf, self.close = self._buf + self._rest(), b"", True

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        self._buf += chunk

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            self._fill()
        out, _, self._buf = self._buf.partition(marker)
        return out

    def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self._until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self._until(b"\r\n")  # no trailers expected: the empty line ends the body
                return body
            body += self._exactly(size)
            self._exactly(2)

    def _rest(self) -> bytes:
        out = b""
        while chunk := self._sock.recv(65536):
            out += chunk
        return out

    @property
    def leftover(self) -> bytes:
        return self._buf


def load(
    url: str,
    contexts: list[ssl.SSLContext],
    csrs: list[bytes],
    keep_alive: bool,
    label: str = "",
    devices: Sequence[ssl.SSLContext] | None = None,
) -> tuple[float, list[float], int]:
    """Send every CSR with len(contexts) concurrent clients; (seconds, latencies, failures).
    With `devices`, CSR i comes from its own device (`devices[i]`: its client identity), on a
    connection of its own; else each client sends all of its CSRs with its context.

    Each client is a thread with a blocking TLS socket writing a minimal HTTP/1.1 request: the
    handshake and socket I/O run in OpenSSL and the kernel without the interpreter lock, so the
    load generator takes as little as possible of the CPU the server under test shares with it.
    Every request is still a full mTLS `simpleenroll` round trip (a new connection, with a full
    handshake, per enrollment unless `keep_alive`); a connection error counts as a failure.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 443
    path = f"{parts.path.rstrip('/')}/.well-known/est{'/' + label if label else ''}/simpleenroll"
    authority = f"[{host}]" if ":" in host else host
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {authority}:{port}\r\nContent-Type: application/pkcs10\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "Content-Length: "
    ).encode()
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    next_csr = iter(enumerate(csrs))

    def client(ctx: ssl.SSLContext) -> None:
        nonlocal failures
        sock: ssl.SSLSocket | None = None
        buffered = b""
        while True:
            with lock:
                item = next(next_csr, None)
            if item is None:
                break
            index, body = item
            start = time.perf_counter()
            try:
                if sock is None:
                    raw = socket.create_connection((host, port))
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    own = devices[index] if devices is not None else ctx
                    sock, buffered = own.wrap_socket(raw, server_hostname=host), b""
                sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                resp = _Response(sock, buffered)
                ok, buffered = resp.status == 200, resp.leftover
                if resp.close or not keep_alive or devices is not None:
                    sock.close()
                    sock = None
            except (OSError, ValueError):
                ok = False
                if sock is not None:
                    sock.close()
                    sock = None
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                failures += not ok
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=client, args=(ctx,), daemon=True) for ctx in contexts]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, failures


def provision(authority: Authority, count: int) -> list[Identity]:
    """One device and IDevID per client, keys kept in memory for the TLS handshakes."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]
    requests = [
        IssueRequest(ProfileName.IDEVID, k.public_key(), new_device=NewDevice(f"BENCH{i:06d}"))
        for i, k in enumerate(keys)
    ]
    chain = authority.chain("manufacturing")
    return [
        Identity([issued.certificate, *chain], key)
        for issued, key in zip(authority.issue_many(requests, "bench"), keys, strict=True)
    ]


def direct_rate(authority: Authority, csrs: list[bytes], serial: str) -> float:
    """Baseline: LDevIDs through `Authority.issue_csr`, one call (and one commit) each."""
    start = time.perf_counter()
    for body in csrs:
        authority.issue_csr(base64.b64decode(body), ProfileName.LDEVID, device_serial=serial, actor="bench")
    return len(csrs) / (time.perf_counter() - start)


def _start_server(home: Path, workers: int = 1, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`devid serve --workers N OPTIONS` on `home` and a free port; the process and its URL."""
    env = {**os.environ, "DEVID_PASSPHRASE": PASSPHRASE.decode()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from devid.cli.main import run; run()",
            "serve",
            "--home",
            str(home),
            "--port",
            "0",
            "--workers",
            str(workers),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        match = _URL.search(line)
        if match:
            return proc, match.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("devid serve did not start")


def _process_tree_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process `pid` and its live descendants, from
    Linux's /proc; None elsewhere. Wall-clock rates are noisy on a shared machine, CPU per
    enrollment much less."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    if pid not in times:
        return None
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier += children
    return sum(times[p] for p in tree)


@dataclass(frozen=True)
class Run:
    """One timed load: wall time, latencies, failures, and CPU seconds where they were measured."""

    seconds: float
    latencies: list[float]
    failures: int
    client_cpu: float
    server_cpu: float | None = None

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return (len(self.latencies) - self.failures) / self.seconds

    def percentile_ms(self, p: int) -> float:
        """The `p`-th percentile latency (1..99) in milliseconds."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    def cpu_ms(self, seconds: float | None) -> float | None:
        """CPU seconds of the run as milliseconds per request."""
        return None if seconds is None else seconds * 1000 / max(len(self.latencies), 1)


def timed_load(
    url: str,
    contexts: list[ssl.SSLContext],
    csrs: list[bytes],
    keep_alive: bool,
    label: str = "",
    server_pid: int | None = None,
    devices: Sequence[ssl.SSLContext] | None = None,
) -> Run:
    """`load`, with the CPU time of this process (the load generator) and of the server's process
    tree (when it runs here) over the timed part."""
    server_before = _process_tree_cpu(server_pid) if server_pid else None
    client_before = time.process_time()
    seconds, latencies, failures = load(url, contexts, csrs, keep_alive, label, devices)
    client_cpu = time.process_time() - client_before
    server_after = _process_tree_cpu(server_pid) if server_pid else None
    server_cpu = None
    if server_before is not None and server_after is not None:
        server_cpu = server_after - server_before
    return Run(seconds, latencies, failures, client_cpu, server_cpu)


def _figures(mode: str, run: Run, baseline: float | None, note: str) -> list[Figure]:
    client_cpu = run.cpu_ms(run.client_cpu) or 0.0
    cpu = [Figure(f"est.client_cpu_{mode}", client_cpu, "ms/enrollment", note="load generator")]
    server_cpu = run.cpu_ms(run.server_cpu)
    if server_cpu is not None:
        cpu.insert(0, Figure(f"est.server_cpu_{mode}", server_cpu, "ms/enrollment", note="server"))
    return [
        Figure(
            f"est.enroll_rate_{mode}",
            run.rate,
            "enrollments/s",
            baseline,
            "authority direct issuance, one call each" if baseline else None,
            f"{note}, {run.failures} failures",
        ),
        Figure(f"est.enroll_p50_{mode}", run.percentile_ms(50), "ms"),
        Figure(f"est.enroll_p99_{mode}", run.percentile_ms(99), "ms"),
        *cpu,
    ]


def run_local(clients: int, n: int, modes: list[str], workers: int = 2) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-est-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        identities = provision(authority, clients)
        trust = cert_pem(authority.root)
        contexts = [tls_context(trust, ident.chain, ident.key) for ident in identities]
        baseline = direct_rate(authority, make_csrs(min(n, 300)), "BENCH000000")
        results = []
        # Every client connects from this one address: no per-address cap.
        proc, url = _start_server(home.path, workers, "--max-per-address", "0")
        try:
            for mode in modes:
                csrs = make_csrs(n)
                load(url, contexts, make_csrs(min(clients * 2, 50)), mode == "keep-alive")
                run = timed_load(url, contexts, csrs, mode == "keep-alive", server_pid=proc.pid)
                results += _figures(
                    mode,
                    run,
                    baseline,
                    f"{clients} clients, {n} CSRs from distinct keys, "
                    f"devid serve ({workers} process{'es' if workers > 1 else ''})",
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            authority.close()
        return results


def run_remote(
    url: str, ca_bundle: Path, cert: Path, key: Path, clients: int, n: int, modes: list[str], label: str
) -> list[Figure]:
    chain = [
        x509.load_pem_x509_certificate(b)
        for b in re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
            read_file(cert, "client certificate"),
            re.S,
        )
    ]
    private = serialization.load_pem_private_key(read_file(key, "client key"), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey), "the client key must be EC"
    contexts = [tls_context(read_file(ca_bundle, "CA bundle"), chain, private) for _ in range(clients)]
    results = []
    for mode in modes:
        run = timed_load(url, contexts, make_csrs(n), mode == "keep-alive", label)
        results += _figures(mode, run, None, f"{clients} clients against {url}")
    return results
