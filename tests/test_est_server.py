"""The EST server (RFC 7030 / RFC 8951) over real TLS on loopback: curl, openssl and aiohttp as
clients, devices provisioned through the authority, every refusal checked for its status, its
reason, and that nothing in the store changed."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import ssl
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from est_helpers import (
    Device,
    EstServer,
    Response,
    csr_b64,
    csr_der,
    https,
    path,
    pem,
    provision,
    renewal_csr_b64,
    run,
    running_server,
    save_identity,
)
from sqlalchemy import func, select, text, update

from devid.authority.core import Authority
from devid.authority.devices import create_enrollment_secret, set_state
from devid.authority.policy import LabelPolicy, RenewalPolicy
from devid.authority.requests import IssueRequest
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import CLOCK_SKEW, ProfileName
from devid.server.tls import X509_V_FLAG_NO_CHECK_TIME, client_trust, server_context
from devid.store import repo

PASSPHRASE = b"correct horse battery staple"


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def device(auth: Authority, tmp_path: Path) -> Device:
    return provision(auth, "SN-0001", tmp_path / "devices")


def snapshot(auth: Authority) -> dict[str, Any]:
    """Everything a refusal must leave as it was: certificates, device standing, secrets."""
    with auth.engine.connect() as conn:
        certs = conn.execute(
            select(repo.certificates.c.fingerprint, repo.certificates.c.status).order_by(
                repo.certificates.c.id
            )
        ).all()
        devices = conn.execute(
            select(
                repo.devices.c.serial,
                repo.devices.c.state,
                repo.devices.c.approval_requested_at,
                repo.devices.c.approved_at,
            ).order_by(repo.devices.c.id)
        ).all()
        secrets = conn.execute(
            select(repo.enrollment_secrets.c.id, repo.enrollment_secrets.c.used_at).order_by(
                repo.enrollment_secrets.c.id
            )
        ).all()
    return {"certificates": list(certs), "devices": list(devices), "secrets": list(secrets)}


def last_audit(auth: Authority) -> Any:
    with auth.engine.connect() as conn:
        return conn.execute(
            text("SELECT action, outcome, subject, detail FROM audit_events ORDER BY seq DESC")
        ).first()


def cert_row(auth: Authority, cert: x509.Certificate) -> Any:
    with auth.engine.connect() as conn:
        return repo.certificate_by_fingerprint(conn, cert.fingerprint(hashes.SHA256()).hex())


def issued_cert(resp: Response) -> x509.Certificate:
    assert resp.status == 200, resp.text
    assert resp.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert resp.headers["Content-Transfer-Encoding"] == "base64"
    certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(resp.body.split())))
    assert len(certs) == 1
    return certs[0]


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def enroll(
    server: EstServer, dev: Device, label: str = "", key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Enroll `dev` with its IDevID; returns the LDevID (or session certificate) and its key."""
    key = key or new_key()
    resp = https(server, "POST", path("simpleenroll", label), csr_b64(key), cert=dev.idevid_files)
    return issued_cert(resp), key


def refused(resp: Response, status: int, *needles: str) -> None:
    assert resp.status == status, (resp.status, resp.text)
    assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
    for needle in needles:
        assert needle in resp.text, resp.text
    assert resp.headers.get("Devid-Error"), resp.headers


# --- unauthenticated operations ------------------------------------------------------------------


@pytest.mark.parametrize("label", ["", "short", "session"])
def test_cacerts_parsed_by_openssl(server: EstServer, tmp_path: Path, label: str) -> None:
    body = tmp_path / "cacerts.b64"
    headers = run(
        [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            server.root_pem,
            "-D",
            "-",
            "-o",
            body,
            server.est("cacerts", label),
        ]
    ).stdout.decode()
    assert "content-type: application/pkcs7-mime" in headers.lower()
    assert "content-transfer-encoding: base64" in headers.lower()
    der = run(["openssl", "base64", "-d", "-in", body]).stdout
    printed = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der).stdout.decode()
    assert "subject=O = Test Org, CN = Test Org Root CA" in printed
    assert "subject=O = Test Org, CN = Test Org Operational CA" in printed
    assert "Manufacturing" not in printed


