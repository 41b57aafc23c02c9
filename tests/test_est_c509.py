"""EST answers in C509 when the device asks for it (Accept), end to end over TLS against the real
server app: enroll and re-enroll give the C509Certificate of the recorded certificate, cacerts the
chain as COSE_C509; without a C509 Accept every answer stays PKCS#7 as before."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import cbor2
import pytest
from conftest import PASSPHRASE
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from est_helpers import (
    Device,
    EstServer,
    csr_b64,
    https,
    path,
    provision,
    renewal_csr_b64,
    run,
    save_identity,
)
from test_serve import start_serve

from devid.authority.core import Authority
from devid.authority.setup import init_home, open_authority
from devid.errors import C509Malformed, C509Unsupported
from devid.est.accept import choose
from devid.est.client import Enrolled, EstClient, tls_context
from devid.est.server import CACERTS_FORMATS, ENROLL_FORMATS
from devid.pki.c509 import (
    MEDIA_TYPE_CERT,
    MEDIA_TYPE_CHAIN,
    MEDIA_TYPE_COSE_C509,
    decode_chain,
    encode_certificate,
    load_certificate,
)
from devid.pki.encoding import fingerprint
from devid.store import repo
from devid.store.engine import reading
from devid.web.errors import status_for

DER = serialization.Encoding.DER


@pytest.fixture
def device(auth: Authority, tmp_path: Path) -> Device:
    return provision(auth, "SN-C509", tmp_path / "devices")


def recorded(auth: Authority, cert: x509.Certificate) -> bytes:
    """The DER the store recorded for the certificate with this fingerprint."""
    der = cert.public_bytes(DER)
    with reading(auth.engine) as conn:
        rows = repo.certificates_by_serial(conn, format(cert.serial_number, "x"))
    matches = [r.der for r in rows if fingerprint(r.der) == fingerprint(der)]
    assert matches, "the answered certificate is not the recorded one"
    return matches[0]


def test_enroll_by_curl_answers_c509(server: EstServer, device: Device, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "csr.b64").write_bytes(csr_b64(key))
    cert_file, key_file = device.idevid_files
    run(
        [
            "curl", "-sS", "--fail-with-body", "--cert", cert_file, "--key", key_file,
            "--cacert", server.root_pem, "--data-binary", f"@{tmp_path / 'csr.b64'}",
            "-H", "Content-Type: application/pkcs10", "-H", f"Accept: {MEDIA_TYPE_CERT}",
            "-D", tmp_path / "headers.txt", "-o", tmp_path / "body.c509", server.est("simpleenroll"),
        ]
    )  # fmt: skip
    headers = (tmp_path / "headers.txt").read_text().lower()
    assert f"content-type: {MEDIA_TYPE_CERT}" in headers
    assert "content-transfer-encoding" not in headers
    body = (tmp_path / "body.c509").read_bytes()
    cert = load_certificate(body)
    assert recorded(server.authority, cert) == cert.public_bytes(DER)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(server.authority.cas["operational"].certificate)
    assert body == encode_certificate(cert) and len(body) <= 0.55 * len(cert.public_bytes(DER))


def test_reenroll_answers_cose_c509(server: EstServer, device: Device, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    first = https(
        server, "POST", path("simpleenroll"), csr_b64(key), cert=device.idevid_files,
        headers={"Accept": f"{MEDIA_TYPE_CERT}"},
    )  # fmt: skip
    assert first.status == 200, first.text
    ldevid = load_certificate(first.body)
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    new_key = ec.generate_private_key(ec.SECP256R1())
    resp = https(
        server, "POST", path("simplereenroll"), renewal_csr_b64(new_key, ldevid), cert=files,
        headers={"Accept": "application/pkcs7-mime;q=0.5, application/cose-c509+cbor"},
    )  # fmt: skip
    assert resp.status == 200, resp.text
    assert resp.headers["Content-Type"] == MEDIA_TYPE_COSE_C509
    assert isinstance(cbor2.loads(resp.body), bytes)  # a single C509CertData
    [der] = decode_chain(resp.body)
    renewed = x509.load_der_x509_certificate(der)
    assert renewed.public_key() == new_key.public_key() and renewed.subject == ldevid.subject
    assert recorded(server.authority, renewed) == der


def test_cacerts_as_a_c509_chain(server: EstServer) -> None:
    default = https(server, "GET", path("cacerts"), content_type=None)
    expected = [
        c.public_bytes(DER) for c in pkcs7.load_der_pkcs7_certificates(base64.b64decode(default.body))
    ]
    resp = https(server, "GET", path("cacerts"), headers={"Accept": MEDIA_TYPE_CHAIN}, content_type=None)
    assert resp.status == 200 and resp.headers["Content-Type"] == MEDIA_TYPE_CHAIN
    assert resp.headers["Vary"] == "Accept"
    chain = decode_chain(resp.body)
    assert sorted(chain) == sorted(expected)  # PKCS#7 holds a SET (DER-sorted); usage=chain is ordered
    auth = server.authority
    assert chain == [auth.cas["operational"].certificate.public_bytes(DER), auth.root.public_bytes(DER)]
    assert len(resp.body) < 0.6 * sum(map(len, expected))
    again = https(
        server, "GET", path("cacerts"), headers={"Accept": "application/cose-c509+cbor"}, content_type=None
    )
    assert again.body == resp.body


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/pkcs7-mime", "text/html", f"{MEDIA_TYPE_CERT};q=0"]
)
def test_without_a_c509_accept_the_answers_stay_pkcs7(
    server: EstServer, device: Device, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    resp = https(server, "POST", path("simpleenroll"), csr_b64(ec.generate_private_key(ec.SECP256R1())),
                 cert=device.idevid_files, headers=headers)  # fmt: skip
    assert resp.status == 200, resp.text
    assert resp.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert resp.headers["Content-Transfer-Encoding"] == "base64"
    cacerts = https(server, "GET", path("cacerts"), headers=headers, content_type=None)
    assert cacerts.headers["Content-Type"] == "application/pkcs7-mime"


@pytest.mark.parametrize(
    ("accept", "offers", "chosen"),
    [
        (None, ENROLL_FORMATS, ENROLL_FORMATS[0]),
        ("", ENROLL_FORMATS, ENROLL_FORMATS[0]),
        (MEDIA_TYPE_CERT, ENROLL_FORMATS, MEDIA_TYPE_CERT),
        ("APPLICATION/COSE-C509-CERT+CBOR", ENROLL_FORMATS, MEDIA_TYPE_CERT),
        ("application/pkcs7-mime, application/cose-c509-cert+cbor", ENROLL_FORMATS, ENROLL_FORMATS[0]),
        (
            "application/pkcs7-mime;q=0.2, application/cose-c509-cert+cbor;q=0.9",
            ENROLL_FORMATS,
            MEDIA_TYPE_CERT,
        ),
        ("*/*;q=0.1, application/cose-c509+cbor", ENROLL_FORMATS, MEDIA_TYPE_COSE_C509),
        ("application/cose-c509-cert+cbor;q=bogus", ENROLL_FORMATS, ENROLL_FORMATS[0]),
        ("application/cose-c509+cbor; usage=chain", CACERTS_FORMATS, MEDIA_TYPE_CHAIN),
        (MEDIA_TYPE_CERT, CACERTS_FORMATS, CACERTS_FORMATS[0]),
    ],
)
def test_accept_negotiation(accept: str | None, offers: tuple[str, ...], chosen: str) -> None:
    assert choose(accept, offers) == chosen


def test_devid_serve_answers_c509_to_curl(tmp_path: Path) -> None:
    """The same through `devid serve` itself (a separate process), with curl as the device."""
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE)
    auth = open_authority(home, PASSPHRASE)
    try:
        dev = provision(auth, "SN-SERVE", tmp_path / "devices")
        (tmp_path / "root.pem").write_bytes(auth.root.public_bytes(serialization.Encoding.PEM))
        operational = auth.cas["operational"].certificate
        root = auth.root
    finally:
        auth.close()
    served = start_serve(home.path)
    try:
        (tmp_path / "csr.b64").write_bytes(csr_b64(ec.generate_private_key(ec.SECP256R1())))
        cert_file, key_file = dev.idevid_files
        body = run(
            [
                "curl", "-sS", "--fail-with-body", "--cert", cert_file, "--key", key_file,
                "--cacert", tmp_path / "root.pem", "--data-binary", f"@{tmp_path / 'csr.b64'}",
                "-H", "Content-Type: application/pkcs10", "-H", f"Accept: {MEDIA_TYPE_CERT}",
                served.est("simpleenroll"),
            ]
        ).stdout  # fmt: skip
        ldevid = load_certificate(body)
        ldevid.verify_directly_issued_by(operational)
        chain = run(
            ["curl", "-sS", "--fail", "--cacert", tmp_path / "root.pem", "-H", f"Accept: {MEDIA_TYPE_CHAIN}",
             served.est("cacerts")]
        ).stdout  # fmt: skip
        assert decode_chain(chain) == [operational.public_bytes(DER), root.public_bytes(DER)]
    finally:
        assert served.stop() == 0


def test_c509_errors_map_to_http() -> None:
    """Asked for C509 that cannot carry the certificate: 406 Not Acceptable; bad C509 input: 400."""
    assert status_for(C509Unsupported("extensions", "x")) == 406
    assert status_for(C509Malformed("certificate", "x")) == 400


def test_est_client_asks_for_c509(server: EstServer, device: Device) -> None:
    """devid's own EST client (the agent's) with `c509=True`: the same certificates, in C509."""
    ctx = tls_context(server.root_pem.read_bytes(), [device.idevid], device.key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_der_x509_csr(base64.b64decode(csr_b64(key)))

    async def go() -> tuple[list[x509.Certificate], Enrolled]:
        async with EstClient(server.url, ctx, c509=True) as client:
            return await client.cacerts(), await client.simpleenroll(csr)

    cacerts, enrolled = asyncio.run(go())
    operational = server.authority.cas["operational"].certificate
    assert cacerts == [operational, server.authority.root]  # ordered: usage=chain
    assert enrolled.certificate.public_key() == key.public_key()
    assert enrolled.chain == [operational]
    recorded(server.authority, enrolled.certificate)
