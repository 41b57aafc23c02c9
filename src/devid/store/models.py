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
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

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


metadata = MetaData()


cas = Table(
    "cas",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("role", String(32), nullable=False),
    Column("parent_id", Integer, ForeignKey("cas.id")),
    Column("key_label", String(128)),
    Column("subject", String(512), nullable=False),
    Column("serial", String(40), nullable=False),
    Column("not_after", UTCDateTime(), nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # Revocation bookkeeping, changed only in the transactions that allocate or revoke.
    #: The next dense certificate index to hand out (in blocks: `devid.authority.indices`).
    Column("next_index", BigInteger, default=0, server_default="0", nullable=False),
    #: Bumped by every transaction that changes a status under this CA; caches compare it.
    Column("revocation_gen", BigInteger, default=0, server_default="0", nullable=False),
    #: The last cRLNumber used (full, delta and shard CRLs share one sequence: RFC 5280 5.2.3).
    Column("crl_number", BigInteger, default=0, server_default="0", nullable=False),
    #: How many partitions this CA's CRLs have; fixed once certificates name their shard.
    Column("crl_shards", Integer, default=16, server_default="16", nullable=False),
)


devices = Table(
    "devices",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("serial", String(128), unique=True, nullable=False),
    Column("model", String(128)),
    Column("lot", String(128)),
    Column("line", String(128)),
    Column("state", String(32), default=DeviceState.ACTIVE, nullable=False),
    Column("se_backend", String(16)),
    Column("directory", String(1024)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # Enrollment approval (policies that hold enrollments until an operator approves).
    Column("approval_requested_at", UTCDateTime()),
    Column("approved_at", UTCDateTime()),
    # Onboarding (registry): who made it, which enrollment admitted it, where it was allocated.
    Column("manufacturer_id", Integer, ForeignKey("manufacturers.id")),
    Column("enrollment_id", Integer, ForeignKey("enrollments.id")),
    Column("hub_id", Integer, ForeignKey("hubs.id")),
    # SHA-256 of an IDevID made outside devid (a registered manufacturer's), as first presented.
    Column("idevid_fingerprint", String(64)),
    Column("properties", Text),
    Column("registered_at", UTCDateTime()),
    # Optimistic concurrency for edits through the API: an update names the version it read.
    Column("version", Integer, default=1, server_default="1", nullable=False),
    Index("ix_devices_idevid_fingerprint", "idevid_fingerprint"),
    # Filtered listings page in id order: (filter, id) answers both without a scan.
    Index("ix_devices_state_id", "state", "id"),
    Index("ix_devices_hub_id", "hub_id", "id"),
    Index("ix_devices_manufacturer_id", "manufacturer_id", "id"),
    # `devid health`: enrollments held for approval too long (NULL for the rest, never read).
    Index("ix_devices_approval_requested", "approval_requested_at"),
)


certificates = Table(
    "certificates",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("serial", String(40), nullable=False),
    Column("issuer_id", Integer, ForeignKey("cas.id"), nullable=False),
    Column("device_id", BigId, ForeignKey("devices.id")),
    Column("profile", String(32), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("not_before", UTCDateTime(), nullable=False),
    Column("not_after", UTCDateTime(), nullable=False),
    Column("fingerprint", String(64), unique=True, nullable=False),
    # SHA-256 of the certified SubjectPublicKeyInfo (DER): one key, one device.
    Column("public_key_fingerprint", String(64)),
    Column("status", String(16), default=CertificateStatus.VALID, nullable=False),
    Column("status_at", UTCDateTime()),
    Column("der", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    #: Dense index under the issuer (also inside the serial): the revocation filter's universe.
    Column("idx", BigInteger),
    #: The CRL partition named in the certificate's distribution point; NULL: never in a CRL
    #: (short-lived and session certificates, whose expiry is their revocation).
    Column("shard", Integer),
    Column("revoked_at", UTCDateTime()),
    #: RFC 5280 CRLReason code (`devid.pki.reasons.Reason`); 8 (removeFromCRL) once a hold is lifted.
    Column("reason", Integer),
    #: The `revocations` row that revoked it (no foreign key: added to a live table by ALTER).
    Column("revocation_id", BigInteger),
    #: The status a certificate had before it was revoked, restored if its hold is lifted.
    Column("held_status", String(16)),
    #: The issuer's `revocation_gen` when this certificate's status last changed by revocation.
    Column("status_gen", BigInteger),
    # Serials are unique per issuer; serial first so the same index serves lookups by serial.
    UniqueConstraint("serial", "issuer_id", name="uq_certificates_serial_issuer"),
    Index("ix_certificates_device", "device_id"),
    # A renewal finds the device's valid certificates among all it ever held.
    Index("ix_certificates_device_status", "device_id", "status"),
    Index("ix_certificates_not_after", "not_after"),
    Index("ix_certificates_profile_id", "profile", "id"),
    # One key, one device: issuance looks a key up; `devid health` counts devices per key from it alone.
    Index("ix_certificates_public_key_device", "public_key_fingerprint", "device_id"),
    # `devid health`: expiring or expired-unrenewed certificates of a profile (renewed: superseded).
    Index("ix_certificates_profile_status_expiry", "profile", "status", "not_after"),
    Index("ix_certificates_issuer_idx", "issuer_id", "idx", unique=True),
    # CRLs, deltas and caches read what changed under one issuer, in generation order.
    Index("ix_certificates_issuer_gen", "issuer_id", "status_gen"),
    # A revocation announces its certificates (and a listing shows them) without a scan.
    Index("ix_certificates_revocation", "revocation_id"),
)


#: Certificates counted by (profile, status, UTC expiry day), kept exact by triggers in every
#: transaction that inserts, updates or deletes a certificate (`devid.store.counters`): the
#: dashboard's counts by status and its expiry timeline read a few thousand of these, not 10M rows.
certificate_counts = Table(
    "certificate_counts",
    metadata,
    Column("profile", String(32), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("expiry", Date, primary_key=True),
    Column("n", BigInteger, nullable=False),
)


#: Devices counted by state under each hub, enrollment and manufacturer (`dimension` names which,
#: `ref` is its id, 0 for none), kept by triggers as `certificate_counts` is.
device_counts = Table(
    "device_counts",
    metadata,
    Column("dimension", String(16), primary_key=True),
    Column("ref", Integer, primary_key=True),
    Column("state", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
)


#: Public keys certified for more than one device, as found by a trigger on every certificate
#: write (`devid.store.counters`): `devid health` re-checks these few instead of the whole
#: (public key, device) index. A row may outlive its sharing (certificates deleted), never miss one.
shared_public_keys = Table(
    "shared_public_keys",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
)


#: Certificates seen connected at a gateway, as its reports say (`devid.authority.sightings`):
#: one row per (gateway, certificate), times by the gateway's clock. `revoked_seen_at` is set when
#: a report shows the certificate connected past its revocation (and the cut's grace): what
#: `devid health`'s revoked-still-connected check reads, from its own index.
sightings = Table(
    "sightings",
    metadata,
    Column("gateway", String(128), primary_key=True),
    Column("certificate_id", BigId, ForeignKey("certificates.id"), primary_key=True),
    Column("first_seen", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("revoked_seen_at", UTCDateTime()),
    # A device page lists where its certificates were seen.
    Index("ix_sightings_certificate", "certificate_id"),
    Index("ix_sightings_revoked_seen", "revoked_seen_at"),
    # A gateway's report drops its rows past retention.
    Index("ix_sightings_gateway_last_seen", "gateway", "last_seen"),
)


#: One revocation as an operator (or the API) made it: what was selected, why, how much it hit.
revocations = Table(
    "revocations",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("selector", String(16), nullable=False),
    Column("value", String(256), nullable=False),
    Column("reason", Integer, nullable=False),
    Column("note", Text, nullable=False),
    Column("certificates", Integer, nullable=False),
    Column("devices", Integer, nullable=False),
)


#: Signed status data as published (CRLs, filters, allowlists and their deltas): the latest of
#: each (kind, scope) is what the servers hand out; `number` is the cRLNumber or version.
published = Table(
    "published",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("kind", String(16), nullable=False),
    #: CA name, `<ca>/<shard>`, or a hub/group for allowlists.
    Column("scope", String(160), nullable=False),
    Column("number", BigInteger, nullable=False),
    #: The issuer's revocation_gen the data reflects (a delta's base has its own row).
    Column("generation", BigInteger, nullable=False),
    Column("base_number", BigInteger),
    Column("this_update", UTCDateTime(), nullable=False),
    Column("next_update", UTCDateTime(), nullable=False),
    Column("data", LargeBinary, nullable=False),
    UniqueConstraint("kind", "scope", "number", name="uq_published_kind_scope_number"),
)


#: A single-use secret for EST HTTP Basic enrollment; only its MAC under the credential key is
#: stored (`secret_hash`, hex).
enrollment_secrets = Table(
    "enrollment_secrets",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("device_id", BigId, ForeignKey("devices.id"), index=True, nullable=False),
    Column("secret_hash", String(64), unique=True, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
)


#: One link of the hash chain: `hash` = SHA-256 over the previous hash and this event.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # `devid audit list --since T --action A`: each filter walks an index, never the whole log.
    Index("ix_audit_events_at", "at"),
    Index("ix_audit_events_action_seq", "action", "seq"),
)


#: A signed anchor of the chain: event `seq` had hash `hash` at `at`, signed by the audit key
#: (beside the CA keys: the passphrase-sealed files or the HSM), so the database alone cannot
#: rewrite the chain and its checkpoints together.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("key_label", String(128), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)


#: The chain's head in one row: locking it serializes appenders across processes.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)


#: A third-party manufacturing CA, registered with proof of possession of its key.
manufacturers = Table(
    "manufacturers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("state", String(16), nullable=False),
    Column("auto_register", Boolean, nullable=False),
    Column("auto_activate", Boolean, nullable=False),
    Column("subject", String(512), nullable=False),
    Column("fingerprint", String(64), unique=True, nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("not_after", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("version", Integer, default=1, nullable=False),
)


#: A one-time code a manufacturer CA must sign (as a verification certificate's CN); `code` holds
#: its MAC under the credential key (hex), never the code.
registration_codes = Table(
    "registration_codes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(64), unique=True, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
    Column("manufacturer_id", Integer, ForeignKey("manufacturers.id")),
)


#: An allocation target: where a registered device is told to connect.
hubs = Table(
    "hubs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("url", String(512), nullable=False),
    Column("region", String(64), nullable=False),
    Column("weight", Integer, default=1, nullable=False),
    # JSON {device region: round-trip milliseconds} for the lowest-latency policy.
    Column("latencies", Text, default="{}", nullable=False),
    Column("enabled", Boolean, default=True, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("version", Integer, default=1, nullable=False),
)


#: An enrollment group (attests devices by signing certificate, DPS model) or an individual
#: enrollment (one device by registration id, overriding its group). Both carry the same settings,
#: so they share one table; `kind` tells them apart.
enrollments = Table(
    "enrollments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(128), nullable=False),
    Column("primary_der", LargeBinary),
    Column("primary_fingerprint", String(64)),
    Column("secondary_der", LargeBinary),
    Column("secondary_fingerprint", String(64)),
    # Individual enrollments may pin the device's IDevID (SHA-256 of its DER).
    Column("certificate_fingerprint", String(64)),
    # Renewal policy as LabelPolicy config JSON; NULL: the EST label's policy.
    Column("policy", Text),
    Column("allocation", String(32), nullable=False),
    # JSON list of hub names this enrollment allocates over (empty: every enabled hub).
    Column("hubs", Text, default="[]", nullable=False),
    Column("webhook_url", String(512)),
    Column("reprovision", String(16), nullable=False),
    Column("properties", Text, default="{}", nullable=False),
    Column("enabled", Boolean, default=True, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("version", Integer, default=1, nullable=False),
    UniqueConstraint("kind", "name", name="uq_enrollments_kind_name"),
)


#: An admin API bearer token; only its MAC under the credential key is stored (`token_hash`).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("token_hash", String(64), unique=True, nullable=False),
    Column("role", String(16), nullable=False),
    Column("rate_per_minute", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)


#: One row: a generation bumped by every registry change, in the same transaction. Server
#: processes compare it to what they cached, so a change made anywhere reaches them all.
registry_state = Table(
    "registry_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False),
)


#: A session-token signing key, shared by every host on the store. A software key is stored
#: here encrypted under the home passphrase (as the CA keys are in the keystore); a PKCS#11 key
#: stays in its token and only its label is recorded. `is_current` is TRUE for the one key that
#: signs and NULL for retired ones: the unique constraint admits one current key.
token_keys = Table(
    "token_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("label", String(128), unique=True, nullable=False),
    Column("kid", String(64), unique=True, nullable=False),
    Column("backend", String(16), nullable=False),
    Column("encrypted_key", LargeBinary),
    Column("is_current", Boolean, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("retired_at", UTCDateTime()),
)


#: Outbox of registry events (JITR registrations, state changes), written in the transaction
#: of the change they describe and delivered afterwards to every sink, in order.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("type", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("payload", Text, nullable=False),
)


#: Where events go: a webhook URL or an MQTT broker URL + topic; `cursor` is the last event
#: id delivered there (at-least-once, in order).
event_sinks = Table(
    "event_sinks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), unique=True, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("url", String(512), nullable=False),
    Column("topic", String(256)),
    Column("enabled", Boolean, default=True, nullable=False),
    Column("cursor", BigInteger, default=0, nullable=False),
    Column("failures", Integer, default=0, nullable=False),
    Column("last_error", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    # Key of the webhook body signature (HMAC-SHA256); it must be readable to sign with.
    Column("secret", LargeBinary),
)


#: SCEP PKCSReqs answered PENDING (RFC 8894 3.3.3), found by the requester's CertPoll: the
#: requester is the SHA-256 of the signing key's SubjectPublicKeyInfo, hex; the CSR is sealed
#: under the credential key (it carries the enrollment secret as challengePassword).
scep_transactions = Table(
    "scep_transactions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("transaction_id", String(128), nullable=False),
    Column("requester", String(64), nullable=False),
    Column("label", String(64), nullable=False),
    Column("csr", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("requester", "transaction_id"),
)
