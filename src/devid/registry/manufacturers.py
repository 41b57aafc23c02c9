"""Manufacturer CAs made outside devid, registered with proof of possession of their key.

AWS IoT's model: devid hands out a one-time registration code; the manufacturer signs a
verification certificate whose subject CN is that code with the CA's key; devid accepts the CA only
if that signature verifies under the CA's public key. Devices whose IDevID chains to an ACTIVE
manufacturer CA may then authenticate, and with `auto_register` they are registered just in time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from sqlalchemy import Connection, Row, insert, select, update

from devid.authority.core import Authority
from devid.authority.credential_key import CredentialKey, Purpose, legacy_digest
from devid.errors import ConflictError, PolicyError
from devid.pki.encoding import cert_der, fingerprint, load_certificates
from devid.pki.keypolicy import p256_key_of
from devid.registry.rows import by_name, change, update_versioned
from devid.store import outbox
from devid.store.models import manufacturers
from devid.store.models import registration_codes as codes
from devid.store.states import ManufacturerState

CODE_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class ManufacturerInfo:
    id: int
    name: str
    state: str
    auto_register: bool
    auto_activate: bool
    subject: str
    fingerprint: str
    not_after: datetime
    version: int
    certificate: x509.Certificate

    @classmethod
    def from_row(cls, row: Row[Any]) -> ManufacturerInfo:
        return cls(
            row.id,
            row.name,
            row.state,
            row.auto_register,
            row.auto_activate,
            row.subject,
            row.fingerprint,
            row.not_after,
            row.version,
            x509.load_der_x509_certificate(row.der),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "auto_register": self.auto_register,
            "auto_activate": self.auto_activate,
            "subject": self.subject,
            "fingerprint": self.fingerprint,
            "not_after": self.not_after.isoformat(),
            "version": self.version,
        }


def create_registration_code(authority: Authority, actor: str, ttl: timedelta = CODE_TTL) -> str:
    """A new one-time code (64 hex digits) to put in a verification certificate's CN. The store
    keeps its MAC under the credential key, so making one needs the CA secret unlocked."""
    code = secrets.token_hex(32)
    mac = authority.credentials.mac(Purpose.REGISTRATION_CODE, code)
    now = authority.clock.now()
    # The audit names the code by its MAC's prefix: no part of the code itself is kept.
    with change(
        authority, "manufacturer.register-code", mac[:16], actor, {"expires": (now + ttl).isoformat()}
    ) as conn:
        conn.execute(insert(codes).values(code=mac, created_at=now, expires_at=now + ttl))
    return code


def _single(data: bytes, what: str) -> x509.Certificate:
    certs = load_certificates(data)
    if len(certs) != 1:
        raise PolicyError(
            "cert-count", f"the {what} file must hold exactly one certificate, found {len(certs)}"
        )
    return certs[0]


def check_ca_certificate(ca: x509.Certificate, now: datetime, what: str = "manufacturer CA") -> None:
    """A CA certificate devid will trust for device IDevIDs: a P-256 CA that may sign certificates."""
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PolicyError("not-a-ca", f"the {what} certificate is not a CA (basicConstraints cA is not set)")
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise PolicyError("not-a-ca", f"the {what} certificate's keyUsage does not allow keyCertSign")
    p256_key_of(ca, f"{what} key", "cert-malformed")
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        raise PolicyError(
            "ca-expired",
            f"the {what} certificate is valid {ca.not_valid_before_utc.isoformat()} to "
            f"{ca.not_valid_after_utc.isoformat()}, not now",
        )


def _proof(ca_data: bytes, verification_data: bytes, now: datetime) -> tuple[x509.Certificate, str]:
    """The CA certificate and the registration code its verification certificate names, once
    that certificate is shown to be signed by the CA's key."""
    try:
        ca = _single(ca_data, "CA certificate")
        verification = _single(verification_data, "verification certificate")
        check_ca_certificate(ca, now)
        cns = verification.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, PolicyError):
            raise
        # cryptography parses names and extensions when first read, so a bad one surfaces here.
        raise PolicyError("cert-malformed", f"not a valid X.509 certificate: {exc}") from None
    try:
        verification.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise PolicyError(
            "verification-signature",
            "the verification certificate is not signed by this CA's key (its issuer name and "
            "signature must match the CA certificate): possession of the CA key is not proven",
        ) from None
    return ca, str(cns[0].value) if len(cns) == 1 else ""


