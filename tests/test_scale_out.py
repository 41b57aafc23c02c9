"""Scale-out: two `devid serve --workers 2` (two homes standing in for two machines) on one
PostgreSQL database issue concurrently with no duplicate serial and every certificate a client
received recorded once, publish CRLs from one number sequence, deliver each event once (the duties'
lease), hold an API token's rate limit across all four processes, and see each other's changes."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from event_peers import Receiver, receiver  # noqa: F401
from sqlalchemy import func, select
from test_serve import Served, start_serve

from devid.api import tokens
from devid.authority.setup import init_home, open_authority
from devid.bench.est import make_csrs
from devid.bench.est import provision as provision_identities
from devid.config import Home
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.registry import sinks
from devid.revocation import crl
from devid.store.engine import make_engine
from devid.store.models import certificates, event_sinks, events, published

PASSPHRASE = b"correct horse battery staple"
DEVICES = 16
ENROLLMENTS = 48
RATE = 6


@contextmanager
def serving(*homes: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    try:
        for home in homes:  # one after the other: each issues its own TLS certificate at start
            started.append(start_serve(home, "--workers", "2", "--max-per-address", "0"))
        yield started
    finally:
        for srv in started:
            srv.proc.terminate()
        for srv in started:
            srv.proc.wait(60)


def enroll(port: int, ctx: ssl.SSLContext, csr: bytes) -> x509.Certificate:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    try:
        conn.request("POST", "/.well-known/est/simpleenroll", csr, {"Content-Type": "application/pkcs10"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]
    finally:
        conn.close()


def api(port: int, trust: ssl.SSLContext, token: str, method: str, path: str, body: object = None) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=trust, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, f"/api/v1{path}", data, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_two_servers_on_one_postgresql(pg_url: str, tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    first = init_home(tmp_path / "a", org="Acme", passphrase=PASSPHRASE, db_url=pg_url)
    second = tmp_path / "b"
    shutil.copytree(first.path, second)  # the same keys and store URL: a second machine
    authority = open_authority(first, PASSPHRASE)
    try:
        identities = provision_identities(authority, DEVICES)
        trust_pem = cert_pem(authority.root)
        now = datetime.now(UTC)
        sinks.add(
            authority.engine,
            "hook",
            "webhook",
            receiver.url,
            None,
            key=authority.credentials,
            actor="t",
            now=now,
        )
        with authority.engine.connect() as conn:
            cursor = conn.execute(select(event_sinks.c.cursor)).scalar_one()
        admin, _ = tokens.create(authority, "ops", "admin", now, rate_per_minute=1000)
        limited, _ = tokens.create(authority, "script", "auditor", now, rate_per_minute=RATE)
    finally:
        authority.close()
    devices = [tls_context(trust_pem, i.chain, i.key) for i in identities]
    trust = tls_context(trust_pem)
    engine = make_engine(first.config.db_url)
    try:
        with serving(first.path, second) as servers:
            ports = [s.port for s in servers]
            csrs = make_csrs(ENROLLMENTS)
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                received = list(
                    pool.map(
                        lambda i: enroll(ports[i % 2], devices[i % DEVICES], csrs[i]), range(ENROLLMENTS)
                    )
                )
            rate = ENROLLMENTS / (time.monotonic() - started)
            print(f"scale-out: {rate:.1f} enrollments/s on two servers with two workers each")
            serials = [format(c.serial_number, "x") for c in received]
            assert len(set(serials)) == ENROLLMENTS
            with engine.connect() as conn:
                stored = conn.execute(
                    select(certificates.c.serial, func.count())
                    .where(certificates.c.serial.in_(serials))
                    .group_by(certificates.c.serial)
                ).all()
                (total,) = conn.execute(select(func.count()).select_from(certificates)).one()
                (distinct,) = conn.execute(select(func.count(certificates.c.serial.distinct()))).one()
            assert sorted(s for s, _ in stored) == sorted(serials)  # every one received is recorded...
            assert all(n == 1 for _, n in stored)  # ...once
            assert total == distinct  # and no serial anywhere twice

            # Revocations on both servers at once: each makes one event per certificate.
            revoke = [{"selector": "serial", "value": s, "reason": "keyCompromise"} for s in serials[:8]]
            with ThreadPoolExecutor(4) as pool:
                statuses = list(
                    pool.map(
                        lambda i: api(ports[i % 2], trust, admin, "POST", "/revocations", revoke[i]),
                        range(len(revoke)),
                    )
                )
            assert statuses == [201] * len(revoke)
            with engine.connect() as conn:
                outbox = conn.execute(select(events.c.id).where(events.c.id > cursor)).scalars().all()
            assert len(outbox) >= len(revoke)
            receiver.wait_for(len(outbox))
            time.sleep(3)  # time for a second dispatcher, if there were one, to send them again
            assert sorted(e["id"] for e in receiver.events) == sorted(outbox)  # each once

            # CRLs built by both machines and the publisher meanwhile: one sequence, no number twice.
            def build(home: Path) -> None:
                auth = open_authority(Home.load(home), PASSPHRASE)
                try:
                    for _ in range(3):
                        crl.build(auth, "operational")
                finally:
                    auth.close()

            threads = [threading.Thread(target=build, args=(h,)) for h in (first.path, second)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            with engine.connect() as conn:  # full, delta and shard CRLs share the CA's sequence
                numbers = (
                    conn.execute(
                        select(published.c.number).where(
                            published.c.kind.in_((crl.FULL, crl.DELTA)),
                            published.c.scope.startswith("operational"),
                        )
                    )
                    .scalars()
                    .all()
                )
            assert len(numbers) >= 6 and len(numbers) == len(set(numbers)), sorted(numbers)

            # One token's limit across four processes on two machines: a burst gets no more than it.
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(lambda i: api(ports[i % 2], trust, limited, "GET", "/cas"), range(4 * RATE))
                )
            assert answers.count(200) <= RATE + 1 and set(answers) <= {200, 429}, answers

            # A change made through one machine holds on the other at once: a token revoked on the
            # first is refused by the second.
            assert api(ports[0], trust, admin, "DELETE", "/api-tokens/script") == 200
            assert api(ports[1], trust, limited, "GET", "/cas") == 401
    finally:
        engine.dispose()
