"""Enrollment decisions: who may receive which certificate, whatever protocol carries the request.

The EST server (and later EST-coaps or any other front end) parses and encodes; this module
decides. It identifies a client certificate against devid's own CAs and store (Python 3.11's `ssl`
offers no verified chain, and the TLS layer is told not to check times so that an expired
certificate reaches the application and is refused here with a reason), checks HTTP Basic
enrollment secrets, applies the label's renewal policy, and calls the authority to issue.

Every refusal raised here is audited once: refusals from `Authority.issue` are audited by the
authority itself, the others here (as `est.<operation>`), when the client presented a credential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, select

from devid.authority.core import ISSUER_OF, Authority
from devid.authority.devices import approval_pending, consume_enrollment_secret, usable_secret
from devid.authority.group_commit import committer
from devid.authority.policy import LabelPolicy
from devid.authority.requests import Issued, IssueRequest, check_device_serial
from devid.errors import DevidError, PolicyError
from devid.pki.chain import issuer_among
from devid.pki.csr import load_and_check_csr, load_csr
from devid.pki.profiles import ProfileName
from devid.store import repo
from devid.store.engine import reading
from devid.store.states import CertificateStatus, DeviceState

#: Profiles a device may authenticate with.
CLIENT_PROFILES = (ProfileName.IDEVID, ProfileName.LDEVID, ProfileName.SESSION)


class AuthenticationRequired(DevidError):
    """No usable credential was presented (HTTP 401 with a challenge)."""


class Operation(StrEnum):
    ENROLL = "simpleenroll"
    REENROLL = "simplereenroll"
    SERVERKEYGEN = "serverkeygen"


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate devid issued, recorded and still trusts, with its device's standing."""

    certificate: x509.Certificate
    der: bytes
    fingerprint: str
    issuer: str
    profile: ProfileName
    device_serial: str
    device_state: str
    status: str
    #: The issuing chain above the certificate when it was issued outside devid (a registered
    #: manufacturer's IDevID); empty for devid's own certificates.
    chain: tuple[x509.Certificate, ...] = ()
    #: False for a manufacturer's device seen for the first time (registered just in time).
    registered: bool = True

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


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


class Onboarding(Protocol):
    """The registry as enrollment consults it (implemented by `devid.registry.onboarding`)."""

    def identify(self, der: bytes, chain: Sequence[bytes]) -> ClientCertificate:
        """A device with an IDevID issued outside devid, by a registered manufacturer CA. No writes."""
        ...

    def admit(self, client: ClientCertificate) -> Admission:
        """The device's enrollment (refusing a disabled one) and current assignment. No writes."""
        ...

    def register(
        self, client: ClientCertificate, admission: Admission, region: str | None, *, defer: bool
    ) -> tuple[ClientCertificate, Admission]:
        """Register the device just in time and allocate it, after every check passed; with
        `defer`, hand the writes back as `Admission.prepare` for the issuing transaction."""
        ...

    def active(self) -> bool:
        """Whether the registry has anything that may admit, register or allocate a device."""
        ...


@dataclass(frozen=True)
class CertificateCredential:
    """A TLS client certificate (DER), as the TLS layer or a trusted proxy gave it, with the
    certificates the client sent after it (leaf first), when the TLS layer exposes them.

    `chain_verified`: this process's own TLS handshake verified that `der` chains to a CA the
    server context trusts, so `identify_client` need not check the signature of a certificate of
    devid's own again (it must still match a stored record). False for a certificate taken from a
    proxy's header, or from anywhere else.
    """

    der: bytes
    chain: tuple[bytes, ...] = ()
    chain_verified: bool = False


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
    """What `decide` concluded: nothing to issue yet (`request` None: awaiting approval), or the
    request whose issuance completes the enrollment (`enroll` issues it through the group commit;
    an asynchronous front end may submit it to the committer itself and await the answer)."""

    policy: LabelPolicy
    device_serial: str
    request: IssueRequest | None = None
    private_key: ec.EllipticCurvePrivateKey | None = None
    assignment: dict[str, Any] | None = None

    def result(self, issued: Issued | None) -> EnrollResult:
        return EnrollResult(self.policy, self.device_serial, issued, self.private_key, self.assignment)


