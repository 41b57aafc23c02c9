"""One road for every credential: which device a client certificate authenticates.

EST enrollment, session tokens (and later the gateway, SCEP and CoAP) call `authenticate`; what
differs between them is data (the profiles they accept), never a copy of the check. The check:
the certificate chains to a CA trusted for those profiles (devid's manufacturing or operational
CA, or through `ManufacturerTrust` a registered manufacturer's), every link of the chain is valid
now by the authority's clock, the store holds its record (same SHA-256 of the DER, same issuer),
the subject serialNumber is the recorded device's, the certificate is neither revoked nor
superseded, and its device is ACTIVE.

Python 3.11's `ssl` offers no verified chain, and the TLS layer is told not to check times (so an
expired certificate reaches the application and is refused here with a reason): every endpoint
that accepts a client certificate must therefore come through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Protocol

from cryptography import x509

from devid.authority.core import ISSUER_OF, Authority
from devid.errors import CredentialRefused, PolicyError
from devid.pki.client_chain import CheckedChain, check_validity, client_path
from devid.pki.profiles import ProfileName
from devid.store import repo
from devid.store.engine import reading
from devid.store.states import CertificateStatus, DeviceState

#: What a device may enroll with (EST, SCEP): its IDevID, its LDevID, a session certificate, or
#: the RSA certificate a SCEP label opted into RSA issued it.
ENROLLMENT_PROFILES = frozenset(
    {ProfileName.IDEVID, ProfileName.LDEVID, ProfileName.SESSION, ProfileName.SCEP_RSA}
)
#: What a device may use once enrolled (session tokens): certificates of devid's operational CA.
OPERATIONAL_PROFILES = frozenset({ProfileName.LDEVID, ProfileName.SESSION})


@dataclass(frozen=True)
class CertificateCredential:
    """A TLS client certificate (DER), as the TLS layer or a trusted proxy gave it, with the
    certificates the client sent after it (leaf first), when the TLS layer exposes them.

    `chain_verified`: this process's own TLS handshake verified that `der` chains to a CA the
    server context trusts, so `authenticate` need not check the signature of a certificate of
    devid's own again (it must still match a stored record). False for a certificate taken from a
    proxy's header, or from anywhere else.
    """

    der: bytes
    chain: tuple[bytes, ...] = ()
    chain_verified: bool = False

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, hex: the identity the certificate claims, before it is checked."""
        return hashlib.sha256(self.der).hexdigest()


@dataclass(frozen=True)
class Identity:
    """A device authenticated by its client certificate, with the certificate's and device's standing."""

    certificate: x509.Certificate
    der: bytes
    fingerprint: str
    #: Name of the issuing CA: one of devid's, or a registered manufacturer's.
    issuer: str
    profile: ProfileName
    device_serial: str
    device_state: str
    status: str
    #: The CA certificates above the certificate, up to its trust anchor.
    chain: tuple[x509.Certificate, ...] = ()
    #: False for a manufacturer's device seen for the first time (to be registered just in time).
    registered: bool = True

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


class ManufacturerTrust(Protocol):
    """Devices whose IDevID was issued outside devid (implemented by `devid.registry.onboarding`)."""

    def identify(self, der: bytes, chain: Sequence[bytes]) -> Identity:
        """The device behind an IDevID of a registered manufacturer CA, its chain checked. No writes."""
        ...


def authenticate(
    authority: Authority,
    credential: CertificateCredential,
    *,
    accept: frozenset[ProfileName] = ENROLLMENT_PROFILES,
    onboarding: ManufacturerTrust | None = None,
) -> Identity:
    """The device `credential` authenticates, if its certificate is of a profile in `accept`:
    `identify` it, then `check_standing`.

    Raises CredentialRefused (`client-cert-*`) when the certificate does not authenticate anyone,
    PolicyError (`device-not-active`, `device-pending-activation`) when its device may not be
    served now. A device registered just in time (`registered` False) has no state yet: the
    caller checks it once the device is registered.
    """
    identity = identify(authority, credential, accept=accept, onboarding=onboarding)
    check_standing(authority, identity)
    return identity