def test_csrattrs_decodes_with_openssl_asn1parse(server: EstServer, tmp_path: Path) -> None:
    resp = https(server, "GET", path("csrattrs"))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/csrattrs"
    der = run(["openssl", "base64", "-d"], input=resp.body).stdout
    parsed = run(["openssl", "asn1parse", "-inform", "DER"], input=der).stdout.decode()
    assert "ecdsa-with-SHA256" in parsed
    assert "id-ecPublicKey" in parsed
    assert "prime256v1" in parsed


def test_policy_endpoint_describes_each_label(server: EstServer) -> None:
    import json

    for label, policy in server.authority.labels.items():
        resp = https(server, "GET", path("policy", label))
        assert resp.status == 200
        doc = json.loads(resp.body)
        assert doc["policy"] == policy.policy.value
        assert doc["lifetime_seconds"] == int(policy.lifetime.total_seconds())
        assert doc["idevid_fallback"] == policy.idevid_fallback
    assert json.loads(https(server, "GET", path("policy", "session")).body)["profile"] == "session"
    refused(https(server, "GET", path("policy", "nope")), 404, "nope")


# --- enrollment with the IDevID ------------------------------------------------------------------


def test_enroll_with_idevid_by_curl_and_openssl(server: EstServer, device: Device, tmp_path: Path) -> None:
    work = tmp_path / "curl"
    work.mkdir()
    # The device asks for a name of its own choosing: devid takes the identity from the IDevID.
    run(
        [
            "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=somebody-else/serialNumber=SN-9999", "-keyout", work / "ldevid.key",
            "-outform", "DER", "-out", work / "csr.der",
        ]
    )  # fmt: skip
    run(["openssl", "base64", "-in", work / "csr.der", "-out", work / "csr.b64"])
    cert_file, key_file = device.idevid_files
    result = run(
        [
            "curl", "-sS", "--fail-with-body", "--cert", cert_file, "--key", key_file,
            "--cacert", server.root_pem, "--data-binary", f"@{work / 'csr.b64'}",
            "-H", "Content-Type: application/pkcs10", "-D", work / "headers.txt", "-o", work / "body.b64",
            server.est("simpleenroll"),
        ]
    )  # fmt: skip
    assert result.returncode == 0
    headers = (work / "headers.txt").read_text().lower()
    assert "content-type: application/pkcs7-mime; smime-type=certs-only" in headers
    assert "devid-policy: renew" in headers
    der = run(["openssl", "base64", "-d", "-in", work / "body.b64"]).stdout
    printed = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der).stdout
    (work / "ldevid.pem").write_bytes(printed)
    (work / "operational.pem").write_bytes(pem(server.authority.cas["operational"].certificate))
    out = run(
        [
            "openssl",
            "verify",
            "-CAfile",
            server.root_pem,
            "-untrusted",
            work / "operational.pem",
            work / "ldevid.pem",
        ]
    ).stdout.decode()
    assert out.strip().endswith(": OK")

    ldevid = x509.load_pem_x509_certificate(printed)
    assert ldevid.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-0001"
    assert "somebody-else" not in ldevid.subject.rfc4514_string()
    key = serialization.load_pem_private_key((work / "ldevid.key").read_bytes(), None)
    assert ldevid.public_key() == key.public_key()
    row = cert_row(server.authority, ldevid)
    assert (row.profile, row.device_serial, row.status) == ("ldevid", "SN-0001", "valid")
    renew_at = (
        next(h for h in headers.splitlines() if h.startswith("devid-renew-at:")).split(":", 1)[1].strip()
    )
    when = datetime.fromisoformat(renew_at.upper())
    life = ldevid.not_valid_after_utc - ldevid.not_valid_before_utc
    assert ldevid.not_valid_before_utc + life * 0.6 < when < ldevid.not_valid_before_utc + life * 0.72


