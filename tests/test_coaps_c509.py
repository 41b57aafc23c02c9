"""C509 over EST-coaps: a device that asks with the CoAP Accept option for a C509 Content-Format
gets its enrolled certificate (`/est/sen`, `/est/sren`) and the CA chain (`/est/crts`) as C509,
decoding to the very DER recorded in the store, with libcoap's client and with devid's own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Coaps, coap_client, libcoap_enroll, running_coaps
from est_helpers import csr_der, provision, save_identity

from devid.authority.core import Authority
from devid.coap.client import CoapsClient, client_context
from devid.coap.message import Code, Option
from devid.pki import c509
from devid.pki.profiles import ProfileName
from devid.store import repo


def recorded_der(auth: Authority, der: bytes) -> bytes:
    """The DER the store recorded for the certificate `der` (by fingerprint)."""
    fingerprint = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, fingerprint)
    assert row is not None, "the certificate handed out was not recorded"
    return bytes(row.der)


@pytest.fixture
def coaps(auth: Authority, tmp_path: Path) -> Iterator[Coaps]:
    with running_coaps(auth, tmp_path / "coaps") as srv:
        yield srv


def test_libcoap_gets_its_ldevid_and_the_ca_chain_as_c509(coaps: Coaps, tmp_path: Path) -> None:
    auth = coaps.authority
    device = provision(auth, "SN-C509-1", tmp_path)
    out = tmp_path / "ldevid.c509"
    libcoap_enroll(coaps, device, tmp_path, c509.CONTENT_FORMAT_CERT, out)
    der = c509.decode_certificate(out.read_bytes())
    assert recorded_der(auth, der) == der
    ldevid = x509.load_der_x509_certificate(der)
    assert ldevid.issuer == auth.issuer_for(ProfileName.LDEVID).certificate.subject
    assert len(out.read_bytes()) < len(der)

    # Re-enrollment with the LDevID, answered as a COSE_C509 holding the new certificate.
    key = ec.generate_private_key(ec.SECP256R1())
    san = ldevid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    csr = tmp_path / "renewal.der"
    csr.write_bytes(csr_der(key, ldevid.subject, san=san))
    renewed = tmp_path / "renewed.c509"
    got = coap_client(
        coaps,
        "post",
        "/est/sren",
        identity=save_identity(tmp_path, "ldevid", ldevid, device.key),
        payload=csr,
        content_format=286,
        accept=c509.CONTENT_FORMAT_COSE_C509,
        out=renewed,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    (new,) = c509.decode_chain(renewed.read_bytes())
    assert recorded_der(auth, new) == new
    assert x509.load_der_x509_certificate(new).public_key() == key.public_key()

    chain = tmp_path / "crts.c509"
    got = coap_client(coaps, "get", "/est/crts", accept=c509.CONTENT_FORMAT_CHAIN, out=chain)
    assert got.returncode == 0, got.stdout + got.stderr
    p7 = tmp_path / "crts.p7"
    assert coap_client(coaps, "get", "/est/crts", accept=281, out=p7).returncode == 0
    pkcs7_chain = [c.public_bytes(Encoding.DER) for c in pkcs7.load_der_pkcs7_certificates(p7.read_bytes())]
    # The same certificates (PKCS#7 holds a DER SET, sorted; the C509 chain keeps the chain's order).
    assert sorted(c509.decode_chain(chain.read_bytes())) == sorted(pkcs7_chain)
    assert auth.root.public_bytes(Encoding.DER) in pkcs7_chain


def test_devid_client_gets_c509_with_its_content_format(coaps: Coaps, tmp_path: Path) -> None:
    device = provision(coaps.authority, "SN-C509-2", tmp_path)
    context = client_context([coaps.authority.root], [device.idevid], device.key)

    async def scenario() -> tuple[bytes, int | None, bytes, int | None]:
        async with CoapsClient(f"coaps://127.0.0.1:{coaps.port}", context, timeout=10) as client:
            csr = csr_der(device.key, "x")
            cert = await client.request(
                Code.POST, "/est/sen", csr, content_format=286, accept=c509.CONTENT_FORMAT_CERT
            )
            chain = await client.request(Code.GET, "/est/crts", accept=c509.CONTENT_FORMAT_CHAIN)
        return (
            cert.payload,
            cert.uint(Option.CONTENT_FORMAT),
            chain.payload,
            chain.uint(Option.CONTENT_FORMAT),
        )

    cert, cert_format, chain, chain_format = coaps.call(scenario())
    assert (cert_format, chain_format) == (c509.CONTENT_FORMAT_CERT, c509.CONTENT_FORMAT_CHAIN)
    der = c509.decode_certificate(cert)
    assert recorded_der(coaps.authority, der) == der
    assert "SN-C509-2" in x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert coaps.authority.root.public_bytes(Encoding.DER) in c509.decode_chain(chain)