@dataclass(frozen=True)
class Refusal:
    """How to audit a refusal that `decide(..., record=False)` raised: attached to the exception
    as `refusal`, for a caller that records it off its event loop (`Authority.record_refusal`)."""

    action: str
    subject: str
    actor: str
    detail: dict[str, str]


def _now(authority: Authority) -> datetime:
    return authority.clock.now().astimezone(UTC)


def identify_client(
    authority: Authority, der: bytes, *, require_current: bool = True, chain_verified: bool = False
) -> ClientCertificate:
    """Which device presented `der`: issued by devid's manufacturing or operational CA (signature
    checked here), recorded in the store, and (with `require_current`) valid now by the authority's
    clock and not revoked or superseded. Raises PolicyError (`client-cert-*`) naming the problem.

    `chain_verified`: the caller's TLS handshake already verified the signatures up to devid's root
    (never set it for a certificate from a header): the issuer is then found by name, and the
    store record (same SHA-256 of the whole DER, same issuer) stands for the signature check.
    Records, validity, revocation and device state are checked on every call either way.

    Callers that accept a TLS client certificate must call this: the server context does not check
    certificate times (X509_V_FLAG_NO_CHECK_TIME) so that this check can answer with a reason.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PolicyError("client-cert-malformed", f"client certificate cannot be parsed: {exc}") from None
    issuing = [authority.cas[n] for n in dict.fromkeys(ISSUER_OF.values()) if n in authority.cas]
    if chain_verified:
        issuer = next((ca for ca in issuing if ca.certificate.subject == cert.issuer), None)
    else:
        found = issuer_among(cert, [ca.certificate for ca in issuing])
        issuer = next((ca for ca in issuing if ca.certificate is found), None)
    if issuer is None:
        raise PolicyError(
            "client-cert-unknown-issuer",
            "client certificate was not issued by this devid's manufacturing or operational CA",
        )
    fingerprint = hashlib.sha256(der).hexdigest()
    with reading(authority.engine) as conn:
        row = repo.certificate_by_fingerprint(conn, fingerprint)
    if row is None or row.issuer_id != issuer.id:
        raise PolicyError(
            "client-cert-unknown", "client certificate is not in this authority's records: it is not trusted"
        )
    try:
        profile = ProfileName(row.profile)
    except ValueError:
        profile = None
    if profile not in CLIENT_PROFILES or row.device_serial is None:
        raise PolicyError(
            "client-cert-profile",
            f"a {row.profile} certificate does not authenticate a device (IDevID, LDevID or session only)",
        )
    assert profile is not None
    serial_attrs = cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    if [a.value for a in serial_attrs] != [row.device_serial]:
        raise PolicyError(
            "client-cert-identity", "client certificate subject serialNumber does not match its device record"
        )
    client = ClientCertificate(
        cert, der, fingerprint, issuer.name, profile, row.device_serial, row.device_state, row.status
    )
    if require_current:
        check_current(authority, client)
    return client


def check_current(authority: Authority, client: ClientCertificate) -> None:
    """Refuse a client certificate that is expired, not yet valid, revoked or superseded."""
    now = _now(authority)
    cert = client.certificate
    what = f"client certificate ({client.profile.value} of device {client.device_serial})"
    if now > cert.not_valid_after_utc:
        raise PolicyError("client-cert-expired", f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
    if now < cert.not_valid_before_utc:
        raise PolicyError(
            "client-cert-not-yet-valid", f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    ca = authority.cas[client.issuer].certificate
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise PolicyError("client-cert-issuer-expired", f"the CA that issued the {what} is not valid now")
    if client.status != CertificateStatus.VALID:
        raise PolicyError(f"client-cert-{client.status}", f"{what} is {client.status}")


def check_enrollment_secret(authority: Authority, serial: str, secret: str) -> None:
    """Check (without spending it) a device's enrollment secret: AuthenticationRequired when the
    serial or secret is wrong, PolicyError when it was used or has expired."""
    with reading(authority.engine) as conn:
        usable_secret(conn, serial, secret, _now(authority), AuthenticationRequired)


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


def _require_active(serial: str, state: str) -> None:
    if state == DeviceState.PENDING_ACTIVATION:
        raise PolicyError(
            "device-pending-activation",
            f"device {serial!r} is registered and PENDING_ACTIVATION: an operator must activate it "
            f"(`devid device activate {serial}`) before it is issued a certificate",
        )
    if state != DeviceState.ACTIVE:
        raise PolicyError(
            "device-not-active", f"device {serial!r} is {state}: no certificate is issued to it"
        )


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


class _Context:
    """What a refusal is audited under."""

    def __init__(self) -> None:
        self.subject = "-"
        self.credential = "none"


@contextmanager
def _audited(authority: Authority, action: str, actor: str, ctx: _Context, record: bool) -> Iterator[None]:
    try:
        yield
    except DevidError as exc:
        if not getattr(exc, "audited", False) and ctx.credential != "none":
            detail = {"credential": ctx.credential}
            if record:
                authority.record_refusal(exc, action, ctx.subject, actor, detail)
                exc.audited = True  # type: ignore[attr-defined]
            else:
                exc.refusal = Refusal(action, ctx.subject, actor, detail)  # type: ignore[attr-defined]
        raise


def enroll(
    authority: Authority,
    label: str,
    operation: Operation,
    credential: Credential | None,
    csr_data: bytes,
    *,
    actor: str = "est",
    onboarding: Onboarding | None = None,
    region: str | None = None,
) -> EnrollResult:
    """Decide and issue one EST enrollment. Raises DevidError subclasses (audited) on refusal;
    returns a pending result (nothing issued) while the label's policy awaits operator approval.

    Rules:
    - IDevID (manufacturing CA, recorded, valid): first enrollment of an ACTIVE device; again
      later (the LDevID expired or was lost) only if the label's policy has `idevid_fallback`.
      Identity comes from the IDevID, never from the CSR.
    - LDevID / session certificate (current): re-enrollment; on `simplereenroll` the CSR's subject
      (and SAN, if any) must equal the certificate's; the certificate is superseded when the new
      one has the same profile. A session certificate renews only under a session label.
    - HTTP Basic (device serial + single-use secret): `simpleenroll` of an LDevID only; the secret
      is spent only after the CSR passed its checks and approval (if any) was given.
    - With `onboarding` (the registry): an IDevID from a registered manufacturer CA is accepted
      like devid's own, the device registered just in time; a device's enrollment (group or
      individual) supplies the renewal policy of the base label, refuses when disabled, and
      allocates the device to a hub (`region`: what the device reported, for lowest latency).
    """
    decision = decide(
        authority, label, operation, credential, csr_data, actor=actor, onboarding=onboarding, region=region
    )
    if decision.request is None:
        return decision.result(None)
    return decision.result(_issue(authority, decision.request, actor))


def decide(
    authority: Authority,
    label: str,
    operation: Operation,
    credential: Credential | None,
    csr_data: bytes,
    *,
    actor: str = "est",
    record: bool = True,
    onboarding: Onboarding | None = None,
    region: str | None = None,
) -> Decision:
    """Every check of `enroll` (same rules, same refusals) up to the issuance, which it leaves to
    the caller: the request to issue, or a pending decision. It reads the store; only the HTTP
    Basic path (it spends the enrollment secret) and onboarding (a device registered just in time
    or allocated, after every check passed) write. Refusals are audited here, or with
    `record=False` described in the exception's `refusal` attribute for the caller to record."""
    ctx = _Context()
    with _audited(authority, f"est.{operation.value}", actor, ctx, record):
        policy = authority.label_policy(label)
        if credential is None:
            raise AuthenticationRequired(
                "auth-required",
                "authenticate with a TLS client certificate (IDevID or LDevID) or HTTP Basic "
                "(device serial and enrollment secret)",
            )
        if isinstance(credential, SecretCredential):
            ctx.credential = "enrollment-secret"
            ctx.subject = credential.serial[:64] or "-"
            return _enroll_with_secret(authority, policy, operation, credential, csr_data)
        ctx.credential = "certificate"
        client = _identify(authority, credential, onboarding)
        ctx.subject = client.device_serial
        ctx.credential = client.profile.value
        return _enroll_with_certificate(authority, policy, operation, client, csr_data, onboarding, region)


