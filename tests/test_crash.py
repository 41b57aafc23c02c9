"""Crash safety, by killing for real: `kill -9` the whole `devid serve --workers 2` process group
under enrollment, renewal and revocation load, restart it on the same port, and check that nothing
a client was given is lost: every certificate received is in the store byte for byte, no serial is
doubled, the audit chain verifies, CRL numbers never go back, and every client's retries succeed."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from e2e import devid, ok
from est_helpers import Device, client_context, csr_b64, pem, provision, renewal_csr_b64, save_identity
from event_peers import free_port
from sqlalchemy import func, select
from test_serve import PASSPHRASE, Served, rest_of_output, start_serve

from devid.api import tokens
from devid.authority.setup import init_home, open_authority
from devid.config import Home
from devid.store.engine import make_engine, reading
from devid.store.models import cas, certificates
from devid.store.states import CertificateStatus

DEVICES = 9
CLIENTS = 3
RENEWALS = 2
#: Kill after this many certificates have reached clients (three kills per run).
KILL_AFTER = (5, 12, 19)
RETRY_FOR = 90.0


@dataclass
class Load:
    """What the clients were given, and the retries it took."""

    port: int
    root_pem: Path
    token: str
    received: list[bytes] = field(default_factory=list)
    retries: int = 0
    revoked: int = 0
    in_flight: int = 0
    fallbacks: int = 0
    failed_answers: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Open while clients may start a new operation; the test closes it from a kill until the
    #: restarted server was checked, so the load outlasts every kill (retries in flight go on).
    gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], ctx: ssl.SSLContext
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30)
        with self.lock:
            self.in_flight += 1
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()
            with self.lock:
                self.in_flight -= 1

    def retrying(
        self, attempt: Callable[[], tuple[int, bytes]], done: Callable[[int], bool]
    ) -> tuple[int, bytes]:
        """Call `attempt` until `done(status)`: a dead server (refused, reset) or a 5xx is retried."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                status, body = attempt()
                if done(status):
                    return status, body
                assert status >= 500, (status, body[:300])
                with self.lock:
                    self.failed_answers[status] = self.failed_answers.get(status, 0) + 1
            except (OSError, http.client.HTTPException):
                pass
            assert time.monotonic() < deadline, "a client's retries did not succeed"
            with self.lock:
                self.retries += 1
            time.sleep(0.2)

    def est(
        self, op: str, files: tuple[Path, Path], csr: Callable[[], bytes], idevid: tuple[Path, Path]
    ) -> x509.Certificate:
        """One enrollment, retried; a renewal refused as superseded (its first try committed, the
        kill lost the answer) falls back to the IDevID, as the device agent does."""
        ctx = client_context(self.root_pem, files)
        headers = {"Content-Type": "application/pkcs10"}
        status, body = self.retrying(
            lambda: self.request("POST", f"/.well-known/est/{op}", csr(), headers, ctx),
            lambda s: s in (200, 403),
        )
        if status == 403:
            assert op == "simplereenroll" and b"[client-cert-superseded]" in body, body
            with self.lock:
                self.fallbacks += 1
            return self.est("simpleenroll", idevid, csr, idevid)
        cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]
        with self.lock:
            self.received.append(cert.public_bytes(Encoding.DER))
        return cert

    def revoke(self, serial: str) -> None:
        ctx = client_context(self.root_pem)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        body = json.dumps({"selector": "device", "value": serial, "reason": "keyCompromise"}).encode()
        # 409: a try the kill cut short had revoked it already (the answer was lost, not the record).
        self.retrying(
            lambda: self.request("POST", "/api/v1/revocations", body, headers, ctx), lambda s: s in (201, 409)
        )
        with self.lock:
            self.revoked += 1

    def device_life(self, dev: Device, work: Path, index: int) -> None:
        """Enroll with the IDevID, renew RENEWALS times with the LDevID, revoke every third device."""
        key = ec.generate_private_key(ec.SECP256R1())
        self.gate.wait()
        cert = self.est("simpleenroll", dev.idevid_files, lambda: csr_b64(key), dev.idevid_files)
        for n in range(RENEWALS):
            files = save_identity(dev.directory, f"ldevid{n}", cert, key)
            key, current = ec.generate_private_key(ec.SECP256R1()), cert
            csr = functools.partial(renewal_csr_b64, key, current)
            self.gate.wait()
            cert = self.est("simplereenroll", files, csr, dev.idevid_files)
        if index % 3 == 0:
            self.gate.wait()
            self.revoke(dev.serial)


def _serve(home: Home, port: int, http_port: int) -> Served:
    return start_serve(
        home.path, "--port", str(port), "--http-port", str(http_port), "--workers", "2", session=True
    )