def identify(
    authority: Authority,
    credential: CertificateCredential,
    *,
    accept: frozenset[ProfileName] = ENROLLMENT_PROFILES,
    onboarding: ManufacturerTrust | None = None,
) -> Identity:
    """Whose certificate this is, before its standing is checked (`authenticate` does both; the
    enrollment service calls the two in turn, to audit a refusal of standing under the device)."""
    try:
        return _own(authority, credential, accept)
    except CredentialRefused as exc:
        # Not devid's own: perhaps a registered manufacturer's (whose CA may even share a name
        # with one of devid's, so an unknown record is tried too; the registry checks signatures).
        if (
            onboarding is None
            or ProfileName.IDEVID not in accept
            or exc.code not in ("client-cert-unknown-issuer", "client-cert-unknown")
        ):
            raise
    return onboarding.identify(credential.der, credential.chain)


def _own(authority: Authority, credential: CertificateCredential, accept: frozenset[ProfileName]) -> Identity:
    """The identity of a certificate issued by one of devid's CAs trusted for `accept`: the pure
    chain check (`devid.pki.client_chain.client_path`, the gateway's too), then its record."""
    roles = dict.fromkeys(ISSUER_OF[p] for p in sorted(accept))
    issuing = [ca for role in roles for ca in authority.issuers_of(role)]
    names = [ca.name for ca in issuing]
    try:
        checked = client_path(
            credential.der,
            [],
            [ca.certificate for ca in issuing],
            signature_checked=credential.chain_verified,
        )
    except CredentialRefused as exc:
        if exc.code != "client-cert-unknown-issuer":
            raise
        raise CredentialRefused(
            "client-cert-unknown-issuer",
            f"client certificate was not issued by this devid's {' or '.join(names)} CA",
        ) from None
    issuer = next(ca for ca in issuing if ca.certificate is checked.issuer)
    fingerprint = credential.fingerprint
    with reading(authority.engine) as conn:
        row = repo.certificate_by_fingerprint(conn, fingerprint)
    if row is None or row.issuer_id != issuer.id:
        raise CredentialRefused(
            "client-cert-unknown", "client certificate is not in this authority's records: it is not trusted"
        )
    profile = next((p for p in accept if p.value == row.profile), None)
    if profile is None or row.device_serial is None:
        wanted = ", ".join(sorted(p.value for p in accept))
        raise CredentialRefused(
            "client-cert-profile",
            f"a {row.profile} certificate does not authenticate a device here ({wanted} only)",
        )
    if checked.device_serial != row.device_serial:
        raise CredentialRefused(
            "client-cert-identity", "client certificate subject serialNumber does not match its device record"
        )
    chain = (*authority.chain(issuer.name), authority.root)
    return Identity(
        checked.leaf,
        credential.der,
        fingerprint,
        issuer.name,
        profile,
        row.device_serial,
        row.device_state,
        row.status,
        chain,
    )


def check_standing(authority: Authority, identity: Identity) -> None:
    """Refuse a certificate outside its validity, under a CA outside its own
    (`devid.pki.client_chain.check_validity`, the gateway's check too), revoked or superseded,
    or whose (registered) device is not ACTIVE."""
    now = authority.clock.now()
    what = f"client certificate ({identity.profile.value} of device {identity.device_serial})"
    try:
        check_validity(CheckedChain(identity.certificate, identity.chain, identity.device_serial), now)
    except CredentialRefused as exc:
        raise CredentialRefused(exc.code, f"{what}: {exc.message}") from None
    if identity.status != CertificateStatus.VALID:
        raise CredentialRefused(f"client-cert-{identity.status}", f"{what} is {identity.status}")
    if identity.registered:
        require_active(identity.device_serial, identity.device_state)


def require_active(serial: str, state: str) -> None:
    """Refuse a device that is not ACTIVE, saying what an operator can do about it."""
    if state == DeviceState.PENDING_ACTIVATION:
        raise PolicyError(
            "device-pending-activation",
            f"device {serial!r} is registered and PENDING_ACTIVATION: an operator must activate it "
            f"(`devid device activate {serial}`) before it is served",
        )
    if state != DeviceState.ACTIVE:
        raise PolicyError("device-not-active", f"device {serial!r} is {state}: it is not served until ACTIVE")
