"""The authority's signatures over status data: CRLs, filters and allowlists (by the CA key), and
OCSP responses (by a delegated responder certificate the CA issues, RFC 6960 4.2.2.2).

A delegated responder keeps the CA key off the hot path of OCSP, where responses are signed by
the thousand; it carries id-pkix-ocsp-nocheck, so relying parties do not ask about it, and lives
90 days, renewed when a third of that is left. `devid init` makes one per issuing CA (the
`<ca>-ocsp` entries of the hierarchy, role `ocsp-signer`); its key stays in the CA keys' keystore
(sealed file or HSM) and each renewal certifies the same key again, recorded like every
certificate devid issues.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority import delegates
from devid.authority.core import Authority
from devid.errors import ConflictError, NotFoundError
from devid.pki.profiles import ProfileName

#: The role of a delegated OCSP responder in the hierarchy (`<ca>-ocsp`).
OCSP_SIGNER_ROLE = "ocsp-signer"


def sign_crl(
    authority: Authority, ca_name: str, builder: x509.CertificateRevocationListBuilder
) -> x509.CertificateRevocationList:
    """Sign a CRL of CA `ca_name` with that CA's key."""
    return builder.sign(authority.cas[ca_name].key, hashes.SHA256())


def blob_signer(authority: Authority, ca_name: str) -> ec.EllipticCurvePrivateKey:
    """The key that signs CA `ca_name`'s filters and allowlists: the CA key itself, so a device
    verifies them with the CA certificate it already holds."""
    return authority.cas[ca_name].key


@dataclass(frozen=True)
class Responder:
    """A delegated OCSP responder of one CA."""

    ca_name: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class Responders:
    """Each CA's current delegated responder, renewed when a third of its life is left; owned by
    the authority (`authority.owned(Responders, ...)`)."""

    def __init__(self, authority: Authority) -> None:
        self._authority = authority
        self._lock = threading.Lock()
        self._current: dict[str, Responder] = {}

    def responder(self, ca_name: str) -> Responder:
        now = self._authority.clock.now().astimezone(UTC)
        with self._lock:
            found = self._current.get(ca_name)
            if found is None or delegates.renew_due(found.certificate, now):
                found = self._current[ca_name] = self._load_or_issue(ca_name, now)
            return found

    def _load_or_issue(self, ca_name: str, now: datetime) -> Responder:
        ca = self._authority.cas[ca_name]
        made = self._authority.cas.get(f"{ca_name}-ocsp")
        if (
            made is not None
            and made.role == OCSP_SIGNER_ROLE
            and not delegates.renew_due(made.certificate, now)
        ):
            return Responder(ca_name, made.certificate, made.key)
        label = (
            made.key_label
            if made is not None and made.key_label
            else f"{self._authority.key_prefix}ocsp-{ca_name}"
        )
        keystore = ca.keystore
        try:
            key = keystore.load(label)
        except NotFoundError:
            try:
                key = keystore.generate(label)
            except ConflictError:  # another process made it first
                key = keystore.load(label)
        cert = delegates.current(self._authority, ca_name, ProfileName.OCSP_SIGNER, key.public_key(), now)
        if cert is None:
            cert = delegates.issue(
                self._authority,
                ca_name,
                ProfileName.OCSP_SIGNER,
                f"{ca_name} OCSP responder",
                key.public_key(),
                now,
            )
        return Responder(ca_name, cert, key)


def responder(authority: Authority, ca_name: str) -> Responder:
    """CA `ca_name`'s delegated OCSP responder (issued on first use, renewed when due)."""
    return authority.owned(Responders, lambda: Responders(authority)).responder(ca_name)
