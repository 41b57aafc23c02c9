"""Enrollment rules: who may receive which certificate, whatever protocol carries the request.

The EST server (and later EST-coaps or any other front end) parses and encodes; the enrollment
service (`devid.authority.enrollment`) authenticates, decides with these rules, commits and audits.
The rules: check HTTP Basic enrollment secrets, apply the label's renewal policy to a device
authenticated by its certificate (`devid.authority.credentials`), and say what to issue. They
raise the refusal and leave auditing it to the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Connection, select

from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, Identity, ManufacturerTrust, require_active
from devid.authority.devices import approval_pending, consume_enrollment_secret, usable_secret
from devid.authority.policy import LabelPolicy
from devid.authority.requests import Issued, IssueRequest, check_device_serial
from devid.errors import AuthenticationRequired, PolicyError
from devid.pki.csr import load_and_check_csr, load_csr
from devid.pki.keypolicy import DeviceKey
from devid.pki.profiles import PROFILES, ProfileName
from devid.store import repo
from devid.store.engine import reading


class Operation(StrEnum):
    ENROLL = "simpleenroll"
    REENROLL = "simplereenroll"
    SERVERKEYGEN = "serverkeygen"


@dataclass(frozen=True)
class Admission:
    """What the registry decided for a device: its enrollment's renewal policy (None: the label's)
    and where it is allocated (returned to the device)."""

    policy: LabelPolicy | None = None
    assignment: dict[str, Any] | None = None
    enrollment_id: int | None = None
    #: Registry writes (a device registered just in time, its allocation) to commit with the
    #: device's certificate, in the authority's transaction.
    prepare: Callable[[Connection, datetime], None] | None = None


class Onboarding(ManufacturerTrust, Protocol):
    """The registry as enrollment consults it (implemented by `devid.registry.onboarding`)."""

    def admit(self, client: Identity) -> Admission:
        """The device's enrollment (refusing a disabled one) and current assignment. No writes."""
        ...

    def register(
        self, client: Identity, admission: Admission, region: str | None, *, defer: bool
    ) -> tuple[Identity, Admission]:
        """Register the device just in time and allocate it, after every check passed; with
        `defer`, hand the writes back as `Admission.prepare` for the issuing transaction."""
        ...

    def active(self) -> bool:
        """Whether the registry has anything that may admit, register or allocate a device."""
        ...


@dataclass(frozen=True)
class SecretCredential:
    """HTTP Basic: user = device serial, password = single-use enrollment secret."""

    serial: str
    secret: str


Credential = CertificateCredential | SecretCredential


@dataclass(frozen=True)
class EnrollResult:
    """An issued certificate, or `pending` (awaiting operator approval: nothing issued)."""

    policy: LabelPolicy
    device_serial: str
    issued: Issued | None = None
    #: Only for server-side key generation: the new private key (sent once, never stored).
    private_key: ec.EllipticCurvePrivateKey | None = None
    #: The registration result (device id, hub, properties) when the device is allocated.
    assignment: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self.issued is None

    @property
    def renew_at(self) -> datetime | None:
        if self.issued is None:
            return None
        cert = self.issued.certificate
        return self.policy.renew_at(cert.not_valid_before_utc, cert.not_valid_after_utc, self.device_serial)


@dataclass(frozen=True)
class Decision:
    """What the rules concluded: nothing to issue yet (`request` None: awaiting approval), or the
    request whose issuance completes the enrollment (the service submits it to the group commit)."""

    policy: LabelPolicy
    device_serial: str
    request: IssueRequest | None = None
    private_key: ec.EllipticCurvePrivateKey | None = None
    assignment: dict[str, Any] | None = None

    def result(self, issued: Issued | None) -> EnrollResult:
        return EnrollResult(self.policy, self.device_serial, issued, self.private_key, self.assignment)


