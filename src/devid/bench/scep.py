"""`devid bench scep`: SCEP enrollments beside EST enrollments, against one `devid serve` in the
same run.

A throw-away home gets a label opted into RSA (`devid scep allow-rsa`), one device and
single-use enrollment secret per SCEP enrollment, and one IDevID per EST client. Every SCEP
enrollment is a PKCSReq from its own key (RSA-2048, or P-256 with `--p256`: then the CertRep
goes back by ECDH key agreement), encrypted to the RA and signed with the key's self-signed
certificate, POSTed on a new TLS connection; the CertRep is checked afterwards
(SUCCESS, the certificate for that key). The requests are built before the clock starts, as a
device would have them ready, so the figure is the server's: RA decryption, the secret's check and
spending, issuance, and the CertRep's encryption and RA signature. The EST baseline is `devid
bench est`'s fresh-connection load (mTLS with the IDevID, a P-256 CSR each) on the same server.
"""

from __future__ import annotations

import http.client
import ssl
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devid.authority.core import Authority
from devid.authority.devices import create_enrollment_secret
from devid.authority.policy import LabelPolicy, RenewalPolicy
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.scep_ra import registration_authority
from devid.authority.scep_rsa import set_scep_rsa
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench.est import PASSPHRASE, Run, _start_server, make_csrs, provision, timed_load
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.pki.profiles import ProfileName
from devid.scep import client
from devid.scep.status import PkiStatus
from devid.store.engine import make_engine

LABEL = "scep-bench"


@dataclass(frozen=True)
class _Prepared:
    body: bytes
    signer: client.Signer
    nonce: bytes


def _key(p256: bool) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if p256 else rsa.generate_private_key(65537, 2048)


def _prepare(authority: Authority, n: int, prefix: str, p256: bool) -> list[_Prepared]:
    """`n` devices, each with an enrollment secret and a ready PKCSReq from its own key."""
    serials = [f"{prefix}{i:06d}" for i in range(n)]
    keys = [_key(p256) for _ in serials]
    # Devices exist before their secrets: registered with an IDevID, as a factory line would.
    authority.issue_many(
        [
            IssueRequest(
                ProfileName.IDEVID,
                ec.generate_private_key(ec.SECP256R1()).public_key(),
                new_device=NewDevice(s),
            )
            for s in serials
        ],
        "bench",
    )
    ra = registration_authority(authority).certificate
    out = []
    for serial, key in zip(serials, keys, strict=True):
        secret = create_enrollment_secret(authority, serial, "bench")
        signer = client.Signer.self_signed(key, serial)
        body, _, nonce = client.request(client.csr(key, serial, secret), signer, ra)
        out.append(_Prepared(body, signer, nonce))
    return out


def _scep_load(
    url: str, trust: ssl.SSLContext, prepared: list[_Prepared], clients: int
) -> tuple[Run, list[bytes]]:
    """POST each PKCSReq on a new TLS connection, `clients` at a time; (run, answers)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    path = f"{parts.path.rstrip('/')}/scep/{LABEL}?operation=PKIOperation"
    answers: list[bytes] = [b""] * len(prepared)
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    pending = iter(enumerate(prepared))

    def worker() -> None:
        nonlocal failures
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            index, request = item
            start = time.perf_counter()
            conn = http.client.HTTPSConnection(host, port, context=trust, timeout=60)
            try:
                conn.request(
                    "POST", path, body=request.body, headers={"Content-Type": "application/x-pki-message"}
                )
                resp = conn.getresponse()
                body, ok = resp.read(), resp.status == 200
            except OSError:
                body, ok = b"", False
            finally:
                conn.close()
            with lock:
                latencies.append(time.perf_counter() - start)
                answers[index] = body
                failures += not ok

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    cpu, start = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Run(time.perf_counter() - start, latencies, failures, time.process_time() - cpu), answers


def _issued(prepared: list[_Prepared], answers: list[bytes], ra: x509.Certificate) -> int:
    """How many CertReps are SUCCESS with a certificate for their request's key."""
    done = 0
    for request, answer in zip(prepared, answers, strict=True):
        try:
            reply = client.reply(answer, request.signer, ra, request.nonce)
        except ValueError:
            continue
        done += (
            reply.status is PkiStatus.SUCCESS
            and reply.certificate is not None
            and reply.certificate.public_key() == request.signer.key.public_key()
        )
    return done


def run(clients: int, n: int, p256: bool = False) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-scep-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        home.config.est_labels[LABEL] = LabelPolicy(
            LABEL, RenewalPolicy.RENEW, timedelta(days=30)
        ).to_config()
        home.save()
        set_scep_rsa(home, make_engine(home.config.db_url), LABEL, True, actor="bench", now=_now())
        authority = open_authority(home, PASSPHRASE)
        identities = provision(authority, clients)
        warm = min(clients * 2, 50)
        prepared = _prepare(authority, warm + n, "SCEP", p256)
        ra = registration_authority(authority).certificate
        trust = cert_pem(authority.root)
        contexts = [tls_context(trust, ident.chain, ident.key) for ident in identities]
        plain = ssl.create_default_context(cadata=trust.decode())
        proc, url = _start_server(home.path, 1, "--max-per-address", "0")
        try:
            # Warm both paths, then the timed runs, EST first.
            timed_load(url, contexts, make_csrs(warm), False)
            est = timed_load(url, contexts, make_csrs(n), False)
            _scep_load(url, plain, prepared[:warm], clients)
            scep, answers = _scep_load(url, plain, prepared[warm:], clients)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            authority.close()
    issued = _issued(prepared[warm:], answers, ra)
    note = (
        f"{clients} clients, {n} enrollments per protocol, a new TLS connection each, "
        f"devid serve (1 process); SCEP: {issued}/{n} CertReps SUCCESS with the requested key, "
        + ("P-256 device keys (key agreement)" if p256 else "RSA-2048 device keys")
    )
    return [
        Figure(
            "scep.enroll_rate",
            issued / scep.seconds,
            "enrollments/s",
            est.rate,
            "EST simpleenroll (mTLS IDevID, P-256 CSR), same server and run",
            f"{note}; EST failures: {est.failures}",
        ),
        Figure("scep.enroll_p50", scep.percentile_ms(50), "ms", est.percentile_ms(50), "EST p50"),
        Figure("scep.enroll_p99", scep.percentile_ms(99), "ms", est.percentile_ms(99), "EST p99"),
    ]


def _now() -> datetime:
    return datetime.now(UTC)