def test_enroll_with_aiohttp_client(server: EstServer, device: Device) -> None:
    key = new_key()

    async def go() -> tuple[int, dict[str, str], bytes]:
        ctx = ssl.create_default_context(cafile=str(server.root_pem))
        ctx.load_cert_chain(*map(str, device.idevid_files))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                server.est("simpleenroll"),
                data=base64.b64encode(csr_der(key)),  # no line breaks, no Content-Transfer-Encoding
                headers={"Content-Type": "application/pkcs10"},
                ssl=ctx,
            ) as resp,
        ):
            return resp.status, dict(resp.headers), await resp.read()

    status, headers, body = asyncio.run(go())
    assert status == 200, body
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(server.authority.cas["operational"].certificate)
    assert headers["Devid-Policy"] == "renew"


def test_enroll_accepts_der_pem_and_crlf_bodies(server: EstServer, device: Device) -> None:
    key = new_key()
    der = csr_der(key)
    crlf = b"\r\n".join(base64.encodebytes(der).split(b"\n"))
    pem_csr = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    for body, extra in (
        (crlf, {"Content-Transfer-Encoding": "base64"}),
        (der, {"Content-Transfer-Encoding": "binary"}),
        (pem_csr, {}),
    ):
        resp = https(
            server, "POST", path("simpleenroll", "session"), body, cert=device.idevid_files, headers=extra
        )
        assert issued_cert(resp).public_key() == key.public_key()


def test_leaf_with_chain_also_authenticates(server: EstServer, device: Device, tmp_path: Path) -> None:
    chain_file = tmp_path / "idevid-chain.pem"
    manufacturing = server.authority.cas["manufacturing"].certificate
    chain_file.write_bytes(pem(device.idevid) + pem(manufacturing))
    resp = https(
        server, "POST", path("simpleenroll"), csr_b64(new_key()), cert=(chain_file, device.idevid_files[1])
    )
    issued_cert(resp)


# --- re-enrollment -------------------------------------------------------------------------------


def test_reenroll_with_ldevid_by_curl_new_key_supersedes(
    server: EstServer, device: Device, tmp_path: Path
) -> None:
    ldevid, key = enroll(server, device)
    cert_file, key_file = save_identity(tmp_path, "ldevid", ldevid, key)
    new = new_key()
    (tmp_path / "renew.b64").write_bytes(renewal_csr_b64(new, ldevid))
    run(
        [
            "curl", "-sS", "--fail-with-body", "--cert", cert_file, "--key", key_file,
            "--cacert", server.root_pem, "--data-binary", f"@{tmp_path / 'renew.b64'}",
            "-H", "Content-Type: application/pkcs10", "-o", tmp_path / "renewed.b64",
            server.est("simplereenroll"),
        ]
    )  # fmt: skip
    der = run(["openssl", "base64", "-d", "-in", tmp_path / "renewed.b64"]).stdout
    printed = run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der).stdout
    renewed = x509.load_pem_x509_certificate(printed)
    assert renewed.public_key() == new.public_key() != ldevid.public_key()
    assert renewed.subject == ldevid.subject
    assert cert_row(server.authority, ldevid).status == "superseded"
    assert cert_row(server.authority, renewed).status == "valid"

    # The superseded certificate no longer renews anything.
    before = snapshot(server.authority)
    resp = https(
        server, "POST", path("simplereenroll"), renewal_csr_b64(new_key(), ldevid), cert=(cert_file, key_file)
    )
    refused(resp, 403, "superseded")
    assert snapshot(server.authority) == before


def test_reenroll_keeping_the_key_and_without_san(server: EstServer, device: Device, tmp_path: Path) -> None:
    ldevid, key = enroll(server, device)
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    resp = https(server, "POST", path("simplereenroll"), csr_b64(key, ldevid.subject), cert=files)
    renewed = issued_cert(resp)
    assert renewed.public_key() == key.public_key()
    assert renewed.serial_number != ldevid.serial_number