def check_secret(authority: Authority, credential: SecretCredential) -> None:
    """Authenticate HTTP Basic without spending the secret: AuthenticationRequired when the serial
    or secret is wrong, PolicyError when the secret was used or has expired."""
    try:
        check_device_serial(credential.serial)
    except PolicyError:
        raise AuthenticationRequired("enroll-secret", "wrong device serial or enrollment secret") from None
    now = authority.clock.now().astimezone(UTC)
    with reading(authority.engine) as conn:
        usable_secret(
            conn, authority.credentials, credential.serial, credential.secret, now, AuthenticationRequired
        )


def device_state(authority: Authority, serial: str) -> str:
    with reading(authority.engine) as conn:
        device = repo.device_by_serial(conn, serial)
    if device is None:
        raise AuthenticationRequired("enroll-secret", "wrong device serial or enrollment secret")
    return str(device.state)


def has_operational_identity(authority: Authority, serial: str, profile: ProfileName) -> bool:
    """Whether the device was ever issued a certificate of `profile` (LDevID): enrolled before."""
    certs, devices = repo.certificates, repo.devices
    query = (
        select(certs.c.id)
        .join(devices, devices.c.id == certs.c.device_id)
        .where(devices.c.serial == serial, certs.c.profile == profile.value)
        .limit(1)
    )
    with reading(authority.engine) as conn:
        return conn.execute(query).first() is not None


def _names_match(csr: x509.CertificateSigningRequest, current: x509.Certificate) -> None:
    """RFC 7030 4.2.2: a re-enrollment CSR names the subject (and SAN, if it carries one) of the
    certificate being renewed. devid's profile sets the SAN, so a CSR without one changes nothing."""
    if csr.subject != current.subject:
        raise PolicyError(
            "reenroll-subject-mismatch",
            f"CSR subject {csr.subject.rfc4514_string()!r} differs from the certificate being renewed "
            f"({current.subject.rfc4514_string()!r}); RFC 7030 4.2.2 requires them equal",
        )
    try:
        wanted = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    try:
        have = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        have = x509.SubjectAlternativeName([])
    if set(wanted) != set(have):
        raise PolicyError(
            "reenroll-san-mismatch",
            "CSR subjectAltName differs from that of the certificate being renewed (RFC 7030 4.2.2)",
        )


def _csr_key(
    operation: Operation, csr_data: bytes, allow_rsa: bool
) -> tuple[x509.CertificateSigningRequest, DeviceKey, ec.EllipticCurvePrivateKey | None]:
    """The checked CSR and the key to certify; for serverkeygen (RFC 7030 4.4.1) the CSR's key and
    signature are ignored, so only its syntax is checked, and a new P-256 key is made here."""
    if operation is Operation.SERVERKEYGEN:
        csr = load_csr(csr_data)
        private = ec.generate_private_key(ec.SECP256R1())
        return csr, private.public_key(), private
    csr, key = load_and_check_csr(csr_data, allow_rsa=allow_rsa)
    return csr, key, None


def _issued_profile(policy: LabelPolicy, key: DeviceKey) -> tuple[ProfileName, timedelta]:
    """The profile and lifetime to issue for `key`: an RSA key (accepted only on a SCEP label opted
    into RSA) gets its own profile, and lives no longer than that profile's short default."""
    if isinstance(key, rsa.RSAPublicKey):
        short = PROFILES[ProfileName.SCEP_RSA].validity
        return ProfileName.SCEP_RSA, min(policy.lifetime, short) if short else policy.lifetime
    return policy.profile, policy.lifetime


