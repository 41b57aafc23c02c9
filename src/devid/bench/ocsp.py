"""`devid bench revocation` (OCSP part): pre-signed OCSP answers per second over plain HTTP.

Ours is a real `devid serve --http-port` (one worker: `OcspResponder` behind `plain_http`,
answering from its pre-signed cache over the store) on a home holding 64 IDevIDs, every tenth
revoked; the baseline, `openssl ocsp -index`, serves the same CA's state exported as openssl's
index.txt (`export_openssl_index`) and signs with the same delegated responder. Each gets one
core (the first of this process's CPUs) while the load generator, wrk, runs on another: RFC 5019
GET requests for one certificate, with a new connection per request (`Connection: close`) and
with keep-alive. wrk's own ceiling is measured first, in the same run, against a trivial C responder
(a fixed answer, compiled here with `cc`): a server figure near that ceiling measures wrk, not the
server. Server CPU per response comes from /proc/<pid>/stat (user + system time) around each run.

`openssl ocsp` answers HTTP/1.0 and closes every connection, so its keep-alive figure is its
per-connection rate; it also spins forever on a connection closed before a request (OpenSSL 3.0),
which wrk's start-up address probe is, so wrk is given a script without that probe.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devid.authority.core import ISSUER_OF
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.authority.status_signing import responder
from devid.bench import Figure
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.revocation.records import StoreStatus
from devid.revocation.status import CertStatus, StatusEntry

PASSPHRASE = b"devid bench ocsp passphrase"

#: openssl's index.txt spelling of the reasons it knows (apps/lib/apps.c); others are written without.
_OPENSSL_REASONS = {
    Reason.UNSPECIFIED: "unspecified",
    Reason.KEY_COMPROMISE: "keyCompromise",
    Reason.CA_COMPROMISE: "CACompromise",
    Reason.AFFILIATION_CHANGED: "affiliationChanged",
    Reason.SUPERSEDED: "superseded",
    Reason.CESSATION_OF_OPERATION: "cessationOfOperation",
    Reason.CERTIFICATE_HOLD: "certificateHold",
}
#: wrk's default resolver first connects to the server and closes without a request.
_NO_PROBE = "wrk.resolve = function(host, service)\n  wrk.addrs = wrk.lookup(host, service)\nend\n"
#: The trivial responder: a fixed 600-octet answer per request, keep-alive unless `Connection: close`
#: (then one answer, and close).
_TRIVIAL_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    static char keep[2048], last[2048], buf[16384];
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                       "Content-Length: 600\r\n";
    int len = snprintf(keep, 200, "%s\r\n", head);
    int last_len = snprintf(last, 200, "%sConnection: close\r\n\r\n", head);
    memset(keep + len, 'x', 600);
    memset(last + last_len, 'x', 600);
    len += 600;
    last_len += 600;
    int one = 1, ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof a;
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096) || getsockname(ls, (void *)&a, &alen)) return 1;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int c, fd = evs[i].data.fd;
            if (fd == ls) {
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf - 1);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) { close(fd); continue; }
            buf[r] = 0;
            if (strcasestr(buf, "connection: close")) {
                if (write(fd, last, last_len) < 0) {}
                close(fd);
                continue;
            }
            for (char *p = buf; (p = strstr(p, "\r\n\r\n")) != NULL; p += 4)
                if (write(fd, keep, len) < 0) break;
        }
    }
}
"""


class MemoryStatusSource:
    """A `StatusSource` over a dict: the bench's (and the tests') stand-in for the store."""

    def __init__(self, ca_name: str) -> None:
        self.ca_name = ca_name
        self.entries: dict[int, StatusEntry] = {}
        self._generation = 0
        self._changed: list[tuple[int, int]] = []  # (generation, serial)

    def set(self, entry: StatusEntry) -> None:
        self._generation += 1
        self.entries[entry.serial] = entry
        self._changed.append((self._generation, entry.serial))

    def statuses(self, ca_name: str, serials: Iterable[int]) -> dict[int, StatusEntry]:
        known = self.entries if ca_name == self.ca_name else {}
        return {s: known.get(s) or StatusEntry(s, CertStatus.UNKNOWN) for s in serials}

    def generation(self, ca_name: str, *, fresh: bool = False) -> int:
        return self._generation if ca_name == self.ca_name else 0

    def changed_since(self, ca_name: str, generation: int) -> list[int]:
        return [serial for g, serial in self._changed if g > generation and ca_name == self.ca_name]


