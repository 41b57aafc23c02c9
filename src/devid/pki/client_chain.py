"""The pure part of devid's one credential check: does a client certificate chain to a trusted CA,
is every link valid now, may it authenticate a TLS client, and which device does it name.

No store, no I/O: the authority adds its record and standing checks on top, and the edge gateway
(which never sees the store) relies on this alone plus a signed revocation status. Python 3.11's
`ssl` gives no verified chain and the TLS layers are told not to check times, so this is where
an expired or foreign certificate is refused, with a specific code:

- `client-cert-malformed`: not a parseable X.509 certificate;
- `client-cert-unknown-issuer`: no path of valid signatures to an anchor, or an issuer on it that
  may not issue certificates (basic constraints, path length, key usage);
- `client-cert-expired` / `client-cert-not-yet-valid`: the certificate outside its validity;
- `client-cert-issuer-expired`: a CA on the path outside its validity;
- `client-cert-profile`: no clientAuth extended key usage (or a CA certificate as a client);
- `client-cert-identity`: no single serialNumber (the device serial) in the subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devid.errors import CredentialRefused
from devid.pki.chain import issuer_among

_E = TypeVar("_E", bound=x509.ExtensionType)
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
    except (ValueError, x509.InvalidVersion) as exc:
        raise CredentialRefused(
            "client-cert-malformed", f"client certificate cannot be parsed: {exc}"
        ) from None


def _named_issuer(cert: x509.Certificate, anchors: Sequence[x509.Certificate]) -> x509.Certificate | None:
    return next((a for a in anchors if a.subject == cert.issuer), None)


def _path(
    leaf: x509.Certificate,
    presented: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    signature_checked: bool = False,
) -> tuple[x509.Certificate, ...]:
    """The CAs above `leaf` by name and signature, anchors preferred, up to a self-signed
    certificate (or where no issuer is found), if the path meets an anchor; else refused.
    `signature_checked`: this process's TLS handshake verified the signatures up to the anchors
    (same trust), so anchors are matched by name alone."""
    cas: list[x509.Certificate] = []
    current = leaf
    trusted = False
    while len(cas) < MAX_DEPTH and current.issuer != current.subject:
        issuer = _named_issuer(current, anchors) if signature_checked else issuer_among(current, anchors)
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


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise CredentialRefused("client-cert-malformed", f"certificate extensions: {exc}") from None


def _require_cas(cas: Sequence[x509.Certificate]) -> None:
    """Each issuer on the path may issue certificates (RFC 5280 6.1.4 (k), (l), (n)): a signature
    alone would let a device's own key vouch for a certificate under it."""
    for below, ca in enumerate(cas):
        constraints = _extension(ca, x509.BasicConstraints)
        usage = _extension(ca, x509.KeyUsage)
        if (
            constraints is None
            or not constraints.ca
            or (constraints.path_length is not None and below > constraints.path_length)
            or (usage is not None and not usage.key_cert_sign)
        ):
            raise CredentialRefused(
                "client-cert-unknown-issuer",
                f"{ca.subject.rfc4514_string()!r} on the client certificate's path may not issue it "
                "(basic constraints, path length or key usage)",
            )


def check_client_chain(
    cert: x509.Certificate | bytes,
    presented: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> CheckedChain:
    """Check a TLS client certificate (DER or parsed) against `anchors` (trusted CA certificates:
    roots and intermediates alike) at `now`; `presented`: the other certificates the client sent.
    `client_path` then `check_validity`.

    Raises CredentialRefused with one of the codes in the module docstring.
    """
    chain = client_path(cert, presented, anchors)
    check_validity(chain, now)
    return chain


def check_validity(chain: CheckedChain, now: datetime) -> None:
    """Refuse a chain with any certificate outside its validity at `now` (the `-expired`,
    `-not-yet-valid` and `-issuer-expired` codes)."""
    leaf, cas = chain.leaf, chain.cas
    now = now.astimezone(UTC)
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


def client_path(
    cert: x509.Certificate | bytes,
    presented: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    signature_checked: bool = False,
) -> CheckedChain:
    """Everything of the check but time: the path to an anchor, each issuer's power to issue,
    clientAuth, and the device serial (the authority checks times after it knows the device, so
    an expired certificate's refusal is recorded under its device)."""
    leaf = load_client_certificate(cert) if isinstance(cert, bytes) else cert
    try:
        return _checked(leaf, presented, anchors, signature_checked)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CredentialRefused):
            raise
        # cryptography parses names when first read: a malformed one on the path surfaces here
        # (TypeError for an attribute of a type its OID does not allow).
        raise CredentialRefused(
            "client-cert-malformed", f"a certificate on the client's path cannot be parsed: {exc}"
        ) from None


def _checked(
    leaf: x509.Certificate,
    presented: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    signature_checked: bool,
) -> CheckedChain:
    cas = _path(leaf, presented, anchors, signature_checked)
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    constraints = _extension(leaf, x509.BasicConstraints)
    if (
        eku is None
        or ExtendedKeyUsageOID.CLIENT_AUTH not in eku
        or (constraints is not None and constraints.ca)
    ):
        raise CredentialRefused(
            "client-cert-profile", "client certificate is not an end entity's for TLS clients (clientAuth)"
        )
    _require_cas(cas)
    serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(serials) != 1 or not isinstance(serials[0].value, str) or not serials[0].value:
        raise CredentialRefused(
            "client-cert-identity",
            "client certificate subject carries no single serialNumber (device serial)",
        )
    return CheckedChain(leaf, cas, serials[0].value)
