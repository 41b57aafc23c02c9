"""SCEP (RFC 8894) end to end: micromdm's scepclient (Debian's `scep` package) enrolling with a
single-use enrollment secret and renewing with its certificate, against the real server over
TLS; GetCACaps/GetCACert checked with curl and openssl; P-256 requesters answered by ECDH key
agreement that `openssl cms -decrypt` opens; CertPoll of a PENDING PKCSReq completing once
approved; failures answered as CertRep FAILURE with nothing changed."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import PASSPHRASE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from est_helpers import EstServer, Response, https, provision, running_server
from sqlalchemy import func, select

from devid.authority.core import Authority
from devid.authority.credential_key import SEALED_PREFIX
from devid.authority.devices import SECRET_TTL, approve, create_enrollment_secret
from devid.authority.policy import LabelPolicy, RenewalPolicy
from devid.authority.scep_ra import registration_authority
from devid.authority.scep_rsa import set_scep_rsa
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import ProfileName
from devid.scep import client
from devid.scep.envelope import envelope, open_envelope
from devid.scep.message import Reply, read_message, signed
from devid.scep.status import FailInfo, MessageType, PkiStatus
from devid.store.engine import make_engine, reading
from devid.store.models import audit_events, certificates, enrollment_secrets, scep_transactions

pytestmark = pytest.mark.skipif(shutil.which("scepclient") is None, reason="Debian package scep missing")

LABEL = "legacy"
#: A label whose enrollments wait for an operator's approval.
HELD = "held"


@dataclass
class Scep:
    server: EstServer
    authority: Authority
    home: Home
    ra_fingerprint: str

    def url(self, label: str = LABEL) -> str:
        return f"{self.server.url}/scep/{label}" if label else f"{self.server.url}/scep"


@contextmanager
def serving(home: Home, clock: FixedClock, work: Path) -> Iterator[Scep]:
    """The real server for `home`, with LABEL and HELD opted into RSA."""
    labels = home.config.est_labels
    labels[LABEL] = LabelPolicy(LABEL, RenewalPolicy.RENEW, timedelta(days=90)).to_config()
    labels[HELD] = LabelPolicy(HELD, RenewalPolicy.RENEW, timedelta(days=90), approval=True).to_config()
    home.save()
    engine = make_engine(home.config.db_url)
    for label in (LABEL, HELD):
        set_scep_rsa(home, engine, label, True, actor="test", now=clock.now())
    engine.dispose()
    authority = open_authority(home, PASSPHRASE, clock=clock)
    try:
        ra = registration_authority(authority)
        with running_server(authority, work) as server:
            yield Scep(server, authority, home, ra.certificate.fingerprint(hashes.SHA256()).hex())
    finally:
        authority.close()


@pytest.fixture
def scep(sqlite_home: Home, clock: FixedClock, tmp_path: Path) -> Iterator[Scep]:
    with serving(sqlite_home, clock, tmp_path / "server") as running:
        yield running


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


# --- GetCACaps / GetCACert with curl and openssl ---------------------------------------------


def test_getcacaps_and_getcacert_with_curl_and_openssl(scep: Scep, tmp_path: Path) -> None:
    caps = subprocess.run(
        ["curl", "-sf", "--cacert", str(scep.server.root_pem), f"{scep.url()}?operation=GetCACaps"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert caps.stdout.split() == ["POSTPKIOperation", "SHA-256", "AES", "Renewal"]
    der = tmp_path / "ca.p7"
    got = subprocess.run(
        ["curl", "-sf", "-D", "-", "-o", str(der), "--cacert", str(scep.server.root_pem),
         f"{scep.url('')}?operation=GetCACert"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "application/x-x509-ca-ra-cert" in got.stdout
    printed = subprocess.run(
        ["openssl", "pkcs7", "-inform", "DER", "-in", str(der), "-print_certs"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ra = registration_authority(scep.authority)
    assert set(x509.load_pem_x509_certificates(printed.stdout.encode())) == {ra.certificate, *ra.chain}
    # RFC 8894 4.2.1.2: the RA certificate first.
    assert client.ca_certificates(der.read_bytes()) == [ra.certificate, *ra.chain]
    assert ra.chain[-1] == scep.authority.root
    assert isinstance(ra.certificate.public_key(), rsa.RSAPublicKey)
    usage = ra.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and usage.digital_signature and not usage.key_cert_sign


def test_ra_is_recorded_and_made_once(scep: Scep) -> None:
    again = open_authority(scep.home, PASSPHRASE)
    try:
        assert registration_authority(again).certificate == registration_authority(scep.authority).certificate
    finally:
        again.close()
    assert count(scep.authority, certificates, certificates.c.profile == ProfileName.SCEP_RA.value) == 1


# --- failures: a CertRep FAILURE (or HTTP 4xx), nothing changed ---------------------------------


@dataclass
class Attempt:
    """A device with a fresh enrollment secret and an RSA key, ready to send hand-made requests."""

    serial: str
    secret: str
    signer: client.Signer


@pytest.fixture
def attempt(scep: Scep, tmp_path: Path) -> Attempt:
    device = provision(scep.authority, "SCEP-0002", tmp_path / "devices")
    key = rsa.generate_private_key(65537, 2048)
    return Attempt(
        device.serial,
        create_enrollment_secret(scep.authority, device.serial, "test"),
        client.Signer.self_signed(key, "x"),
    )


def post(scep: Scep, body: bytes, label: str = LABEL) -> Response:
    path = f"/scep/{label}?operation=PKIOperation" if label else "/scep?operation=PKIOperation"
    return https(scep.server, "POST", path, body, content_type="application/x-pki-message")


def send(
    scep: Scep,
    attempt: Attempt,
    csr_der: bytes,
    *,
    label: str = LABEL,
    ra: x509.Certificate | None = None,
    message_type: MessageType = MessageType.PKCS_REQ,
    signer: client.Signer | None = None,
) -> Reply:
    ra_cert = registration_authority(scep.authority).certificate
    signer = signer or attempt.signer
    body, _, nonce = client.request(csr_der, signer, ra or ra_cert, message_type)
    answer = post(scep, body, label)
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"] == "application/x-pki-message"
    reply = client.reply(answer.body, signer, ra_cert, nonce)
    # A failure's reason travels beside the CertRep (SCEP has no field for it).
    assert (answer.headers["Devid-Error"] is None) == (reply.status is not PkiStatus.FAILURE)
    return reply


def unchanged(scep: Scep, serial: str) -> tuple[int, int]:
    """(device certificates other than the IDevID, unspent enrollment secrets)."""
    issued = count(scep.authority, certificates, certificates.c.profile.in_(["scep-rsa", "ldevid"]))
    unspent = count(scep.authority, enrollment_secrets, enrollment_secrets.c.used_at.is_(None))
    return issued, unspent


def test_python_client_enrolls(scep: Scep, attempt: Attempt) -> None:
    """The hand-made requests the failure tests start from do enroll when nothing is wrong."""
    answer = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, attempt.secret))
    assert answer.status is PkiStatus.SUCCESS and answer.certificate is not None
    assert answer.certificate.public_key() == attempt.signer.key.public_key()
    assert unchanged(scep, attempt.serial) == (1, 0)


def test_garbage_cms_is_400(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    for body in (b"", b"\x30\x03\x02\x01\x00", os.urandom(300), b"-----BEGIN PKCS7-----\n"):
        answer = post(scep, body)
        assert answer.status == 400, answer.text
        assert "scep-message" in answer.text
    assert unchanged(scep, attempt.serial) == before


def test_oversize_message_is_413(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    answer = post(scep, b"\x30" + b"\x00" * (65 * 1024))
    assert answer.status == 413
    assert unchanged(scep, attempt.serial) == before


def test_request_encrypted_to_another_certificate_fails_bad_message_check(
    scep: Scep, attempt: Attempt
) -> None:
    before = unchanged(scep, attempt.serial)
    stranger = client.Signer.self_signed(rsa.generate_private_key(65537, 2048), "not the RA").certificate
    answer = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, attempt.secret), ra=stranger)
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_MESSAGE_CHECK)
    assert unchanged(scep, attempt.serial) == before


def test_tampered_signature_fails_bad_message_check(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    ra = registration_authority(scep.authority).certificate
    body, _, _ = client.request(
        client.csr(attempt.signer.key, attempt.serial, attempt.secret), attempt.signer, ra
    )
    tampered = body[:-5] + bytes([body[-5] ^ 1]) + body[-4:]  # inside the signature, the last field
    answer = post(scep, tampered)
    assert answer.status == 200
    message = read_message(answer.body)
    assert (message.pki_status, message.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_MESSAGE_CHECK)
    assert unchanged(scep, attempt.serial) == before


def test_wrong_challenge_fails_and_the_secret_stays_usable(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    answer = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, "not-the-secret"))
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_MESSAGE_CHECK)
    ra = registration_authority(scep.authority).certificate
    wrong, _, _ = client.request(client.csr(attempt.signer.key, attempt.serial, "wrong"), attempt.signer, ra)
    assert post(scep, wrong).headers["Devid-Error"] == "enroll-secret"
    missing = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, None))
    assert (missing.status, missing.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_REQUEST)
    assert unchanged(scep, attempt.serial) == before
    assert ("scep.simpleenroll", "refused") in [(a, o) for a, o, _ in events(scep.authority)]
    ok = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, attempt.secret))
    assert ok.status is PkiStatus.SUCCESS


def test_reused_challenge_fails(scep: Scep, attempt: Attempt) -> None:
    csr_der = client.csr(attempt.signer.key, attempt.serial, attempt.secret)
    assert send(scep, attempt, csr_der).status is PkiStatus.SUCCESS
    after_first = unchanged(scep, attempt.serial)
    other = client.Signer.self_signed(rsa.generate_private_key(65537, 2048), "y")
    again = send(scep, attempt, client.csr(other.key, attempt.serial, attempt.secret), signer=other)
    assert again.status is PkiStatus.FAILURE
    assert again.fail_info in (FailInfo.BAD_REQUEST, FailInfo.BAD_MESSAGE_CHECK)
    assert unchanged(scep, attempt.serial) == after_first


def test_rsa_key_on_a_label_that_does_not_allow_it_fails_bad_alg(
    scep: Scep, attempt: Attempt, tmp_path: Path
) -> None:
    before = unchanged(scep, attempt.serial)
    answer = send(scep, attempt, client.csr(attempt.signer.key, attempt.serial, attempt.secret), label="")
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_ALG)
    assert unchanged(scep, attempt.serial) == before
    # micromdm's client says so too, on the base label (ECC only).
    done = scepclient(scep, tmp_path / "c", "-cn", attempt.serial, "-challenge", attempt.secret, label="")
    assert done.returncode != 0 and "badAlg" in done.stdout, done.stdout + done.stderr
    assert unchanged(scep, attempt.serial) == before


def test_rsa_1024_is_refused_even_where_rsa_is_allowed(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    weak = rsa.generate_private_key(65537, 1024)
    answer = send(scep, attempt, client.csr(weak, attempt.serial, attempt.secret))
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_ALG)
    assert unchanged(scep, attempt.serial) == before


def poll_body(scep: Scep, signer: client.Signer) -> bytes:
    ca = registration_authority(scep.authority).chain[0]
    return client.issuer_and_subject(ca.subject, signer.certificate.subject)


def test_unknown_transaction_polled_fails_bad_cert_id(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    answer = send(scep, attempt, poll_body(scep, attempt.signer), message_type=MessageType.CERT_POLL)
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_CERT_ID)
    assert unchanged(scep, attempt.serial) == before
    assert count(scep.authority, scep_transactions) == 0


def test_unknown_label_and_operation_are_404_and_400(scep: Scep) -> None:
    assert https(scep.server, "GET", "/scep/nope?operation=GetCACaps").status == 404
    assert https(scep.server, "GET", "/scep?operation=Frobnicate").status == 400


def test_allow_rsa_and_deny_rsa_are_stored_and_audited(scep: Scep, tmp_path: Path) -> None:
    home = Home.load(scep.home.path)
    engine = make_engine(home.config.db_url)
    assert LabelPolicy.from_config(LABEL, home.config.est_labels[LABEL]).scep_rsa
    cli = ["devid", "scep", "deny-rsa", LABEL, "--home", str(home.path)]
    done = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not LabelPolicy.from_config(LABEL, Home.load(home.path).config.est_labels[LABEL]).scep_rsa
    assert "unchanged" in subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    unknown = subprocess.run(
        ["devid", "scep", "allow-rsa", "nope", "--home", str(home.path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unknown.returncode == 2 and "unknown-label" in unknown.stderr
    with reading(engine) as conn:
        actions = [
            a
            for (a,) in conn.execute(
                select(audit_events.c.action).where(audit_events.c.action.like("scep.%"))
            )
        ]
    assert actions == ["scep.allow-rsa", "scep.allow-rsa", "scep.deny-rsa"]


def test_pending_until_approved_then_the_same_request_completes(scep: Scep, attempt: Attempt) -> None:
    csr_der = client.csr(attempt.signer.key, attempt.serial, attempt.secret)
    before = unchanged(scep, attempt.serial)
    assert send(scep, attempt, csr_der, label=HELD).status is PkiStatus.PENDING
    assert send(scep, attempt, csr_der, label=HELD).status is PkiStatus.PENDING
    assert unchanged(scep, attempt.serial) == before  # nothing issued, the secret not spent
    approve(scep.authority, attempt.serial, "test")
    done = send(scep, attempt, csr_der, label=HELD)
    assert done.status is PkiStatus.SUCCESS and done.certificate is not None
    assert unchanged(scep, attempt.serial) == (before[0] + 1, before[1] - 1)


@pytest.mark.parametrize("kind", ["rsa", "p256"])
def test_certpoll_pending_until_approved_then_success(
    home: Home, clock: FixedClock, tmp_path: Path, kind: str
) -> None:
    """RFC 8894 3.3.3, on SQLite and PostgreSQL: PKCSReq PENDING, CertPoll PENDING, approval,
    CertPoll SUCCESS (a certificate openssl verifies); the transaction is kept in the store, so a
    server opened afresh answers the poll, and a key that did not start it gets badCertId."""
    with serving(home, clock, tmp_path / "server") as running:
        device = provision(running.authority, "SCEP-0004", tmp_path / "devices")
        signer = (
            client.Signer.self_signed(rsa.generate_private_key(65537, 2048), "r")
            if kind == "rsa"
            else ec_signer()
        )
        attempt = Attempt(
            device.serial, create_enrollment_secret(running.authority, device.serial, "t"), signer
        )
        before = unchanged(running, attempt.serial)
        csr_der = client.csr(signer.key, attempt.serial, attempt.secret)
        assert send(running, attempt, csr_der, label=HELD).status is PkiStatus.PENDING
        assert count(running.authority, scep_transactions) == 1
        body = poll_body(running, signer)
        assert (
            send(running, attempt, body, label=HELD, message_type=MessageType.CERT_POLL).status
            is PkiStatus.PENDING
        )
        assert unchanged(running, attempt.serial) == before  # nothing issued, the secret not spent
        approve(running.authority, attempt.serial, "test")
        # Another server process over the same store completes it.
        other = open_authority(home, PASSPHRASE, clock=clock)
        try:
            with running_server(other, tmp_path / "other") as server:
                fresh = Scep(server, other, home, running.ra_fingerprint)
                done = send(fresh, attempt, body, label=HELD, message_type=MessageType.CERT_POLL)
        finally:
            other.close()
        assert done.status is PkiStatus.SUCCESS and done.certificate is not None
        assert done.certificate.public_key() == signer.key.public_key()
        verify_with_openssl(running, done.certificate, tmp_path)
        assert count(running.authority, certificates, certificates.c.fingerprint == fp(done.certificate)) == 1
        assert unchanged(running, attempt.serial) == (before[0] + 1, before[1] - 1)
        assert count(running.authority, scep_transactions) == 0
        again = send(running, attempt, body, label=HELD, message_type=MessageType.CERT_POLL)
        assert (again.status, again.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_CERT_ID)


def test_certpoll_from_another_key_fails_bad_cert_id(scep: Scep, attempt: Attempt) -> None:
    """The transaction is the requester's: the same transactionID signed by another key is unknown."""
    csr_der = client.csr(attempt.signer.key, attempt.serial, attempt.secret)
    assert send(scep, attempt, csr_der, label=HELD).status is PkiStatus.PENDING
    before = unchanged(scep, attempt.serial)
    stranger = ec_signer()
    ra = registration_authority(scep.authority).certificate
    _, transaction, _ = client.request(b"", attempt.signer, ra)
    attrs: dict[str, str | bytes] = {
        "message_type": MessageType.CERT_POLL.value,
        "transaction_id": transaction,
        "sender_nonce": b"n" * 16,
    }
    body = signed(envelope(poll_body(scep, stranger), ra), attrs, stranger.certificate, stranger.sign)
    answer = post(scep, body, HELD)
    message = read_message(answer.body)
    assert (message.pki_status, message.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_CERT_ID)
    assert unchanged(scep, attempt.serial) == before
    assert count(scep.authority, scep_transactions) == 1
    # The kept CSR holds the enrollment secret: sealed, never in clear in the store.
    with reading(scep.authority.engine) as conn:
        stored = conn.execute(select(scep_transactions.c.csr)).scalar_one()
    assert stored.startswith(SEALED_PREFIX) and attempt.secret.encode() not in stored
    assert csr_der not in stored


