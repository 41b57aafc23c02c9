"""Tables. Every request-path lookup has an index: serial, device, expiry, fingerprint, public key.

Each index is a B-tree every issuance writes to, so there are no more than the lookups need:
audit events are read in `seq` order (which is time order); a filtered listing (devices by state,
hub or manufacturer, certificates by profile) has a (filter, id) index that serves its filter and
its keyset order at once, so no listing or count scans a table at 10M rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from devid.store.states import CertificateStatus, DeviceState

#: SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite (no time zones) and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; devid works in aware UTC")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class CertificateAuthority(Base):
    __tablename__ = "cas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("cas.id"))
    key_label: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(512))
    serial: Mapped[str] = mapped_column(String(40))
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        Index("ix_devices_idevid_fingerprint", "idevid_fingerprint"),
        # Filtered listings page in id order: (filter, id) answers both without a scan.
        Index("ix_devices_state_id", "state", "id"),
        Index("ix_devices_hub_id", "hub_id", "id"),
        Index("ix_devices_manufacturer_id", "manufacturer_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    serial: Mapped[str] = mapped_column(String(128), unique=True)
    model: Mapped[str | None] = mapped_column(String(128))
    lot: Mapped[str | None] = mapped_column(String(128))
    line: Mapped[str | None] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(32), default=DeviceState.ACTIVE)
    se_backend: Mapped[str | None] = mapped_column(String(16))
    directory: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Enrollment approval (policies that hold enrollments until an operator approves).
    approval_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Onboarding (registry): who made it, which enrollment admitted it, where it was allocated.
    manufacturer_id: Mapped[int | None] = mapped_column(ForeignKey("manufacturers.id"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id"))
    hub_id: Mapped[int | None] = mapped_column(ForeignKey("hubs.id"))
    #: SHA-256 of an IDevID made outside devid (a registered manufacturer's), as first presented.
    idevid_fingerprint: Mapped[str | None] = mapped_column(String(64))
    properties: Mapped[str | None] = mapped_column(Text)
    registered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Optimistic concurrency for edits through the API: an update names the version it read.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Certificate(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        # Serials are unique per issuer; serial first so the same index serves lookups by serial.
        UniqueConstraint("serial", "issuer_id", name="uq_certificates_serial_issuer"),
        Index("ix_certificates_device", "device_id"),
        Index("ix_certificates_not_after", "not_after"),
        Index("ix_certificates_profile_id", "profile", "id"),
        Index("ix_certificates_public_key", "public_key_fingerprint"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    serial: Mapped[str] = mapped_column(String(40))
    issuer_id: Mapped[int] = mapped_column(ForeignKey("cas.id"))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    profile: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(512))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    #: SHA-256 of the certified SubjectPublicKeyInfo (DER): one key, one device.
    public_key_fingerprint: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=CertificateStatus.VALID)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EnrollmentSecret(Base):
    """A single-use secret for EST HTTP Basic enrollment; only its SHA-256 is stored."""

    __tablename__ = "enrollment_secrets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """One link of the hash chain: `hash` = SHA-256 over the previous hash and this event."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(256))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's head in one row: locking it serializes appenders across processes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Manufacturer(Base):
    """A third-party manufacturing CA, registered with proof of possession of its key."""

    __tablename__ = "manufacturers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    auto_register: Mapped[bool] = mapped_column(Boolean)
    auto_activate: Mapped[bool] = mapped_column(Boolean)
    subject: Mapped[str] = mapped_column(String(512))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)


class RegistrationCode(Base):
    """A one-time code a manufacturer CA must sign (as a verification certificate's CN)."""

    __tablename__ = "registration_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    manufacturer_id: Mapped[int | None] = mapped_column(ForeignKey("manufacturers.id"))


class Hub(Base):
    """An allocation target: where a registered device is told to connect."""

    __tablename__ = "hubs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(512))
    region: Mapped[str] = mapped_column(String(64))
    weight: Mapped[int] = mapped_column(Integer, default=1)
    #: JSON {device region: round-trip milliseconds} for the lowest-latency policy.
    latencies: Mapped[str] = mapped_column(Text, default="{}")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)


class Enrollment(Base):
    """An enrollment group (attests devices by signing certificate, DPS model) or an individual
    enrollment (one device by registration id, overriding its group). Both carry the same settings,
    so they share one table; `kind` tells them apart."""

    __tablename__ = "enrollments"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_enrollments_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    primary_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    primary_fingerprint: Mapped[str | None] = mapped_column(String(64))
    secondary_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    secondary_fingerprint: Mapped[str | None] = mapped_column(String(64))
    #: Individual enrollments may pin the device's IDevID (SHA-256 of its DER).
    certificate_fingerprint: Mapped[str | None] = mapped_column(String(64))
    #: Renewal policy as LabelPolicy config JSON; NULL: the EST label's policy.
    policy: Mapped[str | None] = mapped_column(Text)
    allocation: Mapped[str] = mapped_column(String(32))
    #: JSON list of hub names this enrollment allocates over (empty: every enabled hub).
    hubs: Mapped[str] = mapped_column(Text, default="[]")
    webhook_url: Mapped[str | None] = mapped_column(String(512))
    reprovision: Mapped[str] = mapped_column(String(16))
    properties: Mapped[str] = mapped_column(Text, default="{}")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)


class ApiToken(Base):
    """An admin API bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    rate_per_minute: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RegistryState(Base):
    """One row: a generation bumped by every registry change, in the same transaction. Server
    processes compare it to what they cached, so a change made anywhere reaches them all."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class TokenKey(Base):
    """A session-token signing key, shared by every host on the store. A software key is stored
    here encrypted under the home passphrase (as the CA keys are in the keystore); a PKCS#11 key
    stays in its token and only its label is recorded. `is_current` is TRUE for the one key that
    signs and NULL for retired ones: the unique constraint admits one current key."""

    __tablename__ = "token_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(128), unique=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    encrypted_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    is_current: Mapped[bool | None] = mapped_column(Boolean, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EventRecord(Base):
    """Outbox of registry events (JITR registrations, state changes), written in the transaction
    of the change they describe and delivered afterwards to every sink, in order."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    payload: Mapped[str] = mapped_column(Text)


class EventSink(Base):
    """Where events go: a webhook URL or an MQTT broker URL + topic; `cursor` is the last event
    id delivered there (at-least-once, in order)."""

    __tablename__ = "event_sinks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(512))
    topic: Mapped[str | None] = mapped_column(String(256))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Key of the webhook body signature (HMAC-SHA256); it must be readable to sign with.
    secret: Mapped[bytes | None] = mapped_column(LargeBinary)
