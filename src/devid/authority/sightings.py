"""Gateways' reports of the certificates they carried, and what those say about revoked ones.

A gateway (`devid gateway --report`) tells the store, every minute or so, which certificates its
sessions presented since its last report, each with when it was first and last seen connected.
The store keeps one row per (gateway, certificate). A certificate reported connected after its
revocation, by more than `CUT_GRACE`, is marked: that is `devid health`'s revoked-still-connected
finding (a gateway failing open on stale data, one that does not enforce, a clock far off). The
grace covers an enforcing gateway's normal cut: it follows the signed status within seconds, and
a session open at the revocation is last seen at its cut.

A row not seen for `RETENTION` goes when its gateway next reports (a certificate that expired or
was replaced, a device moved to another gateway): the table holds about what the gateways carry.

Times are the gateway's, clamped to the store's clock: a gateway whose clock runs ahead must not
date a sighting in the future. Fingerprints the store does not know (a registered manufacturer's
IDevID, another PKI's certificate) are counted and left out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from devid.authority.core import Authority
from devid.store.engine import writing
from devid.store.models import certificates, devices, sightings
from devid.store.states import CertificateStatus

#: How long past its revocation a certificate may be reported connected before it counts as
#: still connected: an enforcing gateway's cut (seconds) plus clock skew between it and the CA.
CUT_GRACE = timedelta(minutes=2)
#: How long a (gateway, certificate) row is kept after its last sighting.
RETENTION = timedelta(days=30)
#: A gateway's name as it reports (`devid gateway --name`).
GATEWAY_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
#: The most sessions one report may carry (a report's body stays well under the server's 64 KiB).
MAX_REPORT = 300


@dataclass(frozen=True)
class Sighting:
    """A certificate seen connected at a gateway from `first_seen` to `last_seen`."""

    #: SHA-256 of the certificate's DER, lowercase hex (the store's certificate fingerprint).
    fingerprint: str
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class Recorded:
    """What a report changed: sightings kept, fingerprints unknown, and how many of those kept
    showed a certificate connected past its revocation."""

    recorded: int
    unknown: int
    revoked: int


def record(authority: Authority, gateway: str, seen: Sequence[Sighting]) -> Recorded:
    """Keep one gateway's report, and drop its rows past `RETENTION`, in one transaction."""
    now = authority.clock.now()
    by_fingerprint = {s.fingerprint: s for s in seen}
    with writing(authority.engine) as conn:
        conn.execute(
            delete(sightings).where(sightings.c.gateway == gateway, sightings.c.last_seen < now - RETENTION)
        )
        known = conn.execute(
            select(certificates.c.id, certificates.c.fingerprint, certificates.c.revoked_at).where(
                certificates.c.fingerprint.in_(list(by_fingerprint))
            )
        ).all()
        rows = [_row(gateway, by_fingerprint[r.fingerprint], r.id, r.revoked_at, now) for r in known]
        if rows:
            _upsert(conn, rows)
    revoked = sum(1 for row in rows if row["revoked_seen_at"] is not None)
    return Recorded(len(rows), len(by_fingerprint) - len(rows), revoked)


def _row(
    gateway: str, s: Sighting, certificate_id: int, revoked_at: datetime | None, now: datetime
) -> dict[str, Any]:
    last = min(s.last_seen, now)
    first = min(s.first_seen, last)
    past_revocation = revoked_at is not None and last > revoked_at + CUT_GRACE
    return {
        "gateway": gateway,
        "certificate_id": certificate_id,
        "first_seen": first,
        "last_seen": last,
        "revoked_seen_at": last if past_revocation else None,
    }


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert, or move an existing row's sightings on: its first stays, its last and its last
    past revocation only ever move later (a report arriving late changes nothing). SQLite and
    PostgreSQL spell ON CONFLICT alike; the later of two values is max() on one, greatest() on
    the other (SQLite's max() is NULL if either is, hence the coalesces)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    later = func.max if dialect is sqlite else func.greatest
    stmt = dialect.insert(sightings)
    new, old = stmt.excluded.revoked_seen_at, sightings.c.revoked_seen_at
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[sightings.c.gateway, sightings.c.certificate_id],
            set_={
                "last_seen": later(stmt.excluded.last_seen, sightings.c.last_seen),
                "revoked_seen_at": later(func.coalesce(new, old), func.coalesce(old, new)),
            },
        ),
        rows,
    )


def revoked_still_connected(since: datetime) -> Select[Any]:
    """Revoked certificates seen connected past their revocation at or after `since`, latest
    first: the certificate, its device, the gateway and when. Reads only the marked rows in that
    range (their own index)."""
    return (
        select(
            certificates.c.serial,
            devices.c.serial.label("device"),
            sightings.c.gateway,
            sightings.c.revoked_seen_at,
            certificates.c.revoked_at,
        )
        .select_from(sightings)
        .join(certificates, certificates.c.id == sightings.c.certificate_id)
        .outerjoin(devices, devices.c.id == certificates.c.device_id)
        .where(sightings.c.revoked_seen_at >= since, certificates.c.status == CertificateStatus.REVOKED)
        .order_by(sightings.c.revoked_seen_at.desc())
    )


def seen_for_device(device_id: int) -> Select[Any]:
    """Where a device's certificates were seen connected, latest first (its device page)."""
    return (
        select(
            sightings.c.gateway,
            certificates.c.serial,
            certificates.c.profile,
            sightings.c.first_seen,
            sightings.c.last_seen,
            sightings.c.revoked_seen_at,
        )
        .join(certificates, certificates.c.id == sightings.c.certificate_id)
        .where(certificates.c.device_id == device_id)
        .order_by(sightings.c.last_seen.desc())
    )
