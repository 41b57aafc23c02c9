"""EST over secure CoAP (RFC 9148): Debian's libcoap client enrolls and re-enrolls over DTLS 1.2
with its IDevID and LDevID; bad datagrams, cookies, blocks and payloads are refused and the
server keeps serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Coaps, coap_client, running_coaps
from est_helpers import csr_der, provision, save_identity

from devid.authority.core import Authority
from devid.pki.profiles import ProfileName
from devid.store import repo


def status(auth: Authority, cert: x509.Certificate) -> str:
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, cert.fingerprint(hashes.SHA256()).hex())
    assert row is not None
    return str(row.status)


@pytest.fixture
def coaps(auth: Authority, tmp_path: Path) -> Iterator[Coaps]:
    with running_coaps(auth, tmp_path / "coaps") as srv:
        yield srv


def test_discovery_and_ca_certificates_block_wise(coaps: Coaps, tmp_path: Path) -> None:
    found = coap_client(coaps, "get", "/.well-known/core")
    assert found.returncode == 0, found.stderr
    assert b'</est/crts>;rt="ace.est.crts";ct="281 287"' in found.stdout
    out = tmp_path / "crts.p7"
    got = coap_client(coaps, "get", "/est/crts", accept=281, out=out)
    assert got.returncode == 0, got.stderr
    certs = pkcs7.load_der_pkcs7_certificates(out.read_bytes())
    assert coaps.authority.root in certs
    # The same in 64-byte blocks (Block2, as libcoap asks for them): byte for byte.
    blocks = tmp_path / "crts-blocks.p7"
    got = coap_client(coaps, "get", "/est/crts", block_size=64, out=blocks)
    assert got.returncode == 0, got.stderr
    assert blocks.read_bytes() == out.read_bytes() and len(out.read_bytes()) > 64 * 8


def test_libcoap_enrolls_with_its_idevid_and_reenrolls_with_its_ldevid(coaps: Coaps, tmp_path: Path) -> None:
    auth = coaps.authority
    device = provision(auth, "SN-COAP-1", tmp_path)
    csr = tmp_path / "csr.der"
    csr.write_bytes(csr_der(device.key, "ignored"))
    out = tmp_path / "ldevid.der"
    got = coap_client(
        coaps,
        "post",
        "/est/sen",
        identity=device.idevid_files,
        payload=csr,
        content_format=286,
        accept=287,
        out=out,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    ldevid = x509.load_der_x509_certificate(out.read_bytes())
    assert ldevid.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "SN-COAP-1"
    assert ldevid.issuer == auth.issuer_for(ProfileName.LDEVID).certificate.subject

    # Re-enroll over DTLS with the LDevID and a new key, the CSR sent block-wise (64-byte blocks).
    key = ec.generate_private_key(ec.SECP256R1())
    ldevid_files = save_identity(tmp_path, "ldevid", ldevid, device.key)
    san = ldevid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    csr.write_bytes(csr_der(key, ldevid.subject, san=san))
    renewed = tmp_path / "renewed.p7"
    got = coap_client(
        coaps,
        "post",
        "/est/sren",
        identity=ldevid_files,
        payload=csr,
        content_format=286,
        block_size=64,
        out=renewed,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    new = pkcs7.load_der_pkcs7_certificates(renewed.read_bytes())[0]
    assert new.public_key() == key.public_key() and new.subject == ldevid.subject
    assert status(auth, ldevid) == "superseded" and status(auth, new) == "valid"
