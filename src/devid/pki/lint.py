"""Pre-issuance lint, as Boulder does it: a certificate is checked against fixed RFC 5280 rules
before the CA key signs it.

pkilint costs about 40 ms a certificate (twenty issuances), and a throw-away signature per
certificate a fifth of issuance, so the work is split: the first certificate of each (profile,
issuer) template is signed with a throw-away key and the result linted here (`problems`); every
certificate's variable fields are checked before signing (`check_fields`); tests/test_pkilint.py
runs the full pkilint over every profile, CRL kind and OCSP response.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from devid.errors import PolicyError

#: RFC 5280 4.1.2.2: a positive serial of at most 20 octets.
SERIAL_LIMIT = 1 << 159
#: The extensions a devid certificate may mark critical (RFC 5280 4.2.1.3, 4.2.1.6, 4.2.1.9).
_MAY_BE_CRITICAL = {
    ExtensionOID.KEY_USAGE,
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
}
_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def _refuse(problem: str) -> PolicyError:
    return PolicyError("certificate-lint", f"pre-issuance lint refused the certificate: {problem}")


def check_fields(serial: int, not_before: datetime, not_after: datetime, subject: x509.Name) -> None:
    """The per-certificate fields a template does not fix; raises PolicyError `certificate-lint`."""
    if not 0 < serial < SERIAL_LIMIT:
        raise _refuse("serial must be positive and at most 20 octets (RFC 5280 4.1.2.2)")
    if not not_before < not_after:
        raise _refuse("notBefore must precede notAfter (RFC 5280 4.1.2.5)")
    if not subject.rdns:  # an RDN is never empty; len(Name) costs five times as much
        raise _refuse("empty subject (devid names every subject, RFC 5280 4.1.2.6)")


def problems(cert: x509.Certificate, *, purpose_free: bool = False) -> list[str]:
    """What a signed certificate breaks of RFC 5280's structural rules; empty when clean.
    `purpose_free`: an end-entity certificate whose profile has no extendedKeyUsage (Matter's DAC)."""
    found: list[str] = []
    ext = {e.oid: e for e in cert.extensions}
    basic, usage = ext.get(ExtensionOID.BASIC_CONSTRAINTS), ext.get(ExtensionOID.KEY_USAGE)
    eku = ext.get(ExtensionOID.EXTENDED_KEY_USAGE)
    purposes = list(eku.value) if eku is not None and isinstance(eku.value, x509.ExtendedKeyUsage) else []
    if cert.version is not x509.Version.v3:
        found.append("not a version 3 certificate")
    if not 0 < cert.serial_number < SERIAL_LIMIT:
        found.append("serial not positive or longer than 20 octets (4.1.2.2)")
    if not cert.not_valid_before_utc < cert.not_valid_after_utc:
        found.append("notBefore not before notAfter (4.1.2.5)")
    if not isinstance(cert.signature_hash_algorithm, _SIGNATURE_HASHES):
        found.append("signature hash weaker than SHA-256")
    if basic is None or not basic.critical or not isinstance(basic.value, x509.BasicConstraints):
        found.append("basicConstraints missing or not critical (4.2.1.9)")
    if usage is None or not usage.critical or not isinstance(usage.value, x509.KeyUsage):
        found.append("keyUsage missing or not critical (4.2.1.3)")
    elif basic is not None and isinstance(basic.value, x509.BasicConstraints):
        is_ca = basic.value.ca
        if usage.value.key_cert_sign != is_ca:
            found.append("keyCertSign set exactly when the certificate is a CA (4.2.1.3, 4.2.1.9)")
        if not is_ca and not purposes and not purpose_free:
            found.append("end-entity certificate without extendedKeyUsage")
    if ExtensionOID.SUBJECT_KEY_IDENTIFIER not in ext:
        found.append("subjectKeyIdentifier missing (4.2.1.2)")
    if ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in ext and cert.issuer != cert.subject:
        found.append("authorityKeyIdentifier missing on a certificate not self-issued (4.2.1.1)")
    if not cert.subject.rdns:
        found.append("empty subject")
    if ExtensionOID.OCSP_NO_CHECK in ext and ExtendedKeyUsageOID.OCSP_SIGNING not in purposes:
        found.append("ocsp-nocheck on a certificate that is not an OCSP signer (RFC 6960 4.2.2.2.1)")
    if ExtendedKeyUsageOID.SERVER_AUTH in purposes and ExtensionOID.SUBJECT_ALTERNATIVE_NAME not in ext:
        found.append("TLS server certificate without subjectAltName (RFC 6125 6.4.4)")
    found.extend(
        f"unexpected critical extension {e.oid.dotted_string}"
        for e in cert.extensions
        if e.critical and e.oid not in _MAY_BE_CRITICAL
    )
    return found


def require_clean(cert: x509.Certificate, *, purpose_free: bool = False) -> None:
    """Raises PolicyError `certificate-lint` naming the first problem of `cert`, if any."""
    found = problems(cert, purpose_free=purpose_free)
    if found:
        raise _refuse("; ".join(found))
