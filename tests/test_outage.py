"""A database outage under a running `devid serve`, on a private PostgreSQL cluster this test starts
and stops (never the shared one): requests fail fast with 503 and Retry-After, nothing is half
written, OCSP and CRLs are answered from cache, and service resumes by itself when the database
returns."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from e2e import devid, ok
from est_helpers import client_context, csr_b64, pem, provision
from event_peers import free_port
from sqlalchemy import func, select
from test_serve import PASSPHRASE, start_serve

from devid.api import tokens
from devid.authority.setup import init_home, open_authority
from devid.server.app import OCSP_REFRESH_EVERY
from devid.store.engine import make_engine, reading
from devid.store.models import audit_events, certificates, devices

#: Seconds an outage may take to answer (the issue's bound).
FAIL_FAST = 1.0


@dataclass(frozen=True)
class Cluster:
    """A private PostgreSQL cluster: its data directory and port."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.data / "log"), "-o", options, *args)


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin): scripts/test.sh installs them"
        )
    return found[-1].parent


def _as_postgres(program: str, *args: str) -> None:
    """Run a PostgreSQL program, as the postgres user when we are root (the server refuses root)."""
    command = [str(_pg_bin() / program), *args]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (command, result.stdout, result.stderr)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="devid-pg-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    found = Cluster(base / "data", free_port())
    _as_postgres("initdb", "-D", str(found.data), "-A", "trust", "-U", "postgres", "--no-sync")
    found.ctl("start")
    try:
        yield found
    finally:
        subprocess.run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(found.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            user="postgres" if os.geteuid() == 0 else None,
        )
        shutil.rmtree(base, ignore_errors=True)


def _https(
    port: int,
    root_pem: Path,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes, float]:
    """One request over a fresh TLS connection: status, headers, body and the seconds it took."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(root_pem, cert), timeout=30)
    conn.connect()  # the handshake is not the answer's time
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read(), time.monotonic() - start
    finally:
        conn.close()


def _plain(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": "application/ocsp-request"} if body else {}
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    try:
        with reading(engine) as conn:
            return tuple(  # type: ignore[return-value]
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (certificates, devices, audit_events)
            )
    finally:
        engine.dispose()


def test_database_outage_answers_503_fast_serves_status_from_cache_and_recovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    home = init_home(
        tmp_path / "H", org="Acme", passphrase=PASSPHRASE, db_url=cluster.url, public_url="http://127.0.0.1:1"
    )
    auth = open_authority(home, PASSPHRASE)
    try:
        root_pem = tmp_path / "root.pem"
        root_pem.write_bytes(pem(auth.root))
        kept, gone = (provision(auth, serial, tmp_path / "devices") for serial in ("SN-OUT-1", "SN-OUT-2"))
        token, _ = tokens.create(auth, "ops", "admin", auth.clock.now())
        issuer = auth.cas["manufacturing"].certificate
    finally:
        auth.engine.dispose()
    http_port = free_port()
    served = start_serve(home.path, "--http-port", str(http_port), "--workers", "2")
    api = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    est = {"Content-Type": "application/pkcs10"}
    try:
        revoked = json.dumps({"selector": "device", "value": gone.serial}).encode()
        assert _https(served.port, root_pem, "POST", "/api/v1/revocations", revoked, api)[0] == 201
        deadline = time.monotonic() + 30
        while (crl := _plain(http_port, "GET", "/crl/manufacturing.crl"))[0] != 200:
            assert time.monotonic() < deadline, crl
            time.sleep(0.2)
        # Every worker reloads the published status data within a second of a change: wait for all.
        time.sleep(2 * OCSP_REFRESH_EVERY)
        query = ocsp.OCSPRequestBuilder().add_certificate(gone.idevid, issuer, hashes.SHA1()).build()
        # Each worker signs and keeps the answers it gave: ask on enough fresh connections that both
        # workers (the kernel spreads connections over them) hold this one.
        for _ in range(16):
            ocsp_before = _plain(http_port, "POST", "/ocsp", query.public_bytes(Encoding.DER))
            assert ocsp_before[0] == 200
        before = _counts(cluster.url)

        cluster.ctl("-m", "fast", "stop")
        csr = csr_b64(ec.generate_private_key(ec.SECP256R1()))
        slowest = 0.0
        for _ in range(2):  # each worker, most likely, and its pool's stale connections
            status, headers, body, took = _https(
                served.port, root_pem, "POST", "/.well-known/est/simpleenroll", csr, est, kept.idevid_files
            )
            assert status == 503 and int(headers["Retry-After"]) >= 1, body
            assert headers["Devid-Error"] == "store-unavailable"
            status, headers, body, took_api = _https(
                served.port, root_pem, "GET", "/api/v1/devices", None, api
            )
            assert status == 503 and int(headers["Retry-After"]) >= 1, body
            assert json.loads(body)["error"]["code"] == "store-unavailable"
            slowest = max(slowest, took, took_api)
        assert slowest <= FAIL_FAST, slowest
        # Relying parties still get the published status: the same CRL and OCSP answers.
        assert _plain(http_port, "GET", "/crl/manufacturing.crl") == crl
        during = _plain(http_port, "POST", "/ocsp", query.public_bytes(Encoding.DER))
        assert during[0] == 200
        answer = ocsp.load_der_ocsp_response(during[1])
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED

        cluster.ctl("start")
        back = time.monotonic()
        while True:
            status, _, body, _ = _https(
                served.port, root_pem, "POST", "/.well-known/est/simpleenroll", csr, est, kept.idevid_files
            )
            if status == 200:
                break
            assert status == 503 and time.monotonic() - back < 30, body
            time.sleep(0.1)
        recovered = time.monotonic() - back
        assert served.stop() == 0, served.proc.stderr.read() if served.proc.stderr else ""
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    # Nothing half-written by the refused requests: one certificate more (the enrollment after the
    # outage), the same devices, and the audit chain intact.
    after = _counts(cluster.url)
    assert (after[0], after[1]) == (before[0] + 1, before[1])
    assert "audit chain intact" in ok(devid("audit", "verify", "--home", home.path)).stdout
    print(f"outage: slowest 503 {slowest * 1000:.0f} ms, back {recovered:.2f} s after the database")
