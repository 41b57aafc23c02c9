"""Fleet health checks in the spirit of AWS IoT Device Defender's audit: what is about to expire,
what failed to renew, what is shared, what waits on an operator.

Every check is one or two SQL statements bounded by an index (the expiry, the (profile, status,
expiry) and the approval indexes of migration 0009, a device's certificates by device): a fleet of
a million devices is never read row by row, and a check reads roughly as many rows as it finds.
Each finding carries its total and the first `limit` names, so the answer stays small however
many devices it concerns. With a `cap` a check that may find a large part of the fleet stops
counting there (`more`): the dashboard's page then reads at most that many rows per check, not
the 100k a bad day can find. Shared keys are read from the few the store's triggers noted
(`shared_public_keys`), not from the whole public-key index. `run_checks` takes a connection and
the time: the CLI (exact counts) and the dashboard (capped) call the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import ColumnElement, Connection, Select, exists, func, literal, select, tuple_

from devid.authority.sightings import CUT_GRACE
from devid.authority.sightings import revoked_still_connected as seen_revoked
from devid.authority.status_signing import OCSP_SIGNER_ROLE
from devid.pki.profiles import ProfileName
from devid.store.models import cas, certificates, devices, manufacturers, shared_public_keys, sightings
from devid.store.states import CertificateStatus, DeviceState, ManufacturerState

#: How many devices (or CAs, keys) a finding names; its count is always the total.
EXAMPLES = 20


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    #: Nothing is known to be wrong, but the check could not look: its data source is missing.
    INFO = "info"


#: Findings of these severities make `devid health` exit non-zero.
FAILING = frozenset({Severity.CRITICAL, Severity.HIGH})


@dataclass(frozen=True)
class Windows:
    """How far ahead (or back) each check looks, in days."""

    ca_days: int = 365
    expiry_days: int = 30
    fallback_days: int = 7
    approval_days: int = 3
    #: How recent a revoked certificate's sighting at a gateway must be to count as still connected.
    connected_days: int = 7


@dataclass(frozen=True)
class Finding:
    """One check's result; a check that found nothing has count 0 (and its usual severity)."""

    check: str
    severity: Severity
    count: int
    examples: tuple[str, ...]
    #: What the check looked at, in one sentence (and, for `info`, what it could not see).
    note: str
    #: Counting stopped at the caller's cap: there are more than `count`.
    more: bool = False

    @property
    def failing(self) -> bool:
        return self.count > 0 and self.severity in FAILING

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "severity": self.severity.value,
            "count": self.count,
            "examples": list(self.examples),
            "note": self.note,
            "more": self.more,
        }


DEVICE_PROFILES = (ProfileName.IDEVID, ProfileName.LDEVID)
#: The certificates a device works with in the field; without one it falls back to its IDevID.
_OPERATIONAL = (ProfileName.LDEVID, ProfileName.SESSION)


def _day(at: datetime) -> str:
    return at.date().isoformat()


def _unindexed(column: ColumnElement[str]) -> ColumnElement[str]:
    """`column || ''`: the same value, but no index serves it. In a device's correlated subquery it
    keeps SQLite (which has no statistics unless ANALYZE ran) on the device's (device_id, status)
    index, a few rows, instead of the (profile, status, expiry) index, a range over the fleet; and
    keeps a filter by state off the (state, id) index, which would walk every ACTIVE device."""
    return column + literal("")


def _capped(conn: Connection, query: Select[Any], cap: int | None) -> tuple[list[Any], bool]:
    """The query's rows, or its first `cap` and whether there were more."""
    rows = list(conn.execute(query if cap is None else query.limit(cap + 1)).all())
    return (rows, False) if cap is None or len(rows) <= cap else (rows[:cap], True)


def _total_and_first(conn: Connection, query: Select[Any], limit: int) -> tuple[int, list[Any]]:
    """The total of a query's rows and its first `limit` rows (in the query's order)."""
    total = conn.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
    return int(total), list(conn.execute(query.limit(limit)).all()) if total else []


def ca_expiring(conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None) -> Finding:
    """devid's CAs and the ACTIVE registered manufacturer CAs expiring within the window (both
    tables hold a handful of rows); an expired one is critical. The OCSP signers (90 days, in the
    `cas` table) are left out: they always expire within a year, and are re-issued as they do."""
    horizon = now + timedelta(days=windows.ca_days)
    rows = [
        (f"ca:{r.name}", r.not_after)
        for r in conn.execute(
            select(cas.c.name, cas.c.not_after).where(
                cas.c.not_after < horizon, cas.c.role != OCSP_SIGNER_ROLE
            )
        )
    ] + [
        (f"manufacturer:{r.name}", r.not_after)
        for r in conn.execute(
            select(manufacturers.c.name, manufacturers.c.not_after).where(
                manufacturers.c.not_after < horizon, manufacturers.c.state == ManufacturerState.ACTIVE
            )
        )
    ]
    rows.sort(key=lambda r: r[1])
    expired = any(at <= now for _, at in rows)
    return Finding(
        "ca-expiring",
        Severity.CRITICAL if expired else Severity.MEDIUM,
        len(rows),
        tuple(f"{name} ({'expired' if at <= now else 'expires'} {_day(at)})" for name, at in rows[:limit]),
        f"CA and manufacturer CA certificates expiring within {windows.ca_days} days; expired: critical",
    )