@pytest.mark.parametrize("what", ["subject", "other-device", "san"])
def test_reenroll_with_mismatched_names_is_refused(
    server: EstServer, device: Device, tmp_path: Path, what: str
) -> None:
    ldevid, key = enroll(server, device)
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    if what == "subject":
        body = csr_b64(new_key(), "another name")
    elif what == "other-device":
        other = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                x509.NameAttribute(NameOID.COMMON_NAME, "SN-0002"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0002"),
            ]
        )
        body = csr_b64(new_key(), other)
    else:
        body = csr_b64(
            new_key(), ldevid.subject, san=x509.SubjectAlternativeName([x509.DNSName("evil.example")])
        )
    before = snapshot(server.authority)
    resp = https(server, "POST", path("simplereenroll"), body, cert=files)
    refused(resp, 403, "RFC 7030 4.2.2")
    assert snapshot(server.authority) == before
    event = last_audit(server.authority)
    assert (event.action, event.outcome, event.subject) == ("est.simplereenroll", "refused", "SN-0001")


# --- HTTP Basic with an enrollment secret --------------------------------------------------------


def test_basic_enrollment_secret_single_use(server: EstServer, device: Device, tmp_path: Path) -> None:
    auth = server.authority
    secret = create_enrollment_secret(auth, device.serial, "test")
    (tmp_path / "csr.b64").write_bytes(csr_b64(new_key()))
    args = [
        "curl", "-sS", "-u", f"{device.serial}:{secret}", "--cacert", server.root_pem,
        "--data-binary", f"@{tmp_path / 'csr.b64'}", "-H", "Content-Type: application/pkcs10",
        "-w", "\n%{http_code}", server.est("simpleenroll"),
    ]  # fmt: skip
    out = run(args).stdout
    body, status = out.rsplit(b"\n", 1)
    assert status == b"200", out
    cert = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))[0]
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == device.serial

    before = snapshot(auth)
    out = run(args).stdout
    body, status = out.rsplit(b"\n", 1)
    assert status == b"403", out
    assert b"already used" in body
    assert snapshot(auth) == before
    event = last_audit(auth)
    assert (event.action, event.outcome, event.subject) == ("est.simpleenroll", "refused", device.serial)
    assert "enroll-secret-reused" in event.detail


def test_basic_wrong_secret_is_401_and_leaves_the_secret(server: EstServer, device: Device) -> None:
    secret = create_enrollment_secret(server.authority, device.serial, "test")
    before = snapshot(server.authority)
    for user, password in ((device.serial, "wrong"), ("SN-404", secret), ("bad serial!", secret)):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        resp = https(
            server,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers={"Authorization": f"Basic {token}"},
        )
        refused(resp, 401, "wrong device serial or enrollment secret")
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert snapshot(server.authority) == before
    # The secret still works: failed attempts did not spend it.
    token = base64.b64encode(f"{device.serial}:{secret}".encode()).decode()
    issued_cert(
        https(
            server,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers={"Authorization": f"Basic {token}"},
        )
    )


def test_bad_csr_does_not_spend_the_secret(server: EstServer, device: Device) -> None:
    secret = create_enrollment_secret(server.authority, device.serial, "test")
    token = base64.b64encode(f"{device.serial}:{secret}".encode()).decode()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = snapshot(server.authority)
    resp = https(
        server, "POST", path("simpleenroll"), csr_b64(rsa_key), headers={"Authorization": f"Basic {token}"}
    )
    refused(resp, 400, "RSA")
    assert snapshot(server.authority) == before
    issued_cert(
        https(
            server,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers={"Authorization": f"Basic {token}"},
        )
    )


@pytest.mark.parametrize("header", ["Basic", "Basic ", "Basic Og==", "Basic !!notbase64"])
def test_empty_basic_header_with_client_certificate(server: EstServer, device: Device, header: str) -> None:
    resp = https(
        server,
        "POST",
        path("simpleenroll"),
        csr_b64(new_key()),
        cert=device.idevid_files,
        headers={"Authorization": header},
    )
    issued_cert(resp)


