"""Encodings: strict PEM/DER reading, PKCS#7 certs-only, fingerprints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs7

from devid.errors import PolicyError

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PEM_BLOCK = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 #]+)-----\r?\n(?P<body>[A-Za-z0-9+/=\r\n\t ]*?)-----END (?P=label)-----"
)


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Split PEM text into (label, DER) blocks, refusing anything but whitespace between blocks.

    Written here because `cryptography`'s PEM loaders silently ignore text after the END line,
    and a CA should not accept a request with junk appended to it.
    """
    blocks: list[tuple[str, bytes]] = []
    pos = 0
    for match in _PEM_BLOCK.finditer(data):
        if data[pos : match.start()].strip():
            raise PolicyError("pem-junk", "unexpected data outside the PEM blocks")
        try:
            der = base64.b64decode(b"".join(match.group("body").split()), validate=True)
        except binascii.Error:
            raise PolicyError("pem-base64", "a PEM block has invalid base64") from None
        blocks.append((match.group("label").decode(), der))
        pos = match.end()
    if data[pos:].strip():
        raise PolicyError("pem-junk", "unexpected data after the last PEM block")
    if not blocks:
        raise PolicyError("pem-empty", "no PEM block found")
    return blocks


def looks_like_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN ")


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint of a DER encoding, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def public_key_fingerprint(key: PublicKeyTypes) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo (DER), lower-case hex: the same key, whatever
    certificate or CSR carries it, has the same fingerprint."""
    return fingerprint(key.public_bytes(serialization.Encoding.DER, _SPKI))


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Load one or more certificates from PEM (strictly) or a single DER certificate."""
    try:
        if looks_like_pem(data):
            return [
                x509.load_der_x509_certificate(der)
                for label, der in pem_blocks(data)
                if label == "CERTIFICATE"
            ]
        return [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion) as exc:
        if isinstance(exc, PolicyError):
            raise
        raise PolicyError("cert-malformed", f"not a valid X.509 certificate: {exc}") from None


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """A degenerate PKCS#7 SignedData holding certificates only (DER), as EST returns them."""
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