def register(
    authority: Authority,
    name: str,
    ca_data: bytes,
    verification_data: bytes,
    *,
    auto_register: bool = False,
    auto_activate: bool = False,
    actor: str = "cli",
) -> ManufacturerInfo:
    """Register a manufacturer CA if the verification certificate proves possession of its key.

    Refused (PolicyError/ConflictError, nothing stored, the refusal audited): not a CA, not P-256,
    expired, verification CN not an issued code, code expired or used, verification not signed by
    the CA's key, a name or CA already registered.
    """
    now = authority.clock.now()
    try:
        ca, code = _proof(ca_data, verification_data, now)
        with change(
            authority, "manufacturer.register", name, actor, {"fingerprint": fingerprint(cert_der(ca))}
        ) as conn:
            _spend_code(conn, authority.credentials, code, now)
            info = _insert(conn, name, ca, auto_register, auto_activate, now)
            outbox.emit(conn, now, "manufacturer.registered", name, info.to_json())
    except (PolicyError, ConflictError) as exc:
        authority.record_refusal(exc, "manufacturer.register", name, actor)
        raise
    return info


def _spend_code(conn: Connection, key: CredentialKey, code: str, now: datetime) -> None:
    mac = key.mac(Purpose.REGISTRATION_CODE, code)
    row = conn.execute(select(codes).where(codes.c.code == mac)).first() if code else None
    if (
        row is None
        and code
        and conn.execute(select(codes.c.id).where(codes.c.code == legacy_digest(code))).first()
    ):
        raise PolicyError(
            "registration-code-legacy",
            "this registration code was stored by an older devid and is no longer accepted; get a new one",
        )
    if row is None or not hmac.compare_digest(row.code, mac):
        raise PolicyError(
            "registration-code-unknown",
            "the verification certificate's subject CN is not a registration code devid issued "
            "(get one with `devid manufacturer register-code`)",
        )
    if row.used_at is not None:
        raise PolicyError("registration-code-used", "this registration code was already used; get a new one")
    if now > row.expires_at:
        raise PolicyError(
            "registration-code-expired", f"this registration code expired at {row.expires_at.isoformat()}"
        )
    conn.execute(update(codes).where(codes.c.id == row.id).values(used_at=now))


def _insert(
    conn: Connection, name: str, ca: x509.Certificate, auto_register: bool, auto_activate: bool, now: datetime
) -> ManufacturerInfo:
    der = cert_der(ca)
    fp = fingerprint(der)
    if conn.execute(select(manufacturers.c.name).where(manufacturers.c.name == name)).first():
        raise ConflictError("duplicate-manufacturer", f"a manufacturer named {name!r} is already registered")
    other = conn.execute(select(manufacturers.c.name).where(manufacturers.c.fingerprint == fp)).first()
    if other is not None:
        raise ConflictError("duplicate-manufacturer", f"this CA is already registered as {other.name!r}")
    values = {
        "name": name,
        "state": ManufacturerState.ACTIVE,
        "auto_register": auto_register,
        "auto_activate": auto_activate,
        "subject": ca.subject.rfc4514_string(),
        "fingerprint": fp,
        "der": der,
        "not_after": ca.not_valid_after_utc,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    conn.execute(insert(manufacturers).values(**values))
    return ManufacturerInfo.from_row(by_name(conn, manufacturers, name, "manufacturer"))


def update_settings(
    authority: Authority,
    name: str,
    *,
    state: str | None = None,
    auto_register: bool | None = None,
    auto_activate: bool | None = None,
    version: int | None = None,
    actor: str = "cli",
) -> ManufacturerInfo:
    """Activate/deactivate a manufacturer or change its JITR settings (409 on a stale version)."""
    if state is not None and state not in {s.value for s in ManufacturerState}:
        raise PolicyError(
            "manufacturer-state", f"manufacturer state must be one of {', '.join(ManufacturerState)}"
        )
    values: dict[str, Any] = {
        k: v
        for k, v in (("state", state), ("auto_register", auto_register), ("auto_activate", auto_activate))
        if v is not None
    }
    now = authority.clock.now()
    with change(authority, "manufacturer.update", name, actor, dict(values)) as conn:
        row = by_name(conn, manufacturers, name, "manufacturer")
        update_versioned(conn, manufacturers, row, version, {**values, "updated_at": now})
        if state is not None and state != row.state:
            outbox.emit(conn, now, "manufacturer.state", name, {"from": row.state, "to": state})
        return ManufacturerInfo.from_row(by_name(conn, manufacturers, name, "manufacturer"))


def get(conn: Connection, name: str) -> ManufacturerInfo:
    return ManufacturerInfo.from_row(by_name(conn, manufacturers, name, "manufacturer"))


def list_all(conn: Connection) -> list[ManufacturerInfo]:
    return [
        ManufacturerInfo.from_row(r) for r in conn.execute(select(manufacturers).order_by(manufacturers.c.id))
    ]