def test_curl_empty_basic_with_client_certificate(server: EstServer, device: Device, tmp_path: Path) -> None:
    (tmp_path / "csr.b64").write_bytes(csr_b64(new_key()))
    cert_file, key_file = device.idevid_files
    out = run(
        [
            "curl", "-sS", "--fail-with-body", "-u", ":", "--cert", cert_file, "--key", key_file,
            "--cacert", server.root_pem, "--data-binary", f"@{tmp_path / 'csr.b64'}",
            "-H", "Content-Type: application/pkcs10", server.est("simpleenroll"),
        ]
    ).stdout  # fmt: skip
    assert pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(out.split())))


# --- refusals --------------------------------------------------------------------------------------


def test_refusals_change_nothing(server: EstServer, device: Device, tmp_path: Path) -> None:
    auth = server.authority
    good = csr_b64(new_key())
    idevid = device.idevid_files
    cases: list[tuple[str, Response, int, tuple[str, ...]]] = []

    def check(name: str, resp: Response, status: int, *needles: str) -> None:
        cases.append((name, resp, status, needles))

    before = snapshot(auth)
    check("no authentication", https(server, "POST", path("simpleenroll"), good), 401, "authenticate")
    check(
        "wrong content type",
        https(server, "POST", path("simpleenroll"), good, cert=idevid, content_type="text/plain"),
        415,
        "application/pkcs10",
    )
    check(
        "body over 64 KiB",
        https(server, "POST", path("simpleenroll"), b"A" * (64 * 1024 + 1), cert=idevid),
        413,
        "exceeds",
    )
    check(
        "not base64",
        https(server, "POST", path("simpleenroll"), b"%%% not base64 %%%", cert=idevid),
        400,
        "base64",
    )
    check(
        "not a CSR",
        https(server, "POST", path("simpleenroll"), base64.encodebytes(b"\x30\x03\x02\x01\x01"), cert=idevid),
        400,
        "PKCS#10",
    )
    check("empty body", https(server, "POST", path("simpleenroll"), b"", cert=idevid), 400, "empty")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check(
        "RSA key", https(server, "POST", path("simpleenroll"), csr_b64(rsa_key), cert=idevid), 400, "RSA-2048"
    )
    p384 = ec.generate_private_key(ec.SECP384R1())
    check(
        "P-384 key", https(server, "POST", path("simpleenroll"), csr_b64(p384), cert=idevid), 400, "secp384r1"
    )
    check(
        "unknown label", https(server, "POST", path("simpleenroll", "nope"), good, cert=idevid), 404, "nope"
    )
    check(
        "serverkeygen with a secret",
        https(
            server,
            "POST",
            path("serverkeygen"),
            good,
            headers={"Authorization": "Basic " + base64.b64encode(f"{device.serial}:x".encode()).decode()},
        ),
        401,
        "wrong",
    )
    for name, resp, status, needles in cases:
        assert resp.status == status, (name, resp.status, resp.text)
        refused(resp, status, *needles)
    assert snapshot(auth) == before


def test_disabled_device_is_refused_until_enabled(server: EstServer, device: Device) -> None:
    auth = server.authority
    set_state(auth, device.serial, "INACTIVE", "test")
    before = snapshot(auth)
    resp = https(server, "POST", path("simpleenroll"), csr_b64(new_key()), cert=device.idevid_files)
    refused(resp, 403, "INACTIVE")
    assert snapshot(auth) == before
    set_state(auth, device.serial, "ACTIVE", "test")
    enroll(server, device)


def test_revoked_ldevid_is_refused(server: EstServer, device: Device, tmp_path: Path) -> None:
    auth = server.authority
    ldevid, key = enroll(server, device)
    with auth.engine.begin() as conn:
        conn.execute(
            update(repo.certificates)
            .where(repo.certificates.c.fingerprint == ldevid.fingerprint(hashes.SHA256()).hex())
            .values(status="revoked")
        )
    before = snapshot(auth)
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    resp = https(server, "POST", path("simplereenroll"), renewal_csr_b64(new_key(), ldevid), cert=files)
    refused(resp, 403, "revoked")
    assert resp.headers["Devid-Error"] == "client-cert-revoked"
    assert snapshot(auth) == before


