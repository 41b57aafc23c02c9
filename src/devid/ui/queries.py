"""What the dashboard's pages show, read from the store by indexed queries where an index exists.

Devices by state count one `ix_devices_state_id` range per state; the expiry timeline counts one
`ix_certificates_not_after` range per week; searches walk the unique serial index; a device's
certificates come by `ix_certificates_device`; revocations and published data by their keys.
Certificates by profile and status is one grouped pass over the certificates (no index covers
(profile, status, not_after)): the counters kept in the issuing transactions replace it later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from devid.store.models import certificates, devices, hubs, published, revocations
from devid.store.states import CertificateStatus, DeviceState

#: "Expiring" means within this of now.
EXPIRING_WITHIN = timedelta(days=30)
WEEKS = 52
SEARCH_LIMIT = 50


class Bucket:
    """The statuses the overview counts certificates in (a valid one expiring soon is 'expiring')."""

    VALID = "valid"
    EXPIRING = "expiring ≤30 d"
    EXPIRED = "expired"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"
    ALL = (VALID, EXPIRING, EXPIRED, REVOKED, SUPERSEDED)


@dataclass(frozen=True)
class Overview:
    device_states: list[tuple[str, int]]
    #: (profile, bucket) -> count
    certificates: dict[tuple[str, str], int]
    revocations: list[Any]
    #: (kind, scope, number, bytes, this_update) of the latest of each kind and scope.
    published: list[tuple[str, str, int, int, datetime]]


def overview(conn: Connection, now: datetime) -> Overview:
    states = [
        (state.value, conn.execute(select(func.count()).where(devices.c.state == state.value)).scalar_one())
        for state in DeviceState
    ]
    c = certificates.c
    bucket = case(
        (c.status == CertificateStatus.REVOKED.value, Bucket.REVOKED),
        (c.status == CertificateStatus.SUPERSEDED.value, Bucket.SUPERSEDED),
        (c.not_after <= now, Bucket.EXPIRED),
        (c.not_after <= now + EXPIRING_WITHIN, Bucket.EXPIRING),
        else_=Bucket.VALID,
    ).label("bucket")
    counts = {
        (row.profile, row.bucket): row.n
        for row in conn.execute(
            select(c.profile, bucket, func.count().label("n")).group_by(c.profile, bucket)
        )
    }
    latest_revocations = list(conn.execute(select(revocations).order_by(revocations.c.id.desc()).limit(10)))
    p = published.c
    latest = select(p.kind, p.scope, func.max(p.number).label("number")).group_by(p.kind, p.scope).subquery()
    rows = conn.execute(
        select(p.kind, p.scope, p.number, func.length(p.data).label("size"), p.this_update)
        .join(latest, and_(p.kind == latest.c.kind, p.scope == latest.c.scope, p.number == latest.c.number))
        .order_by(p.kind, p.scope)
    )
    return Overview(
        states,
        counts,
        latest_revocations,
        [(r.kind, r.scope, r.number, r.size, r.this_update) for r in rows],
    )


def expiry_weeks(conn: Connection, start: datetime, weeks: int = WEEKS) -> list[dict[str, int]]:
    """Valid certificates expiring in each of `weeks` weeks from `start`, by profile."""
    c = certificates.c
    out = []
    for week in range(weeks):
        lo, hi = start + timedelta(weeks=week), start + timedelta(weeks=week + 1)
        query = (
            select(c.profile, func.count().label("n"))
            .where(c.not_after >= lo, c.not_after < hi, c.status == CertificateStatus.VALID.value)
            .group_by(c.profile)
        )
        out.append({row.profile: row.n for row in conn.execute(query)})
    return out


def search(conn: Connection, prefix: str) -> list[Any]:
    """Devices whose serial starts with `prefix` (a range on the unique serial index)."""
    d = devices.c
    query = select(d.serial, d.state, d.model, d.lot).order_by(d.serial).limit(SEARCH_LIMIT)
    if prefix:
        query = query.where(d.serial >= prefix, d.serial < prefix + "\U0010ffff")
    return list(conn.execute(query))


@dataclass(frozen=True)
class DevicePage:
    device: Any
    hub: str | None
    certificates: list[Any]


def device(conn: Connection, serial: str) -> DevicePage | None:
    row = conn.execute(select(devices).where(devices.c.serial == serial)).first()
    if row is None:
        return None
    hub = None
    if row.hub_id is not None:
        hub = conn.execute(select(hubs.c.name).where(hubs.c.id == row.hub_id)).scalar_one_or_none()
    c = certificates.c
    certs = list(
        conn.execute(
            select(c.serial, c.profile, c.status, c.not_before, c.not_after, c.revoked_at, c.reason)
            .where(c.device_id == row.id)
            .order_by(c.id)
        )
    )
    return DevicePage(row, hub, certs)
