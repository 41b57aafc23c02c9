"""The CA behind the simulator's devices: the real authority and store, or a model of its answers.

`RealCa` signs every certificate through devid's own enrollment service (the EST server's, minus
HTTP and TLS) on a throw-away home whose clock is the simulation's: for small fleets, and to check
the model. `ModelledCa` answers as that service does for these devices (lifetime, renewal time
and fallback rule from the same `LabelPolicy`, refusal once revoked) without signing or storing;
a test runs both on one fleet and seed and finds the same outcomes. Its cost is the issuance rate
measured on this machine (`measured_issuance_rate`), against which the simulator states CA load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential
from devid.authority.enroll import Operation, has_operational_identity
from devid.authority.enrollment import EnrollmentService, EnrollRequest
from devid.authority.policy import LabelPolicy
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.clock import FixedClock
from devid.device.decisions import Issued
from devid.errors import DevidError
from devid.est.client import EstError
from devid.keys.software import SoftwareSecureElement
from devid.pki.encoding import load_certificates
from devid.pki.profiles import CLOCK_SKEW, ProfileName
from devid.pki.reasons import Reason
from devid.store.engine import reading
from devid.store.models import devices as devices_table
from devid.store.states import DeviceState
from devid.web.errors import status_for


class SimCa(Protocol):
    """What the simulator asks of a CA, for one device serial at the simulated time `now`."""

    async def issue(self, serial: str, now: datetime, *, with_idevid: bool) -> Issued: ...

    def revoke(self, serial: str, now: datetime) -> None: ...

    def refuses_for_good(self, serial: str) -> bool:
        """Whether no request of this device will ever be granted again (revoked, or an identity
        its policy does not re-enroll): the simulator retires it."""
        ...


class ModelledCa:
    """The enrollment service's answers for one label's policy, without signing."""

    def __init__(self, policy: LabelPolicy) -> None:
        self.policy = policy
        self._serial = 0
        self._issued: set[str] = set()
        self._revoked: set[str] = set()

    async def issue(self, serial: str, now: datetime, *, with_idevid: bool) -> Issued:
        if serial in self._revoked:
            raise EstError(403, f"device {serial!r} is revoked [device-revoked]")
        if with_idevid and not self.policy.idevid_fallback and serial in self._issued:
            raise EstError(403, f"device {serial!r} already holds an LDevID [idevid-reenroll-refused]")
        self._serial += 1
        self._issued.add(serial)
        not_before, not_after = now - CLOCK_SKEW, now + self.policy.lifetime
        return Issued(
            self._serial,
            format(self._serial, "x"),
            not_before,
            not_after,
            self.policy.policy.value,
            self.policy.renew_at(not_before, not_after, serial),
        )

    def revoke(self, serial: str, now: datetime) -> None:
        self._revoked.add(serial)

    def refuses_for_good(self, serial: str) -> bool:
        return serial in self._revoked or (not self.policy.idevid_fallback and serial in self._issued)


class RealCa:
    """devid's enrollment service on a real authority; devices from the real factory line."""

    def __init__(
        self, authority: Authority, clock: FixedClock, label: str, devices: Path, serials: Sequence[str]
    ) -> None:
        self.authority = authority
        self.clock = clock
        self.label = label
        self.service = EnrollmentService(authority)
        self._folders = {s: devices / s for s in serials}
        self._elements: dict[str, SoftwareSecureElement] = {}
        self._ldevid: dict[str, bytes] = {}
        self._chain = load_certificates((devices / serials[0] / "chain.pem").read_bytes())[:-1]

    def _element(self, serial: str) -> SoftwareSecureElement:
        if serial not in self._elements:
            self._elements[serial] = SoftwareSecureElement.open(self._folders[serial], durable=False)
        return self._elements[serial]

    async def issue(self, serial: str, now: datetime, *, with_idevid: bool) -> Issued:
        self.clock.set(now)
        se = self._element(serial)
        folder = self._folders[serial]
        idevid = load_certificates((folder / "idevid.pem").read_bytes())[0]
        if with_idevid:
            der = idevid.public_bytes(serialization.Encoding.DER)
            chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in self._chain)
        else:
            der, chain = self._ldevid[serial], ()
        subject = x509.load_der_x509_certificate(der).subject
        csr = se.sign_csr(x509.CertificateSigningRequestBuilder().subject_name(subject))
        request = EnrollRequest(
            self.label,
            Operation.ENROLL if with_idevid else Operation.REENROLL,
            CertificateCredential(der, chain, chain_verified=True),
            csr.public_bytes(serialization.Encoding.DER),
            actor="sim",
        )
        try:
            result = await self.service.enroll(request)
        except DevidError as exc:
            raise EstError(status_for(exc), f"{exc.message} [{exc.code}]") from None
        assert result.issued is not None
        cert = result.issued.certificate
        self._ldevid[serial] = cert.public_bytes(serialization.Encoding.DER)
        return Issued(
            cert.serial_number,
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            result.policy.policy.value,
            result.renew_at,
        )

    def revoke(self, serial: str, now: datetime) -> None:
        self.clock.set(now)
        revoke(self.authority, RevokeRequest(Selector.DEVICE, serial, Reason.KEY_COMPROMISE, "sim"), "sim")

    def refuses_for_good(self, serial: str) -> bool:
        with reading(self.authority.engine) as conn:
            state = conn.execute(
                devices_table.select()
                .with_only_columns(devices_table.c.state)
                .where(devices_table.c.serial == serial)
            ).scalar_one_or_none()
        if state == DeviceState.REVOKED.value:
            return True
        policy = self.authority.label_policy(self.label)
        return not policy.idevid_fallback and has_operational_identity(
            self.authority, serial, ProfileName.LDEVID
        )

    def close(self) -> None:
        self.service.close()


def measured_issuance_rate(seconds: float = 0.3) -> float:
    """Certificates a second this machine signs (P-256, SHA-256, the size of an LDevID): what a
    modelled issuance costs the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "devid sim")])
    now = datetime.now().astimezone()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .not_valid_before(now)
        .not_valid_after(now)
    )
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        builder.serial_number(x509.random_serial_number()).sign(key, hashes.SHA256())
        done += 1
    return done / elapsed