def expiring_unrenewed(
    now: datetime, windows: Windows, profiles: tuple[ProfileName, ...] = DEVICE_PROFILES
) -> Select[Any]:
    """Valid device certificates of `profiles` ending within the window whose device holds no
    valid certificate of the same profile ending later (serial, profile, not_after, id), soonest
    first: nothing will take over when they expire."""
    cert = certificates.alias("cert")
    other = certificates.alias("other")
    renewed = exists().where(
        other.c.device_id == cert.c.device_id,
        other.c.status == CertificateStatus.VALID,
        _unindexed(other.c.profile) == cert.c.profile,
        other.c.not_after > cert.c.not_after,
    )
    return (
        select(devices.c.serial, cert.c.profile, cert.c.not_after, cert.c.id)
        .select_from(cert.join(devices, devices.c.id == cert.c.device_id))
        .where(
            cert.c.profile.in_(profiles),
            cert.c.status == CertificateStatus.VALID,
            cert.c.not_after > now,
            cert.c.not_after <= now + timedelta(days=windows.expiry_days),
            ~renewed,
        )
        .order_by(cert.c.not_after, cert.c.id)
    )


def device_cert_expiring(
    conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None
) -> Finding:
    """`expiring_unrenewed`, one walk of the (profile, status, expiry) index per profile, in
    expiry order, so a cap stops it early."""
    found: list[Any] = []
    more = False
    for profile in DEVICE_PROFILES:
        rows, capped = _capped(conn, expiring_unrenewed(now, windows, (profile,)), cap)
        found += rows
        more = more or capped
    found.sort(key=lambda r: (r.not_after, r.id))
    return Finding(
        "device-cert-expiring-no-renewal",
        Severity.MEDIUM,
        len(found),
        tuple(f"{r.serial} ({r.profile} expires {_day(r.not_after)})" for r in found[:limit]),
        f"valid device certificates expiring within {windows.expiry_days} days with no newer one",
        more,
    )


def revoked_still_connected(
    conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None
) -> Finding:
    """Revoked certificates a gateway reported connected past their revocation (critical), from
    the gateways' sightings (`devid.authority.sightings`). With no gateway reporting, the check
    says so (info) rather than read as a clean bill of health: devid's own EST and token
    endpoints refuse revoked certificates, so the store alone could never see one at work."""
    if conn.execute(select(sightings.c.gateway).limit(1)).first() is None:
        return Finding(
            "revoked-still-connected",
            Severity.INFO,
            0,
            (),
            "data source missing: no gateway reports its sessions (devid gateway --report)",
        )
    rows, more = _capped(conn, seen_revoked(now - timedelta(days=windows.connected_days)), cap)
    grace = int(CUT_GRACE.total_seconds())
    return Finding(
        "revoked-still-connected",
        Severity.CRITICAL,
        len(rows),
        tuple(
            f"{r.device or r.serial} (certificate {r.serial} at gateway {r.gateway}, "
            f"{_elapsed(r.revoked_seen_at - r.revoked_at)} after its revocation)"
            for r in rows[:limit]
        ),
        f"revoked certificates gateways reported connected over {grace} s after their revocation, "
        f"within the last {windows.connected_days} days (one per certificate and gateway)",
        more,
    )


def _elapsed(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} d"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min"


def shared_public_key(
    conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None
) -> Finding:
    """One public key certified for several devices: a cloned or leaked key (critical). The keys
    the store's triggers noted as shared, each re-checked on the (public key, device) index."""
    query = (
        select(
            certificates.c.public_key_fingerprint.label("key"),
            func.count(func.distinct(certificates.c.device_id)).label("devices"),
        )
        .where(
            certificates.c.public_key_fingerprint.in_(select(shared_public_keys.c.fingerprint)),
            certificates.c.device_id.is_not(None),
        )
        .group_by(certificates.c.public_key_fingerprint)
        .having(func.count(func.distinct(certificates.c.device_id)) > 1)
        .order_by(certificates.c.public_key_fingerprint)
    )
    total, rows = _total_and_first(conn, query, limit)
    named: list[str] = []
    for row in rows:
        serials = conn.execute(
            select(devices.c.serial)
            .distinct()
            .select_from(certificates.join(devices, devices.c.id == certificates.c.device_id))
            .where(certificates.c.public_key_fingerprint == row.key)
            .order_by(devices.c.serial)
            .limit(limit)
        ).scalars()
        named.append(f"key {row.key[:16]}: {', '.join(serials)}")
    return Finding(
        "shared-public-key",
        Severity.CRITICAL,
        total,
        tuple(named),
        "public keys certified for more than one device (count: keys)",
    )


