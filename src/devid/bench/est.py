"""`devid bench est`: full mTLS `simpleenroll` round trips against an EST server.

By default it starts `devid serve` on a throw-away home in its own process (so server and load
generator do not share an interpreter lock), provisions one IDevID per client, and sends CSRs
from distinct keys. With `--server URL` it measures any EST server the same way, given a client
identity and the server's trust anchor. The baseline is the authority's direct issuance rate,
one certificate per call, in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.pki.profiles import ProfileName

PASSPHRASE = b"devid-bench"
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


async def load(
    url: str, contexts: list[ssl.SSLContext], csrs: list[bytes], keep_alive: bool, label: str = ""
) -> tuple[float, list[float], int]:
    """Send every CSR with len(contexts) concurrent clients; (seconds, latencies, failures)."""
    endpoint = f"{url}/.well-known/est{'/' + label if label else ''}/simpleenroll"
    headers = {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"}
    latencies: list[float] = []
    failures = 0
    next_csr = iter(csrs)

    async def client(ctx: ssl.SSLContext) -> None:
        nonlocal failures
        connector = aiohttp.TCPConnector(ssl=ctx, limit=1, force_close=not keep_alive)
        async with aiohttp.ClientSession(connector=connector) as session:
            for body in next_csr:
                start = time.perf_counter()
                async with session.post(endpoint, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client(ctx) for ctx in contexts))
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


def _start_server(home: Path) -> tuple[subprocess.Popen[str], str]:
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


def _figures(
    mode: str, seconds: float, latencies: list[float], failures: int, baseline: float | None, note: str
) -> list[Figure]:
    rate = (len(latencies) - failures) / seconds
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return [
        Figure(
            f"est.enroll_rate_{mode}",
            rate,
            "enrollments/s",
            baseline,
            "authority direct issuance, one call each" if baseline else None,
            f"{note}, {failures} failures",
        ),
        Figure(f"est.enroll_p50_{mode}", q[49] * 1000, "ms"),
        Figure(f"est.enroll_p99_{mode}", q[98] * 1000, "ms"),
    ]


def run_local(clients: int, n: int, modes: list[str]) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-est-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        identities = provision(authority, clients)
        trust = cert_pem(authority.root)
        contexts = [tls_context(trust, ident.chain, ident.key) for ident in identities]
        baseline = direct_rate(authority, make_csrs(min(n, 300)), "BENCH000000")
        results = []
        proc, url = _start_server(home.path)
        try:
            for mode in modes:
                csrs = make_csrs(n)
                asyncio.run(load(url, contexts, make_csrs(min(clients * 2, 50)), mode == "keep-alive"))
                seconds, latencies, failures = asyncio.run(load(url, contexts, csrs, mode == "keep-alive"))
                results += _figures(
                    mode,
                    seconds,
                    latencies,
                    failures,
                    baseline,
                    f"{clients} clients, {n} CSRs from distinct keys, devid serve (1 process)",
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            authority.engine.dispose()
        return results


def run_remote(
    url: str, ca_bundle: Path, cert: Path, key: Path, clients: int, n: int, modes: list[str], label: str
) -> list[Figure]:
    chain = [
        x509.load_pem_x509_certificate(b)
        for b in re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", cert.read_bytes(), re.S
        )
    ]
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey), "the client key must be EC"
    contexts = [tls_context(ca_bundle.read_bytes(), chain, private) for _ in range(clients)]
    results = []
    for mode in modes:
        seconds, latencies, failures = asyncio.run(
            load(url, contexts, make_csrs(n), mode == "keep-alive", label)
        )
        results += _figures(mode, seconds, latencies, failures, None, f"{clients} clients against {url}")
    return results