def _identify(
    authority: Authority, credential: CertificateCredential, onboarding: Onboarding | None
) -> ClientCertificate:
    try:
        return identify_client(authority, credential.der, chain_verified=credential.chain_verified)
    except PolicyError as exc:
        # Not devid's own: perhaps a registered manufacturer's (whose CA may even share a name
        # with one of devid's, so an unknown record is tried too; the registry checks signatures).
        if onboarding is None or exc.code not in ("client-cert-unknown-issuer", "client-cert-unknown"):
            raise
    return onboarding.identify(credential.der, credential.chain)


def _csr_key(
    operation: Operation, csr_data: bytes
) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey | None]:
    """The checked CSR and the key to certify; for serverkeygen (RFC 7030 4.4.1) the CSR's key and
    signature are ignored, so only its syntax is checked, and a new P-256 key is made here."""
    if operation is Operation.SERVERKEYGEN:
        csr = load_csr(csr_data)
        private = ec.generate_private_key(ec.SECP256R1())
        return csr, private.public_key(), private
    csr, key = load_and_check_csr(csr_data)
    return csr, key, None


def _issue(authority: Authority, request: IssueRequest, actor: str) -> Issued:
    try:
        return committer(authority).issue(request, actor)
    except DevidError as exc:
        exc.audited = True  # type: ignore[attr-defined]
        raise