def fallen_back(now: datetime, windows: Windows) -> Select[Any]:
    """ACTIVE devices whose LDevID expired more than `fallback_days` ago unrenewed and that hold no
    valid LDevID or session certificate since: they work, if at all, on their IDevID alone.

    A renewed LDevID is marked superseded, so an expired LDevID still `valid` is one that was never
    replaced: the (profile, status, expiry) index finds exactly those, never the renewed history,
    in expiry order; the device's (device_id, status) index then tells whether anything valid came
    since, and whether a later expired one names the device instead (each device once, with no
    grouping: the first rows come without reading the rest).
    """
    cert, other, later = certificates.alias("cert"), certificates.alias("other"), certificates.alias("later")
    expired = now - timedelta(days=windows.fallback_days)
    return (
        select(devices.c.serial, cert.c.not_after.label("expired"))
        .select_from(cert.join(devices, devices.c.id == cert.c.device_id))
        .where(
            cert.c.profile == ProfileName.LDEVID,
            cert.c.status == CertificateStatus.VALID,
            cert.c.not_after <= expired,
            _unindexed(devices.c.state) == DeviceState.ACTIVE,
            ~exists().where(
                other.c.device_id == cert.c.device_id,
                other.c.status == CertificateStatus.VALID,
                _unindexed(other.c.profile).in_(_OPERATIONAL),
                other.c.not_after > now,
            ),
            ~exists().where(
                later.c.device_id == cert.c.device_id,
                later.c.status == CertificateStatus.VALID,
                _unindexed(later.c.profile) == ProfileName.LDEVID,
                later.c.not_after <= expired,
                tuple_(later.c.not_after, later.c.id) > tuple_(cert.c.not_after, cert.c.id),
            ),
        )
        .order_by(cert.c.not_after, cert.c.id)
    )


def idevid_fallback_stuck(
    conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None
) -> Finding:
    """Active devices working on their IDevID alone for over `fallback_days` (`fallen_back`), in
    expiry order, so a cap stops the walk early."""
    rows, more = _capped(conn, fallen_back(now, windows), cap)
    return Finding(
        "idevid-fallback-stuck",
        Severity.HIGH,
        len(rows),
        tuple(f"{r.serial} (LDevID expired {_day(r.expired)})" for r in rows[:limit]),
        f"active devices without a valid LDevID or session certificate for over {windows.fallback_days} days",
        more,
    )


def held_for_approval(now: datetime, windows: Windows) -> Select[Any]:
    """Enrollments held for an operator's approval for longer than `approval_days`, oldest first."""
    return (
        select(devices.c.serial, devices.c.approval_requested_at)
        .where(
            devices.c.approval_requested_at <= now - timedelta(days=windows.approval_days),
            devices.c.approved_at.is_(None),
            _unindexed(devices.c.state).in_((DeviceState.ACTIVE, DeviceState.PENDING_ACTIVATION)),
        )
        .order_by(devices.c.approval_requested_at, devices.c.id)
    )


def approval_pending(
    conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None
) -> Finding:
    """Enrollments held for an operator's approval for longer than `approval_days`."""
    total, rows = _total_and_first(conn, held_for_approval(now, windows), limit)
    return Finding(
        "approval-pending-too-long",
        Severity.MEDIUM,
        total,
        tuple(f"{r.serial} (requested {_day(r.approval_requested_at)})" for r in rows),
        f"enrollments awaiting approval for over {windows.approval_days} days",
    )


def _is_p256(der: bytes) -> bool:
    key = x509.load_der_x509_certificate(der).public_key()
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def weak_key(conn: Connection, now: datetime, windows: Windows, limit: int, cap: int | None) -> Finding:
    """CA and registered manufacturer CA certificates whose key is not P-256 (a handful of rows).

    Device certificates are not parsed: devid issues only for P-256 keys (RSA ones only under the
    `scep-rsa` profile, on a label opted into RSA: found by profile), and the store records no key
    type to query a million of them by, so reading each would be the scan this module avoids.
    """
    named = [f"ca:{r.name}" for r in conn.execute(select(cas.c.name, cas.c.der)) if not _is_p256(r.der)]
    named += [
        f"manufacturer:{r.name}"
        for r in conn.execute(
            select(manufacturers.c.name, manufacturers.c.der).where(
                manufacturers.c.state == ManufacturerState.ACTIVE
            )
        )
        if not _is_p256(r.der)
    ]
    return Finding(
        "weak-key",
        Severity.LOW,
        len(named),
        tuple(named[:limit]),
        "CA and manufacturer CA keys other than P-256 (device keys are P-256 by issuance policy)",
    )


Check = Callable[[Connection, datetime, Windows, int, int | None], Finding]

#: Every check, in the order they are reported.
CHECKS: tuple[Check, ...] = (
    ca_expiring,
    device_cert_expiring,
    revoked_still_connected,
    shared_public_key,
    idevid_fallback_stuck,
    approval_pending,
    weak_key,
)


def run_checks(
    conn: Connection,
    now: datetime,
    windows: Windows = Windows(),
    limit: int = EXAMPLES,
    cap: int | None = None,
) -> list[Finding]:
    """Every check's finding, found or not, in `CHECKS` order; counts stop at `cap` if given."""
    return [check(conn, now, windows, limit, cap) for check in CHECKS]
