"""The pure part of devid's one credential check: does a client certificate chain to a trusted CA,
is every link valid now, may it authenticate a TLS client, and which device does it name.

No store, no I/O: the authority adds its record and standing checks on top, and the edge gateway
(which never sees the store) relies on this alone plus a signed revocation status. Python 3.11's
`ssl` gives no verified chain and the TLS layers are told not to check times, so this is where
an expired or foreign certificate is refused, with a specific code:

- `client-cert-malformed`: not a parseable X.509 certificate;
- `client-cert-unknown-issuer`: no path of valid signatures to an anchor, or the path fails RFC
  5280 path validation (CA flags, key usage, path length: checked by cryptography's verifier);
- `client-cert-expired` / `client-cert-not-yet-valid`: the certificate outside its validity;
- `client-cert-issuer-expired`: a CA on the path outside its validity;
- `client-cert-profile`: no clientAuth extended key usage (or a CA certificate as a client);
- `client-cert-identity`: no single serialNumber (the device serial) in the subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from devid.errors import CredentialRefused
from devid.pki.chain import issuer_among

#: Longest path considered (leaf, intermediates, anchor): devid's is 3, a manufacturer's rarely 5.
MAX_DEPTH = 8


@dataclass(frozen=True)
class CheckedChain:
    """A client certificate that passed `check_client_chain`, with the path that vouches for it."""

    leaf: x509.Certificate
    #: The CA certificates above the leaf, its issuer first, up to the anchor or its self-signed root.
    cas: tuple[x509.Certificate, ...]
    #: The subject serialNumber: the device the certificate names.
    device_serial: str

    @property
    def issuer(self) -> x509.Certificate:
        return self.cas[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number


def load_client_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CredentialRefused(
            "client-cert-malformed", f"client certificate cannot be parsed: {exc}"
        ) from None


def _path(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The CAs above `leaf` by name and signature, anchors preferred, up to a self-signed
    certificate (or where no issuer is found), if the path meets an anchor; else refused."""
    cas: list[x509.Certificate] = []
    current = leaf
    trusted = False
    while len(cas) < MAX_DEPTH and current.issuer != current.subject:
        issuer = issuer_among(current, anchors)
        if issuer is not None:
            trusted = True
        else:
            issuer = issuer_among(current, [c for c in presented if c not in cas])
        if issuer is None or issuer in cas:
            break
        cas.append(issuer)
        current = issuer
    if not trusted:
        raise CredentialRefused(
            "client-cert-unknown-issuer",
            f"client certificate (issuer {leaf.issuer.rfc4514_string()!r}) does not chain to a trusted CA",
        )
    return tuple(cas)


def check_client_chain(
    cert: x509.Certificate | bytes,
    presented: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> CheckedChain:
    """Check a TLS client certificate (DER or parsed) against `anchors` (trusted CA certificates:
    roots and intermediates alike) at `now`; `presented`: the other certificates the client sent.

    Raises CredentialRefused with one of the codes in the module docstring.
    """
    leaf = load_client_certificate(cert) if isinstance(cert, bytes) else cert
    now = now.astimezone(UTC)
    cas = _path(leaf, presented, anchors)
    if now > leaf.not_valid_after_utc:
        raise CredentialRefused(
            "client-cert-expired", f"client certificate expired at {leaf.not_valid_after_utc.isoformat()}"
        )
    if now < leaf.not_valid_before_utc:
        raise CredentialRefused(
            "client-cert-not-yet-valid",
            f"client certificate is not valid before {leaf.not_valid_before_utc.isoformat()}",
        )
    for ca in cas:
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise CredentialRefused(
                "client-cert-issuer-expired",
                f"CA {ca.subject.rfc4514_string()!r} above the client certificate is not valid now",
            )
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    except ValueError as exc:
        raise CredentialRefused("client-cert-malformed", f"client certificate extensions: {exc}") from None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise CredentialRefused(
            "client-cert-profile", "client certificate is not for TLS clients (clientAuth)"
        )
    # The path's signatures and times are checked above, for the specific codes; cryptography's
    # RFC 5280 verifier adds what a signature does not prove (CA flags, key usage, path length).
    anchored = [ca for ca in cas if ca in anchors]
    verifier = PolicyBuilder().store(Store(anchored)).time(now).build_client_verifier()
    try:
        verifier.verify(leaf, list(cas))
    except VerificationError as exc:
        raise CredentialRefused(
            "client-cert-unknown-issuer", f"client certificate fails path validation: {exc}"
        ) from None
    serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1 or not isinstance(serials[0].value, str) or not serials[0].value:
        raise CredentialRefused(
            "client-cert-identity",
            "client certificate subject carries no single serialNumber (device serial)",
        )
    return CheckedChain(leaf, cas, serials[0].value)