def test_foreign_certificate_fails_the_handshake(server: EstServer, tmp_path: Path) -> None:
    """A certificate that does not chain to devid's root never reaches the application (no TLS
    verify callback in Python's ssl): the client sees the handshake fail, not a 403."""
    foreign_key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    now = datetime.now(UTC)
    foreign = (
        x509.CertificateBuilder(
            issuer_name=name,
            subject_name=name,
            public_key=foreign_key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - timedelta(hours=1),
            not_valid_after=now + timedelta(days=1),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(foreign_key, hashes.SHA256())
    )
    files = save_identity(tmp_path, "foreign", foreign, foreign_key)
    before = snapshot(server.authority)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https(server, "POST", path("simpleenroll"), csr_b64(new_key()), cert=files)
    assert snapshot(server.authority) == before


# --- expiry, fallback to the IDevID, session certificates -------------------------------------------


def test_expired_ldevid_refused_then_idevid_fallback(
    server: EstServer, auth: Authority, clock: FixedClock, tmp_path: Path
) -> None:
    dev = provision(auth, "SN-SHORT", tmp_path / "devices")
    ldevid, key = enroll(server, dev, "short")
    assert ldevid.not_valid_after_utc - clock.now() == timedelta(days=30)
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    clock.advance(timedelta(days=31))

    before = snapshot(auth)
    resp = https(
        server, "POST", path("simplereenroll", "short"), renewal_csr_b64(new_key(), ldevid), cert=files
    )
    refused(resp, 403, "expired")
    assert resp.headers["Devid-Error"] == "client-cert-expired"
    assert snapshot(auth) == before

    # short-lived: the device falls back to its IDevID, on either operation.
    for op in ("simplereenroll", "simpleenroll"):
        resp = https(server, "POST", path(op, "short"), csr_b64(new_key()), cert=dev.idevid_files)
        fresh = issued_cert(resp)
        assert fresh.not_valid_before_utc == clock.now() - CLOCK_SKEW
        assert resp.headers["Devid-Policy"] == "short-lived"

    # long-lived has no IDevID fallback for an enrolled device.
    before = snapshot(auth)
    resp = https(server, "POST", path("simpleenroll", "long"), csr_b64(new_key()), cert=dev.idevid_files)
    refused(resp, 403, "does not re-enroll with the IDevID")
    assert snapshot(auth) == before


@pytest.mark.parametrize("state", ["INACTIVE", "REVOKED"])
def test_idevid_fallback_refused_for_disabled_or_revoked_device(
    server: EstServer, auth: Authority, clock: FixedClock, tmp_path: Path, state: str
) -> None:
    dev = provision(auth, f"SN-{state}", tmp_path / "devices")
    enroll(server, dev, "short")
    clock.advance(timedelta(days=31))
    set_state(auth, dev.serial, state, "test")
    before = snapshot(auth)
    for op in ("simplereenroll", "simpleenroll"):
        resp = https(server, "POST", path(op, "short"), csr_b64(new_key()), cert=dev.idevid_files)
        refused(resp, 403, state)
    assert snapshot(auth) == before


def test_really_expired_certificate_completes_the_handshake(sqlite_home: Home, tmp_path: Path) -> None:
    """X509_V_FLAG_NO_CHECK_TIME: an LDevID expired in real time still completes the TLS handshake,
    so the server answers 403 with a reason instead of dropping the connection."""
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=60))
    auth = open_authority(sqlite_home, PASSPHRASE, clock=clock)
    try:
        dev = provision(auth, "SN-OLD", tmp_path / "devices")
        key = new_key()
        old = auth.issue(
            IssueRequest(
                ProfileName.LDEVID, key.public_key(), device_serial=dev.serial, lifetime=timedelta(days=30)
            )
        ).certificate
        clock.advance(timedelta(days=60))
        assert old.not_valid_after_utc < datetime.now(UTC)
        files = save_identity(tmp_path, "old", old, key)
        with running_server(auth, tmp_path / "server") as srv:
            resp = https(srv, "POST", path("simplereenroll"), renewal_csr_b64(new_key(), old), cert=files)
            refused(resp, 403, "expired")
            # ...and the device recovers with its IDevID (label "" is `renew`: fallback allowed).
            issued_cert(https(srv, "POST", path("simplereenroll"), csr_b64(new_key()), cert=dev.idevid_files))
    finally:
        auth.engine.dispose()