def export_openssl_index(entries: Iterable[StatusEntry], certs: Mapping[int, x509.Certificate]) -> str:
    """openssl's CA database (index.txt) for `entries`: one line per good or revoked certificate,
    tab-separated: V or R, expiry YYMMDDHHMMSSZ, revocation date[,reason], serial in hex, the file
    name ('unknown') and the subject. Serials left out are `unknown` to `openssl ocsp -index`."""
    lines = []
    for entry in entries:
        if entry.status is CertStatus.UNKNOWN:
            continue
        cert = certs.get(entry.serial)
        expiry = cert.not_valid_after_utc if cert is not None else entry.not_after
        if expiry is None:
            raise ValueError(f"no expiry known for serial {entry.serial:x}")
        revoked = ""
        if entry.status is CertStatus.REVOKED:
            if entry.revoked_at is None:
                raise ValueError(f"serial {entry.serial:x} revoked without a time")
            revoked = _yymmdd(entry.revoked_at)
            if entry.reason in _OPENSSL_REASONS:
                revoked += "," + _OPENSSL_REASONS[entry.reason]
        serial = f"{entry.serial:X}"
        subject = _oneline(cert.subject) if cert is not None else "/CN=unknown"
        flag = "R" if entry.status is CertStatus.REVOKED else "V"
        lines.append(
            f"{flag}\t{_yymmdd(expiry)}\t{revoked}\t{serial.zfill(len(serial) + len(serial) % 2)}\t"
            f"unknown\t{subject}\n"
        )
    return "".join(lines)


