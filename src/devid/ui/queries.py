"""What the dashboard's pages show, read from the store by indexed queries or kept counters.

Counts come from the counter tables the store's triggers keep in every changing transaction
(`devid.store.counters`): devices by state, hub, enrollment group and manufacturer, certificates
by profile and status, and the expiry timeline read a few thousand counter rows, never the 1M-row
tables. Expiry is counted to the UTC day: a certificate expiring later today is still valid (or
expiring), one that expired on an earlier day is expired. Searches walk the unique serial
index; a device's certificates come by `ix_certificates_device`; revocations and published data
by their keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, literal, select

from devid.authority.sightings import seen_for_device
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.registry.enrollments import Kind as EnrollmentKind
from devid.store.counters import Dimension
from devid.store.models import (
    audit_events,
    cas,
    certificate_counts,
    certificates,
    device_counts,
    devices,
    enrollments,
    events,
    hubs,
    manufacturers,
    published,
    revocations,
)
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


#: The chart's name for CA certificates (the `cas` table's, beside the certificates' profiles).
CA_PROFILE = "CA"


@dataclass(frozen=True)
class Overview:
    device_states: list[tuple[str, int]]
    #: (profile, bucket) -> count
    certificates: dict[tuple[str, str], int]
    revocations: list[Any]
    #: (kind, scope, number, bytes, this_update) of the latest of each kind and scope.
    published: list[tuple[str, str, int, int, datetime]]
    #: Devices per hub, enrollment group and manufacturer: dimension -> [(name, {state: count})].
    device_groups: dict[Dimension, list[tuple[str, dict[str, int]]]]


#: What a device counter's `ref` names, and what a device with none is listed as.
_NAMED = {
    Dimension.HUB: (hubs, "(no hub)"),
    Dimension.ENROLLMENT: (enrollments, "(no enrollment group)"),
    Dimension.MANUFACTURER: (manufacturers, "(devid factory)"),
}


def _device_groups(conn: Connection, dimension: Dimension) -> list[tuple[str, dict[str, int]]]:
    """Device counts by state under each hub, group or manufacturer; devices of individual
    enrollments are summed under no group."""
    table, nobody = _NAMED[dimension]
    dc = device_counts.c
    name: ColumnElement[Any] = table.c.name
    if dimension is Dimension.ENROLLMENT:
        name = case((table.c.kind == EnrollmentKind.GROUP.value, table.c.name), else_=None)
    label = func.coalesce(name, nobody).label("name")
    rows = conn.execute(
        select(label, dc.state, func.sum(dc.n).label("n"))
        .select_from(device_counts.outerjoin(table, table.c.id == dc.ref))
        .where(dc.dimension == dimension.value, dc.n != 0)
        .group_by(label, dc.state)
        .order_by(label)
    )
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        out.setdefault(row.name, {})[row.state] = int(row.n)
    return list(out.items())


def overview(conn: Connection, now: datetime) -> Overview:
    dc = device_counts.c
    by_state = dict(
        conn.execute(
            select(dc.state, func.sum(dc.n)).where(dc.dimension == Dimension.HUB.value).group_by(dc.state)
        ).all()
    )
    states = [(state.value, int(by_state.get(state.value, 0))) for state in DeviceState]
    cc = certificate_counts.c
    today = now.date()
    bucket = case(
        (cc.status == CertificateStatus.REVOKED.value, Bucket.REVOKED),
        (cc.status == CertificateStatus.SUPERSEDED.value, Bucket.SUPERSEDED),
        (cc.expiry < today, Bucket.EXPIRED),
        (cc.expiry <= (now + EXPIRING_WITHIN).date(), Bucket.EXPIRING),
        else_=Bucket.VALID,
    ).label("bucket")
    counts = {
        (row.profile, row.bucket): int(row.n)
        for row in conn.execute(
            select(cc.profile, bucket, func.sum(cc.n).label("n")).group_by(cc.profile, bucket)
        )
        if row.n
    }
    latest_revocations = list(conn.execute(select(revocations).order_by(revocations.c.id.desc()).limit(10)))
    return Overview(
        states,
        counts,
        latest_revocations,
        latest_published(conn),
        {dimension: _device_groups(conn, dimension) for dimension in Dimension},
    )


def expiry_weeks(conn: Connection, start: datetime, weeks: int = WEEKS) -> list[dict[str, int]]:
    """Valid certificates (and CA certificates, as CA_PROFILE) expiring in each of `weeks` weeks
    from `start`'s day, by profile: one range of the counters' primary key per profile."""
    first = start.date()
    end = first + timedelta(weeks=weeks)
    cc = certificate_counts.c
    out: list[dict[str, int]] = [{} for _ in range(weeks)]

    def add(profile: str, day: date, n: int) -> None:
        week = out[(day - first).days // 7]
        week[profile] = week.get(profile, 0) + n

    for row in conn.execute(
        select(cc.profile, cc.expiry, cc.n).where(
            cc.status == CertificateStatus.VALID.value, cc.expiry >= first, cc.expiry < end, cc.n != 0
        )
    ):
        add(row.profile, row.expiry, int(row.n))
    ca_lo = datetime.combine(first, time(), start.tzinfo)
    for not_after in conn.execute(
        select(cas.c.not_after).where(cas.c.not_after >= ca_lo, cas.c.not_after < ca_lo + (end - first))
    ).scalars():
        add(CA_PROFILE, not_after.date(), 1)
    return out


def revoked_weeks(
    conn: Connection, now: datetime, weeks: int = WEEKS
) -> tuple[datetime, list[dict[str, int]]]:
    """Certificates revoked in each of the last `weeks` weeks, by reason, from the revocations
    (one row per operator action: a small table, read for the window only); and the first week's
    start."""
    start = datetime.combine(now.date(), time(), now.tzinfo) - timedelta(weeks=weeks - 1)
    out: list[dict[str, int]] = [{} for _ in range(weeks)]
    r = revocations.c
    for row in conn.execute(select(r.at, r.reason, r.certificates).where(r.at >= start, r.certificates > 0)):
        week = out[min((row.at - start).days // 7, weeks - 1)]
        name = Reason(row.reason).rfc_name
        week[name] = week.get(name, 0) + int(row.certificates)
    return start, out


def latest_certificates(conn: Connection, issuers: Sequence[str]) -> list[tuple[str, bytes]]:
    """Each named CA's most recently indexed certificate (DER), for a sample OCSP answer: the
    (issuer, idx) index read backwards, one row each."""
    found = []
    for name in issuers:
        der = conn.execute(
            select(certificates.c.der)
            .join(cas, cas.c.id == certificates.c.issuer_id)
            .where(cas.c.name == name, certificates.c.idx.is_not(None))
            .order_by(certificates.c.idx.desc())
            .limit(1)
        ).scalar_one_or_none()
        if der is not None:
            found.append((name, der))
    return found


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
    #: Where its certificates were seen connected, as gateways reported (latest first).
    sightings: list[Any]


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
    seen = list(conn.execute(seen_for_device(row.id).limit(SIGHTINGS_SHOWN)))
    return DevicePage(row, hub, certs, seen)


#: How many rows a list names (the counts are totals, up to `COUNT_CAP`).
LIST_LIMIT = 20
#: Counts stop here ("1,000+"): a count reads as many index entries as it counts, so it is capped.
COUNT_CAP = 1_000
#: How far back (events) a device page looks in the audit log and the outbox, neither of which
#: has an index by subject: the newest window is read by primary key, never the whole table.
TRAIL_WINDOW = 20_000
PAGE_SIZE = 50
#: Gateways a device page lists (a device is usually carried by one or two).
SIGHTINGS_SHOWN = 20


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


def listed_each(conn: Connection, parts: Sequence[Any], key: Callable[[Any], Any]) -> Listed:
    """`listed` of the union of `parts`, each walked on its own index in its own order (a union,
    or one query over an IN list, would read every match to sort them: 0.8 s at 1M), merged by `key`."""
    each = [listed(conn, part) for part in parts]
    count = sum(one.count for one in each)
    rows = sorted((row for one in each for row in one.rows), key=key)[:LIST_LIMIT]
    return Listed(min(count, COUNT_CAP), count > COUNT_CAP or any(one.capped for one in each), rows)


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


def revocation_totals(conn: Connection, by: Any, selector: str | None = None) -> list[Any]:
    """Revocation actions, certificates and devices grouped by `by` (a revocations column), of
    one selector's actions if given (`value` by the `lot` selector: the lots revoked)."""
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
        .limit(LIST_LIMIT)
    )
    if selector is not None:
        query = query.where(r.selector == selector)
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
