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

from sqlalchemy import Connection, and_, case, func, literal, select

from devid.pki.profiles import ProfileName
from devid.store.models import audit_events, certificates, devices, events, hubs, published, revocations
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


#: How many rows a list names (the counts are totals, up to `COUNT_CAP`).
LIST_LIMIT = 20
#: Counts stop here ("1,000+"): a count reads as many index entries as it counts, so it is capped.
COUNT_CAP = 1_000
#: How far back (events) a device page looks in the audit log and the outbox, neither of which
#: has an index by subject: the newest window is read by primary key, never the whole table.
TRAIL_WINDOW = 20_000
PAGE_SIZE = 50


@dataclass(frozen=True)
class Listed:
    """A capped count and the first rows of a query (`capped`: the count stopped at COUNT_CAP)."""

    count: int
    capped: bool
    rows: list[Any]


def listed(conn: Connection, query: Any, limit: int = LIST_LIMIT) -> Listed:
    """The capped count of `query`'s rows and its first `limit` rows."""
    n = conn.execute(select(func.count()).select_from(query.order_by(None).limit(COUNT_CAP + 1).subquery()))
    count = int(n.scalar_one())
    return Listed(
        min(count, COUNT_CAP), count > COUNT_CAP, list(conn.execute(query.limit(limit))) if count else []
    )


def overdue(conn: Connection, now: datetime, since: timedelta) -> Listed:
    """ACTIVE devices with a valid LDevID that expired within `since`: renewed ones are superseded,
    so these were never replaced (the (profile, status, expiry) index, one range)."""
    c = certificates.c
    query = (
        select(devices.c.serial, c.not_after)
        .select_from(certificates.join(devices, devices.c.id == c.device_id))
        .where(
            c.profile == ProfileName.LDEVID.value,
            c.status == CertificateStatus.VALID.value,
            c.not_after > now - since,
            c.not_after <= now,
            # `|| ''`: keep the planner off the (state, id) index, a walk over every ACTIVE device.
            devices.c.state + literal("") == DeviceState.ACTIVE.value,
        )
        .order_by(c.not_after, c.id)
    )
    return listed(conn, query)


def refusals(conn: Connection, action: str, since: datetime) -> Listed:
    """Refused `action`s (e.g. `est.simplereenroll`: only refusals are audited under it) since a
    time, newest first: the (action, seq) index from the first event at `since` (the `at` index)."""
    a = audit_events.c
    # The first event at `since` (seq and time grow together), one step into the `at` index.
    first = conn.execute(select(a.seq).where(a.at >= since).order_by(a.at, a.seq).limit(1)).scalar()
    query = (
        select(a.seq, a.at, a.subject, a.detail)
        .where(a.action == action, a.outcome == "refused", a.seq >= (first or 0))
        .order_by(a.seq.desc())
    )
    return listed(conn, query)


@dataclass(frozen=True)
class RevocationFilter:
    """What the revocations page lists: a reason, a selector kind (lot, device, ...), before an id."""

    reason: int | None = None
    selector: str | None = None
    before: int | None = None


def revocation_list(conn: Connection, where: RevocationFilter) -> list[Any]:
    """A keyset page of revocations, newest first (one row per operator action: a small table)."""
    r = revocations.c
    query = select(revocations).order_by(r.id.desc()).limit(PAGE_SIZE)
    if where.reason is not None:
        query = query.where(r.reason == where.reason)
    if where.selector:
        query = query.where(r.selector == where.selector)
    if where.before is not None:
        query = query.where(r.id < where.before)
    return list(conn.execute(query))


def revocation_totals(conn: Connection, by: Any) -> list[Any]:
    """Revocation actions, certificates and devices grouped by `by` (a revocations column)."""
    r = revocations.c
    query = (
        select(
            by.label("key"),
            func.count().label("actions"),
            func.sum(r.certificates).label("certificates"),
            func.sum(r.devices).label("devices"),
        )
        .group_by(by)
        .order_by(func.sum(r.certificates).desc())
    )
    return list(conn.execute(query))


def latest_published(conn: Connection) -> list[tuple[str, str, int, int, datetime]]:
    """(kind, scope, number, bytes, this_update) of the latest of each kind and scope: the maximum
    per (kind, scope) comes from the unique (kind, scope, number) index."""
    p = published.c
    latest = select(p.kind, p.scope, func.max(p.number).label("number")).group_by(p.kind, p.scope).subquery()
    rows = conn.execute(
        select(p.kind, p.scope, p.number, func.length(p.data).label("size"), p.this_update)
        .join(latest, and_(p.kind == latest.c.kind, p.scope == latest.c.scope, p.number == latest.c.number))
        .order_by(p.kind, p.scope)
    )
    return [(r.kind, r.scope, r.number, r.size, r.this_update) for r in rows]


def audit_page(conn: Connection, action: str, before: int | None) -> list[Any]:
    """Audit events newest first, keyset-paged by seq (the primary key, or the (action, seq) index)."""
    a = audit_events.c
    query = select(audit_events).order_by(a.seq.desc()).limit(PAGE_SIZE)
    if action:
        query = query.where(a.action == action)
    if before is not None:
        query = query.where(a.seq < before)
    return list(conn.execute(query))


@dataclass(frozen=True)
class Trail:
    """A device's audit events and outbox events among the newest `TRAIL_WINDOW` of each."""

    audit: list[Any]
    events: list[Any]


def trail(conn: Connection, serial: str, cert_serials: list[str]) -> Trail:
    """What the audit log and the outbox say about a device (its serial, `device:<serial>`, its
    certificates' serials), newest first, read from each table's newest window by primary key."""
    a, e = audit_events.c, events.c
    newest_seq = conn.execute(select(func.max(a.seq))).scalar_one() or 0
    subjects = [serial, f"device:{serial}", *cert_serials]
    audit_rows = conn.execute(
        select(a.seq, a.at, a.actor, a.action, a.outcome, a.subject, a.detail)
        .where(a.seq > newest_seq - TRAIL_WINDOW, a.subject.in_(subjects))
        .order_by(a.seq.desc())
        .limit(LIST_LIMIT)
    )
    newest_id = conn.execute(select(func.max(e.id))).scalar_one() or 0
    event_rows = conn.execute(
        select(e.id, e.at, e.type, e.payload)
        .where(e.id > newest_id - TRAIL_WINDOW, e.subject.in_(subjects))
        .order_by(e.id.desc())
        .limit(LIST_LIMIT)
    )
    return Trail(list(audit_rows), list(event_rows))