def test_server_context_sets_no_check_time(auth: Authority, server: EstServer, tmp_path: Path) -> None:
    tls = tmp_path / "server" / "tls"
    ctx = server_context(tls / "server.pem", tls / "server.key.pem", client_trust(auth), password=PASSPHRASE)
    assert ctx.verify_flags & X509_V_FLAG_NO_CHECK_TIME
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_session_label_issues_one_hour_certificates(
    server: EstServer, device: Device, clock: FixedClock, tmp_path: Path
) -> None:
    session, key = enroll(server, device, "session")
    assert session.not_valid_after_utc - clock.now() == timedelta(hours=1)
    assert cert_row(server.authority, session).profile == "session"
    # With the LDevID too, and a session certificate renews itself under the session label.
    ldevid, lkey = enroll(server, device)
    files = save_identity(tmp_path, "ldevid", ldevid, lkey)
    from_ldevid = issued_cert(
        https(server, "POST", path("simpleenroll", "session"), csr_b64(new_key()), cert=files)
    )
    assert cert_row(server.authority, from_ldevid).profile == "session"
    sfiles = save_identity(tmp_path, "session", session, key)
    renewed = issued_cert(
        https(
            server,
            "POST",
            path("simplereenroll", "session"),
            csr_b64(new_key(), session.subject),
            cert=sfiles,
        )
    )
    assert cert_row(server.authority, session).status == "superseded"
    assert renewed.not_valid_after_utc - clock.now() == timedelta(hours=1)
    # A session certificate does not get an LDevID.
    before = snapshot(server.authority)
    resp = https(server, "POST", path("simplereenroll"), csr_b64(new_key(), renewed.subject), cert=sfiles)
    refused(resp, 403)
    assert snapshot(server.authority) == before


# --- approval ------------------------------------------------------------------------------------


def test_approval_holds_enrollment_until_approved(
    server: EstServer, device: Device, sqlite_home: Home
) -> None:
    auth = server.authority
    auth.labels["held"] = LabelPolicy("held", RenewalPolicy.RENEW, timedelta(days=365), approval=True)
    before = snapshot(auth)["certificates"]
    for _ in range(2):
        resp = https(
            server, "POST", path("simpleenroll", "held"), csr_b64(new_key()), cert=device.idevid_files
        )
        assert resp.status == 202, resp.text
        assert resp.headers["Retry-After"] == "60"
        assert "approval" in resp.text
    assert snapshot(auth)["certificates"] == before
    from e2e import devid, ok

    ok(devid("device", "approve", device.serial, "--home", sqlite_home.path))
    issued_cert(
        https(server, "POST", path("simpleenroll", "held"), csr_b64(new_key()), cert=device.idevid_files)
    )


# --- trusted proxy ---------------------------------------------------------------------------------


def _proxy_header(cert: x509.Certificate) -> dict[str, str]:
    return {"X-SSL-Client-Cert": urllib.parse.quote(pem(cert).decode(), safe="")}