def test_certpoll_after_the_secret_lifetime_fails_bad_cert_id(
    scep: Scep, attempt: Attempt, clock: FixedClock
) -> None:
    csr_der = client.csr(attempt.signer.key, attempt.serial, attempt.secret)
    assert send(scep, attempt, csr_der, label=HELD).status is PkiStatus.PENDING
    approve(scep.authority, attempt.serial, "test")
    before = unchanged(scep, attempt.serial)
    clock.advance(SECRET_TTL + timedelta(minutes=1))
    body = poll_body(scep, attempt.signer)
    answer = send(scep, attempt, body, label=HELD, message_type=MessageType.CERT_POLL)
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_CERT_ID)
    assert unchanged(scep, attempt.serial) == before


def test_renewal_signed_by_a_certificate_devid_did_not_issue_fails(scep: Scep, attempt: Attempt) -> None:
    before = unchanged(scep, attempt.serial)
    csr_der = client.csr(attempt.signer.key, attempt.serial, None)
    answer = send(scep, attempt, csr_der, message_type=MessageType.RENEWAL_REQ)
    assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_MESSAGE_CHECK)
    assert unchanged(scep, attempt.serial) == before


def test_pkioperation_by_get(scep: Scep, attempt: Attempt) -> None:
    """RFC 8894 4.1: without POSTPKIOperation a client sends the message base64 in the query."""
    ra = registration_authority(scep.authority).certificate
    body, _, nonce = client.request(
        client.csr(attempt.signer.key, attempt.serial, attempt.secret), attempt.signer, ra
    )
    encoded = base64.b64encode(body).decode()
    answer = https(
        scep.server, "GET", f"/scep/{LABEL}?operation=PKIOperation&message={quote(encoded, safe='')}"
    )
    assert answer.status == 200, answer.text
    reply = client.reply(answer.body, attempt.signer, ra, nonce)
    assert reply.status is PkiStatus.SUCCESS
    bad = https(scep.server, "GET", f"/scep/{LABEL}?operation=PKIOperation&message=%%%%")
    assert bad.status == 400