def _yymmdd(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


def _oneline(name: x509.Name) -> str:
    """openssl's one-line form of a name (/C=../CN=..), most significant RDN first."""
    return "".join("/" + rdn.rfc4514_string() for rdn in name.rdns)


@dataclass(frozen=True)
class _Fixture:
    """A devid home with `n` IDevIDs (every tenth revoked), its state exported as openssl's index
    and the manufacturing CA's delegated OCSP responder as PEM files, in `directory`."""

    directory: Path
    home: Path
    ca: x509.Certificate
    leaves: list[x509.Certificate]

    @classmethod
    def make(cls, directory: Path, n: int = 64) -> _Fixture:
        home = init_home(directory / "home", org="Bench", passphrase=PASSPHRASE)
        with open_authority(home, PASSPHRASE) as authority:
            keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(n)]
            requests = [
                IssueRequest(ProfileName.IDEVID, key.public_key(), new_device=NewDevice(f"OCSP-{i:04d}"))
                for i, key in enumerate(keys)
            ]
            leaves = [issued.certificate for issued in authority.issue_many(requests, "bench")]
            for leaf in leaves[9::10]:
                serial = serial_hex(leaf.serial_number)
                revoke(authority, RevokeRequest(Selector.SERIAL, serial, Reason.KEY_COMPROMISE), "bench")
            ca_name = ISSUER_OF[ProfileName.IDEVID]
            entries = StoreStatus(authority.engine).statuses(ca_name, [c.serial_number for c in leaves])
            signer = responder(authority, ca_name)
            ca = authority.cas[ca_name].certificate
        pem = serialization.Encoding.PEM
        (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
        (directory / "signer.pem").write_bytes(signer.certificate.public_bytes(pem))
        (directory / "signer.key").write_bytes(
            signer.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (directory / "index.txt").write_text(
            export_openssl_index(entries.values(), {c.serial_number: c for c in leaves})
        )
        return cls(directory, home.path, ca, leaves)

    def get_path(self, prefix: str) -> str:
        """The RFC 5019 GET path asking for the first (good) certificate."""
        request = ocsp.OCSPRequestBuilder().add_certificate(self.leaves[0], self.ca, hashes.SHA1()).build()
        encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
        return f"{prefix}/{urllib.parse.quote(encoded, safe='')}"


def make_cert(
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    ocsp_signing: bool = False,
) -> x509.Certificate:
    """A certificate valid from five minutes ago for 30 days: a CA, a delegated OCSP signer
    (EKU id-kp-OCSPSigning, id-pkix-ocsp-nocheck) or an end entity."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True
        ).add_extension(x509.OCSPNoCheck(), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@dataclass(frozen=True)
class _Load:
    per_s: float
    cpu_us: float | None


class _Bench:
    def __init__(self, directory: Path, duration: float, connections: int) -> None:
        self.directory = directory
        self.duration = duration
        self.connections = connections
        cpus = sorted(os.sched_getaffinity(0))
        self.server_cpus = [str(cpus[0])]
        self.client_cpus = [str(c) for c in cpus[1:]] or self.server_cpus
        (directory / "noprobe.lua").write_text(_NO_PROBE)

    @contextmanager
    def process(
        self, args: Sequence[str], port: int | None = None, env: Mapping[str, str] | None = None
    ) -> Iterator[tuple[int, int]]:
        """Run a server pinned to the server core; yield (pid, port): the port it printed once
        listening, unless given (then the caller waits for it: a probe would hang openssl)."""
        proc = subprocess.Popen(
            ["taskset", "-c", ",".join(self.server_cpus), *args],
            cwd=self.directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            if port is None:
                port = int(proc.stdout.readline())
            yield proc.pid, port
        finally:
            proc.kill()
            proc.wait()

    def load(self, pid: int, url: str, close: bool) -> _Load:
        """wrk against `url` for `duration` seconds; the rate and the server's CPU µs per response."""
        before = _cpu_seconds(pid)
        args = ["taskset", "-c", ",".join(self.client_cpus), "wrk", "-t1", f"-c{self.connections}"]
        args += [f"-d{self.duration:g}s", "-s", str(self.directory / "noprobe.lua")]
        args += ["-H", "Connection: close"] if close else []
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
        after = _cpu_seconds(pid)
        total = re.search(r"(\d+) requests in", out)
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if total is None or rate is None:
            raise RuntimeError(f"wrk printed no rate:\n{out}")
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if bad is not None:
            raise RuntimeError(f"{bad.group(1)} non-2xx answers from {url}")
        count = int(total.group(1))
        cpu = (after - before) * 1e6 / count if count and before is not None and after is not None else None
        return _Load(float(rate.group(1)), cpu)


def run(duration: float = 5.0, connections: int = 32) -> list[Figure]:
    """Responses per second and server CPU µs per response, ours against `openssl ocsp -index`."""
    for tool in ("wrk", "openssl", "taskset"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"`{tool}` is needed (Debian package {'util-linux' if tool == 'taskset' else tool})"
            )
    with tempfile.TemporaryDirectory(prefix="devid-bench-ocsp-") as tmp:
        directory = Path(tmp)
        fixture = _Fixture.make(directory)
        bench = _Bench(directory, duration, connections)
        figures: list[Figure] = []
        modes = (("new_connection", True), ("keep_alive", False))

        ceiling = _trivial_responder(directory)
        if ceiling is not None:
            with bench.process([str(ceiling)]) as (pid, port):
                for mode, close in modes:
                    rate = bench.load(pid, f"http://127.0.0.1:{port}/", close).per_s
                    note = "wrk against a C responder sending a fixed answer: what wrk can measure here"
                    figures.append(
                        Figure(f"ocsp.load_generator_ceiling.{mode}", rate, "responses/s", note=note)
                    )

        serve = [sys.executable, "-c", "from devid.cli.main import run; run()", "serve"]
        serve += ["--home", str(fixture.home), "--port", "0", "--http-port", str(_free_port())]
        env = {**os.environ, "DEVID_PASSPHRASE": PASSPHRASE.decode()}
        with bench.process(serve, int(serve[-1]), env) as (pid, port):
            url = f"http://127.0.0.1:{port}{fixture.get_path('/ocsp')}"
            _check_good(url, fixture, wait=60)
            ours = {mode: bench.load(pid, url, close) for mode, close in modes}

        port = _free_port()
        openssl_args = [
            "openssl",
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            str(port),
            "-rsigner",
            "signer.pem",
            "-rkey",
            "signer.key",
            "-CA",
            "ca.pem",
            "-ndays",
            "1",
        ]
        with bench.process(openssl_args, port) as (pid, port):
            url = f"http://127.0.0.1:{port}{fixture.get_path('')}"
            _check_good(url, fixture)
            theirs = bench.load(pid, url, close=True)

        version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split()[:2]
        base_name = f"`openssl ocsp -index` ({' '.join(version)}), same CA and core, signs each answer"
        for mode, _close in modes:
            note = "a real `devid serve --http-port` (one worker) answering from its pre-signed cache"
            if mode == "keep_alive":
                note += "; openssl closes every connection (HTTP/1.0): its figure is its per-connection rate"
            figures.append(
                Figure(
                    f"ocsp.responses_per_s.{mode}",
                    ours[mode].per_s,
                    "responses/s",
                    theirs.per_s,
                    base_name,
                    note,
                )
            )
            if ours[mode].cpu_us is not None:
                figures.append(
                    Figure(
                        f"ocsp.server_cpu_us_per_response.{mode}",
                        ours[mode].cpu_us or 0.0,
                        "µs",
                        theirs.cpu_us,
                        base_name,
                    )
                )
        return figures


def _trivial_responder(directory: Path) -> Path | None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    (directory / "trivial.c").write_text(_TRIVIAL_C)
    binary = directory / "trivial"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(directory / "trivial.c")], check=True)
    return binary


def _check_good(url: str, fixture: _Fixture, wait: float = 10.0) -> None:
    """Wait for the server, and refuse to measure one that does not answer `good` for the
    certificate asked."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                response = ocsp.load_der_ocsp_response(answer.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL or (
        response.certificate_status is not ocsp.OCSPCertStatus.GOOD
        or response.serial_number != fixture.leaves[0].serial_number
    ):
        raise RuntimeError(f"{url} does not answer good for the bench certificate")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid`, from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ocsp_request(issuer: x509.Certificate, serial: int) -> bytes:
    """An RFC 5019 request (SHA-1 CertID, no nonce) for `serial` under `issuer`."""
    public = issuer.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    name_hash = hashlib.sha1(issuer.subject.public_bytes()).digest()
    key_hash = hashlib.sha1(
        public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    ).digest()
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1())
    return request.build().public_bytes(serialization.Encoding.DER)