def test_trusted_proxy_header_only_from_the_proxy(auth: Authority, device: Device, tmp_path: Path) -> None:
    other = provision(auth, "SN-OTHER", tmp_path / "devices")
    with running_server(auth, tmp_path / "server", trusted_proxies=["127.0.0.2"]) as srv:
        before = snapshot(auth)
        # From a non-proxy address the header is ignored: no authentication at all...
        resp = https(
            srv, "POST", path("simpleenroll"), csr_b64(new_key()), headers=_proxy_header(device.idevid)
        )
        refused(resp, 401)
        assert snapshot(auth) == before
        # ...and next to a real client certificate, the TLS certificate decides.
        resp = https(
            srv,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            cert=other.idevid_files,
            headers=_proxy_header(device.idevid),
        )
        assert issued_cert(resp).subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-OTHER"
        # From the proxy the header is the client certificate.
        resp = https(
            srv,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers=_proxy_header(device.idevid),
            source_address="127.0.0.2",
        )
        assert (
            issued_cert(resp).subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == device.serial
        )
        # nginx's older $ssl_client_cert form (tab-indented continuation lines) works too.
        tabbed = pem(device.idevid).decode().replace("\n", "\n\t").strip()
        resp = https(
            srv, "POST", path("simpleenroll", "session"), csr_b64(new_key()),
            headers={"X-SSL-Client-Cert": tabbed.replace("\n", " ")}, source_address="127.0.0.2",
        )  # fmt: skip
        issued_cert(resp)


def test_trusted_proxy_refuses_unknown_chain_and_junk(
    auth: Authority, device: Device, tmp_path: Path
) -> None:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Org Manufacturing CA")])
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder(
            issuer_name=auth.cas["manufacturing"].certificate.subject,  # claims devid's CA...
            subject_name=device.idevid.subject,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - timedelta(hours=1),
            not_valid_after=now + timedelta(days=1),
        ).sign(key, hashes.SHA256())  # ...but is not signed by it
    )
    assert name
    with running_server(auth, tmp_path / "server", trusted_proxies=["127.0.0.0/30"]) as srv:
        before = snapshot(auth)
        resp = https(
            srv,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers=_proxy_header(forged),
            source_address="127.0.0.2",
        )
        refused(resp, 403, "not issued by this devid")
        resp = https(
            srv,
            "POST",
            path("simpleenroll"),
            csr_b64(new_key()),
            headers={"X-SSL-Client-Cert": "garbage"},
            source_address="127.0.0.2",
        )
        refused(resp, 400, "PEM")
        assert snapshot(auth) == before


# --- server-side key generation ---------------------------------------------------------------------


def test_serverkeygen_returns_a_key_matching_the_certificate(server: EstServer, device: Device) -> None:
    resp = https(server, "POST", path("serverkeygen"), csr_b64(new_key()), cert=device.idevid_files)
    assert resp.status == 200, resp.text
    ctype = resp.headers["Content-Type"]
    assert ctype.startswith("multipart/mixed; boundary=")
    message = email.message_from_bytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + resp.body, policy=email.policy.HTTP
    )
    parts = {part.get_content_type(): part.get_payload(decode=True) for part in message.iter_parts()}  # type: ignore[attr-defined]
    assert set(parts) == {"application/pkcs8", "application/pkcs7-mime"}
    key = serialization.load_der_private_key(parts["application/pkcs8"], None)
    cert = pkcs7.load_der_pkcs7_certificates(parts["application/pkcs7-mime"])[0]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert cert_row(server.authority, cert).device_serial == device.serial


def test_serverkeygen_needs_a_device_certificate(server: EstServer, device: Device) -> None:
    secret = create_enrollment_secret(server.authority, device.serial, "test")
    token = base64.b64encode(f"{device.serial}:{secret}".encode()).decode()
    before = snapshot(server.authority)
    resp = https(
        server, "POST", path("serverkeygen"), csr_b64(new_key()), headers={"Authorization": f"Basic {token}"}
    )
    refused(resp, 403, "TLS client certificate")
    assert snapshot(server.authority) == before


def test_certificate_count_grows_only_on_success(server: EstServer, device: Device) -> None:
    with server.authority.engine.connect() as conn:
        start = conn.execute(select(func.count()).select_from(repo.certificates)).scalar_one()
    enroll(server, device)
    https(server, "POST", path("simpleenroll"), csr_b64(new_key()))
    with server.authority.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(repo.certificates)).scalar_one() == start + 1


def test_token_routes_are_mounted_when_available(server: EstServer) -> None:
    pytest.importorskip("devid.tokens.routes")
    resp = https(server, "GET", "/.well-known/jwks.json")
    assert resp.status == 200, resp.text
    assert "keys" in resp.text