def _enroll_with_secret(
    authority: Authority,
    policy: LabelPolicy,
    operation: Operation,
    credential: SecretCredential,
    csr_data: bytes,
) -> Decision:
    serial = credential.serial
    try:
        check_device_serial(serial)
    except PolicyError:
        raise AuthenticationRequired("enroll-secret", "wrong device serial or enrollment secret") from None
    check_enrollment_secret(authority, serial, credential.secret)
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
    _require_active(serial, device_state(authority, serial))
    _, key = load_and_check_csr(csr_data)
    if policy.approval and approval_pending(authority, serial):
        return Decision(policy, serial)
    consume_enrollment_secret(authority, serial, credential.secret)
    request = IssueRequest(policy.profile, key, device_serial=serial, lifetime=policy.lifetime)
    return Decision(policy, serial, request)


def _enroll_with_certificate(
    authority: Authority,
    policy: LabelPolicy,
    operation: Operation,
    client: ClientCertificate,
    csr_data: bytes,
    onboarding: Onboarding | None = None,
    region: str | None = None,
) -> Decision:
    serial = client.device_serial
    if client.registered:
        _require_active(serial, client.device_state)
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
        csr, public_key, private_key = _csr_key(operation, csr_data)
        if onboarding is not None:
            # Approval holds the request without a certificate: then register now, else let the
            # registration commit with the certificate.
            client, admission = onboarding.register(client, admission, region, defer=not policy.approval)
            _require_active(serial, client.device_state)
        if policy.approval and approval_pending(authority, serial):
            return Decision(policy, serial)
    else:
        if client.profile is ProfileName.SESSION and policy.profile is not ProfileName.SESSION:
            raise PolicyError(
                "session-cert-not-accepted",
                f"a session certificate renews only session certificates, not label {policy.label!r} "
                f"({policy.profile.value})",
            )
        csr, public_key, private_key = _csr_key(operation, csr_data)
        if operation is Operation.REENROLL:
            _names_match(csr, client.certificate)
        if client.profile is policy.profile:
            supersedes = client.fingerprint
    request = IssueRequest(
        policy.profile,
        public_key,
        device_serial=serial,
        lifetime=policy.lifetime,
        supersedes=supersedes,
        supersedes_held=client.profile is ProfileName.IDEVID and policy.profile is ProfileName.LDEVID,
        prepare=admission.prepare,
    )
    return Decision(policy, serial, request, private_key, admission.assignment)