@pytest.mark.parametrize("kind", ["rsa", "p256"])
def test_enrolls_and_renews_on_either_store(home: Home, clock: FixedClock, tmp_path: Path, kind: str) -> None:
    """SQLite and PostgreSQL: a PKCSReq with the secret, then a RenewalReq signed with the result,
    by an RSA requester (RSA label) and a P-256 one (key agreement)."""
    with serving(home, clock, tmp_path / "server") as running:
        device = provision(running.authority, "SCEP-0003", tmp_path / "devices")
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(65537, 2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        attempt = Attempt(
            device.serial,
            create_enrollment_secret(running.authority, device.serial, "test"),
            client.Signer.self_signed(key, "z"),
        )
        first = send(running, attempt, client.csr(key, device.serial, attempt.secret))
        assert first.status is PkiStatus.SUCCESS and first.certificate is not None
        current = client.Signer(key, first.certificate)
        renewed = send(
            running,
            attempt,
            client.csr(key, device.serial, None),
            message_type=MessageType.RENEWAL_REQ,
            signer=current,
        )
        assert renewed.status is PkiStatus.SUCCESS and renewed.certificate is not None
        assert renewed.certificate.serial_number != first.certificate.serial_number


def ec_signer(curve: ec.EllipticCurve | None = None) -> client.Signer:
    return client.Signer.self_signed(ec.generate_private_key(curve or ec.SECP256R1()), "ec requester")


def verify_with_openssl(scep: Scep, cert: x509.Certificate, work: Path) -> None:
    chain, leaf = work / "chain.pem", work / "leaf.pem"
    chain.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in registration_authority(scep.authority).chain
        )
    )
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(chain), str(leaf)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_key_agreement_envelope_decrypts_with_openssl(tmp_path: Path) -> None:
    """RFC 5753 ECDH (dhSinglePass-stdDH-sha256kdf, AES-128 wrap) to a P-256 certificate, as a
    CertRep carries it: OpenSSL, an independent peer, decrypts it."""
    signer = ec_signer()
    message = os.urandom(1000)
    (tmp_path / "envelope.der").write_bytes(envelope(message, signer.certificate))
    (tmp_path / "cert.pem").write_bytes(signer.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        signer.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    done = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "envelope.der"),
         "-recip", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem")],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == message
    # And what OpenSSL encrypts the same way, devid's client opens.
    (tmp_path / "plain").write_bytes(message)
    subprocess.run(
        ["openssl", "cms", "-encrypt", "-binary", "-aes128", "-in", str(tmp_path / "plain"),
         "-outform", "DER", "-out", str(tmp_path / "theirs.der"), "-recip", str(tmp_path / "cert.pem"),
         "-keyopt", "ecdh_kdf_md:sha256"],
        check=True,
    )  # fmt: skip
    theirs = (tmp_path / "theirs.der").read_bytes()
    assert open_envelope(theirs, signer.certificate, signer.recipient_key()) == message