def _kill_group(served: Served) -> None:
    os.killpg(served.proc.pid, signal.SIGKILL)
    served.proc.wait(timeout=30)
    # The workers are gone too (same group): the port is free for the restart.
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(served.proc.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "workers survived kill -9 of their group"
        time.sleep(0.05)


def _crl_numbers(home: Home) -> dict[str, int]:
    """The last CRL number of each CA, as the store has it."""
    engine = make_engine(home.config.db_url)
    try:
        with reading(engine) as conn:
            return {name: number for name, number in conn.execute(select(cas.c.name, cas.c.crl_number))}
    finally:
        engine.dispose()


def _published_crl_number(http_port: int) -> int:
    """The served full CRL's number (0 before the first is published)."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
    try:
        conn.request("GET", "/crl/operational.crl")
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 404:
            return 0
        assert resp.status == 200, data
        crl = x509.load_der_x509_crl(data)
    finally:
        conn.close()
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_kill_9_the_whole_server_under_load_loses_nothing(tmp_path: Path, db_url: str | None) -> None:
    # A public URL: certificates name CRL partitions, so revocations publish CRLs.
    home = init_home(
        tmp_path / "H", org="Acme", passphrase=PASSPHRASE, db_url=db_url, public_url="http://127.0.0.1:1"
    )
    auth = open_authority(home, PASSPHRASE)
    try:
        root_pem = tmp_path / "root.pem"
        root_pem.write_bytes(pem(auth.root))
        devices = [provision(auth, f"SN-CRASH-{i}", tmp_path / "devices") for i in range(DEVICES)]
        token, _ = tokens.create(auth, "crash", "admin", auth.clock.now())
    finally:
        auth.engine.dispose()
    port, http_port = free_port(), free_port()
    load = Load(port, root_pem, token)
    served = _serve(home, port, http_port)
    failures: list[BaseException] = []

    def client(mine: list[int]) -> None:
        try:
            for i in mine:
                load.device_life(devices[i], tmp_path, i)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [
        threading.Thread(target=client, args=(list(range(c, DEVICES, CLIENTS)),)) for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    crl_seen = [_published_crl_number(http_port)]
    db_crl_seen = [_crl_numbers(home)]
    kills = 0
    cut: list[int] = []  # requests in flight at each kill
    restarts: list[float] = []
    try:
        for after in KILL_AFTER:
            while len(load.received) < after and any(t.is_alive() for t in threads):
                time.sleep(0.02)
            if not any(t.is_alive() for t in threads):
                break
            crl_seen.append(_published_crl_number(http_port))
            cut.append(load.in_flight)
            load.gate.clear()
            _kill_group(served)
            kills += 1
            db_crl_seen.append(_crl_numbers(home))
            restart = time.monotonic()
            served = _serve(home, port, http_port)
            restarts.append(time.monotonic() - restart)
            crl_seen.append(_published_crl_number(http_port))
            load.gate.set()
        for t in threads:
            t.join(timeout=RETRY_FOR * 2)
        assert not failures, failures
        crl_seen.append(_published_crl_number(http_port))
        assert served.stop() == 0
    finally:
        load.gate.set()
        if served.proc.poll() is None:
            os.killpg(served.proc.pid, signal.SIGKILL)
            served.proc.wait()
    rest_of_output(served)
    assert kills == len(KILL_AFTER), f"load finished after {kills} kills: make it longer"
    assert len(load.received) == DEVICES * (1 + RENEWALS)
    assert load.revoked == len(range(0, DEVICES, 3))
    assert load.retries > 0  # the kills did land on clients

    auth = open_authority(home, PASSPHRASE)
    try:
        with reading(auth.engine) as conn:
            for der in load.received:
                fp = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()
                row = conn.execute(select(certificates.c.der).where(certificates.c.fingerprint == fp)).first()
                assert row is not None and bytes(row.der) == der, f"certificate {fp} lost"
            doubled = conn.execute(
                select(certificates.c.issuer_id, certificates.c.serial)
                .group_by(certificates.c.issuer_id, certificates.c.serial)
                .having(func.count() > 1)
            ).all()
            assert doubled == []
            revoked = conn.execute(
                select(func.count())
                .select_from(certificates)
                .where(certificates.c.status == CertificateStatus.REVOKED)
            ).scalar_one()
    finally:
        auth.engine.dispose()
    assert revoked >= load.revoked
    db_crl_seen.append(_crl_numbers(home))
    assert crl_seen == sorted(crl_seen), crl_seen
    for name in db_crl_seen[0]:
        numbers = [seen[name] for seen in db_crl_seen]
        assert numbers == sorted(numbers), (name, numbers)
    assert "audit chain intact" in ok(devid("audit", "verify", "--home", home.path)).stdout
    print(
        f"kills: {kills}, in flight at each: {cut}, retries: {load.retries}, 5xx: {load.failed_answers},"
        f" IDevID fallbacks: {load.fallbacks}, restarts: {[round(r, 1) for r in restarts]} s,"
        f" certificates received: {len(load.received)}, revocations: {load.revoked}, lost: 0"
    )