def decide_with_secret(
    authority: Authority,
    policy: LabelPolicy,
    operation: Operation,
    credential: SecretCredential,
    csr_data: bytes,
    *,
    allow_rsa: bool = False,
) -> Decision:
    """HTTP Basic (authenticated by `check_secret`): `simpleenroll` of an LDevID only; the secret is
    spent only after the CSR passed its checks and approval (if any) was given."""
    serial = credential.serial
    if operation is not Operation.ENROLL:
        raise PolicyError(
            "secret-not-accepted",
            f"{operation.value} needs a TLS client certificate (IDevID or LDevID); an enrollment secret "
            "is accepted by simpleenroll only",
        )
    if policy.profile is not ProfileName.LDEVID:
        raise PolicyError(
            "secret-not-accepted",
            f"label {policy.label!r} issues {policy.profile.value} certificates only to devices that "
            "authenticate with their IDevID or LDevID",
        )
    require_active(serial, device_state(authority, serial))
    _, key = load_and_check_csr(csr_data, allow_rsa=allow_rsa)
    if policy.approval and approval_pending(authority, serial):
        return Decision(policy, serial)
    consume_enrollment_secret(authority, serial, credential.secret)
    profile, lifetime = _issued_profile(policy, key)
    request = IssueRequest(
        profile, key, device_serial=serial, lifetime=lifetime, short_lived=policy.short_lived
    )
    return Decision(policy, serial, request)


def decide_with_certificate(
    authority: Authority,
    policy: LabelPolicy,
    operation: Operation,
    client: Identity,
    csr_data: bytes,
    onboarding: Onboarding | None = None,
    region: str | None = None,
    *,
    allow_rsa: bool = False,
) -> Decision:
    """A device authenticated by its certificate (`credentials.authenticate`, which checked a
    registered device is ACTIVE).

    - IDevID: first enrollment; again later (the LDevID expired or was lost) only if the label's
      policy has `idevid_fallback`. Identity comes from the IDevID, never from the CSR.
    - LDevID / session certificate: re-enrollment; on `simplereenroll` the CSR's subject (and SAN,
      if any) must equal the certificate's; the certificate is superseded when the new one has
      the same profile. A session certificate renews only under a session label.
    - With `onboarding` (the registry): a device's enrollment (group or individual) supplies the
      renewal policy of the base label, refuses when disabled, registers a manufacturer's device
      just in time and allocates it to a hub (`region`: what the device reported).
    """
    serial = client.device_serial
    admission = onboarding.admit(client) if onboarding is not None else Admission()
    if admission.policy is not None and policy.label == "":
        policy = admission.policy
    supersedes = None
    if client.profile is ProfileName.IDEVID:
        if (
            policy.profile is ProfileName.LDEVID
            and not policy.idevid_fallback
            and has_operational_identity(authority, serial, policy.profile)
        ):
            raise PolicyError(
                "idevid-fallback-refused",
                f"device {serial!r} already holds an LDevID and label {policy.label!r} "
                f"({policy.policy.value}) does not re-enroll with the IDevID: renew with the LDevID "
                "on simplereenroll",
            )
        csr, public_key, private_key = _csr_key(operation, csr_data, allow_rsa)
        if onboarding is not None:
            # Approval holds the request without a certificate: then register now, else let the
            # registration commit with the certificate.
            client, admission = onboarding.register(client, admission, region, defer=not policy.approval)
            require_active(serial, client.device_state)
        if policy.approval and approval_pending(authority, serial):
            return Decision(policy, serial)
    else:
        if client.profile is ProfileName.SESSION and policy.profile is not ProfileName.SESSION:
            raise PolicyError(
                "session-cert-not-accepted",
                f"a session certificate renews only session certificates, not label {policy.label!r} "
                f"({policy.profile.value})",
            )
        csr, public_key, private_key = _csr_key(operation, csr_data, allow_rsa)
        if operation is Operation.REENROLL:
            _names_match(csr, client.certificate)
        if client.profile is _issued_profile(policy, public_key)[0]:
            supersedes = client.fingerprint
    profile, lifetime = _issued_profile(policy, public_key)
    request = IssueRequest(
        profile,
        public_key,
        device_serial=serial,
        lifetime=lifetime,
        short_lived=policy.short_lived,
        supersedes=supersedes,
        supersedes_held=client.profile is ProfileName.IDEVID and policy.profile is ProfileName.LDEVID,
        prepare=admission.prepare,
    )
    return Decision(policy, serial, request, private_key, admission.assignment)