def test_p256_requester_enrolls_and_renews_on_a_label_without_rsa(
    scep: Scep, attempt: Attempt, tmp_path: Path
) -> None:
    """The default key policy: no opt-in, the label's normal profile (LDevID)."""
    signer = ec_signer()
    csr_der = client.csr(signer.key, attempt.serial, attempt.secret)
    first = send(scep, attempt, csr_der, label="", signer=signer)
    assert first.status is PkiStatus.SUCCESS and first.certificate is not None
    assert first.certificate.public_key() == signer.key.public_key()
    verify_with_openssl(scep, first.certificate, tmp_path)
    with reading(scep.authority.engine) as conn:
        profile = conn.execute(
            select(certificates.c.profile).where(certificates.c.fingerprint == fp(first.certificate))
        ).scalar_one()
    assert profile == ProfileName.LDEVID.value
    current = client.Signer(signer.key, first.certificate)
    renewed = send(
        scep,
        attempt,
        client.csr(signer.key, attempt.serial, None),
        label="",
        message_type=MessageType.RENEWAL_REQ,
        signer=current,
    )
    assert renewed.status is PkiStatus.SUCCESS and renewed.certificate is not None
    assert renewed.certificate.serial_number != first.certificate.serial_number
    verify_with_openssl(scep, renewed.certificate, tmp_path)


def test_request_signed_with_another_curve_fails_bad_alg_before_anything_is_issued(
    scep: Scep, attempt: Attempt
) -> None:
    """P-256 only: a P-384 requester gets badAlg and nothing is issued or spent."""
    before = unchanged(scep, attempt.serial)
    signer = ec_signer(ec.SECP384R1())
    csr_der = client.csr(signer.key, attempt.serial, attempt.secret)
    for label in ("", LABEL):
        answer = send(scep, attempt, csr_der, label=label, signer=signer)
        assert (answer.status, answer.fail_info) == (PkiStatus.FAILURE, FailInfo.BAD_ALG)
    assert unchanged(scep, attempt.serial) == before
