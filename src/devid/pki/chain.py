"""Finding a certificate's issuer among candidates: name match first, then the signature."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm


def issuer_among(cert: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The candidate whose name is `cert`'s issuer and whose key verifies `cert`'s signature."""
    for candidate in candidates:
        try:
            # Names are parsed when first read: a malformed one raises here, and rules the pair out.
            if candidate.subject != cert.issuer:
                continue
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return candidate
    return None


def key_identifier(certificate: x509.Certificate) -> str:
    """A CA's subject key identifier, hex: how allowlists name the CAs they cover."""
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
