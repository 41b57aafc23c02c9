"""Failover: a PostgreSQL primary with a synchronous streaming replica (two private clusters on
this machine, started here). Under enrollment load the primary is stopped and the replica
promoted; `devid serve`, given both hosts in one URL with `target_session_attrs=read-write`,
reconnects by itself, and every certificate a client received before the failover is on the new
primary."""

from __future__ import annotations

import base64
import contextlib
import glob
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7
from sqlalchemy import create_engine, select, text
from test_serve import start_serve

from devid.authority.setup import init_home, open_authority
from devid.bench.est import make_csrs
from devid.bench.est import provision as provision_identities
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.store.models import certificates

PASSPHRASE = b"correct horse battery staple"
CLIENTS = 4


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        pytest.fail(f"PostgreSQL's {tool} is not installed (scripts/test.sh installs postgresql)")
    return found[-1]


def _pg(tool: str, *args: str | Path) -> None:
    """Run a PostgreSQL server tool, as the postgres user when we are root (initdb refuses root)."""
    argv = [_bin(tool), *map(str, args)]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    data: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, *settings: str) -> None:
        options = " ".join([f"-p {self.port}", f"-k {self.data}", "-c listen_addresses=127.0.0.1", *settings])
        _pg("pg_ctl", "-D", self.data, "-w", "-l", self.data / "log", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        _pg("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """A primary and its synchronous streaming replica (application name `replica`)."""
    # Not under $TMPDIR: CI makes it private to root, and the clusters run as the postgres user.
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="devid-failover-", dir=shm if shm.is_dir() else None))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    primary, replica = Cluster(base / "primary", _free_port()), Cluster(base / "replica", _free_port())
    started: list[Cluster] = []
    try:
        _pg("initdb", "-D", primary.data, "-U", "postgres", "--auth=trust", "--no-sync")
        # Synchronous commit waits for the replica: a commit acknowledged to devid is on both.
        # Set on the command line, not in the data directory, so the promoted replica has no
        # standby to wait for.
        primary.start("-c wal_level=replica", "-c synchronous_standby_names=replica", "-c fsync=off")
        started.append(primary)
        _pg(
            "pg_basebackup", "-h", "127.0.0.1", "-p", primary.port, "-U", "postgres", "-D", replica.data, "-R"
        )
        with (replica.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres "
                "application_name=replica'\n"
            )
        replica.start("-c fsync=off")
        started.append(replica)
        admin = create_engine(primary.url(), isolation_level="AUTOCOMMIT")
        try:
            deadline = time.monotonic() + 60
            while True:
                with admin.connect() as conn:
                    state = conn.execute(text("SELECT sync_state FROM pg_stat_replication")).scalar()
                if state == "sync":
                    break
                assert time.monotonic() < deadline, f"the replica did not become synchronous ({state})"
                time.sleep(0.2)
            with admin.connect() as conn:
                conn.execute(text("CREATE DATABASE devid"))
        finally:
            admin.dispose()
        yield primary, replica
    finally:
        for cluster in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):  # stopped by the test already
                cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _enroll(port: int, ctx: ssl.SSLContext, csr: bytes) -> str | None:
    """One enrollment; the serial the client received, or None (a refusal or a cut connection)."""
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        try:
            conn.request("POST", "/.well-known/est/simpleenroll", csr, {"Content-Type": "application/pkcs10"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    except OSError:
        return None
    if resp.status != 200:
        return None
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]
    return format(cert.serial_number, "x")


def test_failover_to_a_promoted_synchronous_replica_loses_no_certificate(
    clusters: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    primary, replica = clusters
    both = (
        f"postgresql+psycopg://postgres@/devid?host=127.0.0.1:{primary.port}"
        f"&host=127.0.0.1:{replica.port}&target_session_attrs=read-write"
    )
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE, db_url=both)
    authority = open_authority(home, PASSPHRASE)
    try:
        identities = provision_identities(authority, CLIENTS)
        trust_pem = cert_pem(authority.root)
    finally:
        authority.close()
    devices = [tls_context(trust_pem, i.chain, i.key) for i in identities]
    served = start_serve(home.path, "--max-per-address", "0")
    received: list[tuple[float, float, str]] = []  # (started, answered, serial)
    failed: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(ctx: ssl.SSLContext) -> None:
        while not stop.is_set():
            began = time.monotonic()
            serial = _enroll(served.port, ctx, make_csrs(1)[0])
            with lock:
                if serial is None:
                    failed.append(time.monotonic())
                else:
                    received.append((began, time.monotonic(), serial))
            if serial is None:
                time.sleep(0.2)  # a client's retry

    threads = [threading.Thread(target=client, args=(ctx,)) for ctx in devices]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(received) < 20:
            assert time.monotonic() < deadline, f"no load before the failover: {len(received)}, {len(failed)}"
            time.sleep(0.1)
        stopped = time.monotonic()
        primary.stop("immediate")  # the primary's machine is gone
        gone = time.monotonic()
        _pg("pg_ctl", "-D", replica.data, "-w", "promote")
        # Service is back with the first enrollment asked after the primary was gone that succeeds.
        while not any(began > gone for began, _, _ in received):
            assert time.monotonic() - stopped < 60, "devid did not reconnect to the promoted replica"
            time.sleep(0.05)
        recovered = min(at for began, at, _ in received if began > gone) - stopped
        time.sleep(2)  # load goes on against the new primary
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        served.proc.terminate()
        served.proc.wait(60)
    before = [s for _, at, s in received if at <= stopped]
    after = [s for _, at, s in received if at > stopped]
    new_primary = create_engine(replica.url("devid"))
    try:
        with new_primary.connect() as conn:
            stored = set(conn.execute(select(certificates.c.serial)).scalars())
    finally:
        new_primary.dispose()
    lost = [s for s in before + after if s not in stored]
    print(
        f"failover: {len(before)} certificates before, {len(after)} after, "
        f"{len(failed)} failed attempts, service back {recovered:.2f} s after the primary stopped, "
        f"{len(lost)} lost"
    )
    assert lost == []
    assert len(set(before + after)) == len(before + after)
