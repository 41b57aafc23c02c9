"""CSR intake: strict parsing and the checks every certificate request passes before any profile."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from devid.errors import PolicyError
from devid.pki.der import encode_oid, tlv
from devid.pki.encoding import looks_like_pem, pem_blocks
from devid.pki.keypolicy import DeviceKey, p256_key_of, require_scep_rsa

MAX_CSR_BYTES = 16 * 1024
_CSR_LABELS = {"CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"}


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a CSR given as PEM or DER; refuse oversize input, junk and anything not a CSR."""
    if len(data) > MAX_CSR_BYTES:
        raise PolicyError("csr-too-large", f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    if not data.strip():
        raise PolicyError("csr-empty", "CSR is empty")
    if looks_like_pem(data):
        blocks = pem_blocks(data)
        if len(blocks) != 1 or blocks[0][0] not in _CSR_LABELS:
            found = ", ".join(label for label, _ in blocks)
            raise PolicyError("csr-malformed", f"expected one CERTIFICATE REQUEST PEM block, found: {found}")
        der = blocks[0][1]
    else:
        der = data
    try:
        return x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:
        if der is data and b"-----BEGIN " in data:
            # PEM with something in front of it: say so, rather than report a DER parse error.
            raise PolicyError("pem-junk", "unexpected data before the PEM block") from None
        raise PolicyError("csr-malformed", f"not a valid PKCS#10 CSR: {exc}") from None


def check_csr(csr: x509.CertificateSigningRequest, *, allow_rsa: bool = False) -> DeviceKey:
    """Check key policy, proof of possession and requested powers; return the device public key.

    Key type is checked before the signature so an RSA request is refused as RSA, which is what
    the operator needs to hear.
    """
    key: DeviceKey
    if allow_rsa and isinstance(_public_key(csr), rsa.RSAPublicKey):
        key = require_scep_rsa(csr.public_key(), "CSR key")
    else:
        key = p256_key_of(csr, "CSR key", "csr-malformed")
    try:
        digest = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise PolicyError(
            "csr-signature-algorithm", f"CSR signature algorithm is not supported: {exc}"
        ) from None
    if not isinstance(digest, hashes.SHA256):
        name = digest.name if digest else "none"
        raise PolicyError(
            "csr-signature-algorithm", f"CSR is signed with {name}: only signatures with SHA-256 are accepted"
        )
    if not csr.is_signature_valid:
        raise PolicyError("csr-signature", "CSR signature does not verify with its public key")
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise PolicyError("csr-malformed", f"CSR extensions cannot be parsed: {exc}") from None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise PolicyError("csr-ca-request", "CSR asks for a CA certificate (basicConstraints cA=true)")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise PolicyError("csr-ca-request", "CSR asks for keyCertSign/cRLSign key usage")
    return key


def load_and_check_csr(
    data: bytes, *, allow_rsa: bool = False
) -> tuple[x509.CertificateSigningRequest, DeviceKey]:
    """`allow_rsa`: an RSA-2048/3072 key is accepted too (a SCEP label opted into RSA)."""
    csr = load_csr(data)
    return csr, check_csr(csr, allow_rsa=allow_rsa)


def _public_key(csr: x509.CertificateSigningRequest) -> object:
    try:
        return csr.public_key()
    except (UnsupportedAlgorithm, ValueError, TypeError):
        return None  # refused with its reason by the P-256 check


# OIDs named in csrattrs (RFC 7030 4.5.2): sign with ecdsa-with-SHA256, key ecPublicKey on P-256.
_ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2"
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_SECP256R1 = "1.2.840.10045.3.1.7"


def csr_attributes() -> bytes:
    """DER CsrAttrs (EST `csrattrs`, EST-coaps `att`): SEQUENCE { ecdsa-with-SHA256, Attribute {
    id-ecPublicKey, SET { secp256r1 } } }: the key and signature devid's CSR checks accept."""
    key_attr = tlv(0x30, encode_oid(_EC_PUBLIC_KEY) + tlv(0x31, encode_oid(_SECP256R1)))
    return tlv(0x30, encode_oid(_ECDSA_WITH_SHA256) + key_attr)
