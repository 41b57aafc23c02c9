"""What the store says about revocation, read for CRLs, filters, OCSP and allowlists.

Every read names one CA and walks the (issuer, status_gen) or (issuer, index) index: a CRL or a
filter of a CA reads that CA's revoked certificates, never the whole table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    type_coerce,
)

from devid.errors import NotFoundError
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.revocation.status import CertStatus, StatusEntry
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates, devices, published
from devid.store.states import CertificateStatus, DeviceState


@dataclass(frozen=True)
class CaState:
    id: int
    name: str
    revocation_gen: int
    next_index: int
    crl_shards: int


class Entry(NamedTuple):
    """One line of a CRL: a serial, when, why (`removeFromCRL` for a lifted hold, deltas only)."""

    serial: int
    revoked_at: datetime
    reason: Reason


#: The revocation time as stored: a 1,000,000-entry CRL has few distinct times (a mass revocation
#: stamps one), so each is parsed once instead of per row by the column type.
_RAW_REVOKED_AT = type_coerce(certificates.c.revoked_at, String)
_REASONS = {reason.value: reason for reason in Reason}


def _timestamps() -> Callable[[object], datetime]:
    parsed: dict[object, datetime] = {}

    def parse(raw: object) -> datetime:
        found = parsed.get(raw)
        if found is None:
            at = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
            found = parsed[raw] = at.replace(tzinfo=UTC)  # stored as naive UTC
        return found

    return parse


def ca_state(conn: Connection, name: str) -> CaState:
    row = conn.execute(
        select(cas.c.id, cas.c.name, cas.c.revocation_gen, cas.c.next_index, cas.c.crl_shards).where(
            cas.c.name == name
        )
    ).first()
    if row is None:
        raise NotFoundError("unknown-ca", f"no CA named {name!r}")
    return CaState(row.id, row.name, row.revocation_gen, row.next_index, row.crl_shards)


def _in_crls(shard: int | None) -> Any:
    """Certificates a CRL of this scope lists: a shard's own, or for the full CRL every one that
    is in some shard or predates shards (no index); short-lived ones (index, no shard) never."""
    if shard is not None:
        return certificates.c.shard == shard
    return or_(certificates.c.shard.is_not(None), certificates.c.idx.is_(None))


def revoked(conn: Connection, ca: CaState, now: datetime, shard: int | None = None) -> list[Entry]:
    """The entries of a complete CRL: revoked, unexpired certificates of the scope."""
    rows = conn.execute(
        select(certificates.c.serial, _RAW_REVOKED_AT, certificates.c.reason).where(
            certificates.c.issuer_id == ca.id,
            certificates.c.status_gen.is_not(None),
            certificates.c.status == CertificateStatus.REVOKED,
            certificates.c.not_after > now,
            _in_crls(shard),
        )
    )
    at = _timestamps()
    return [Entry(int(serial, 16), at(raw), _REASONS[reason]) for serial, raw, reason in rows]


def changed(
    conn: Connection, ca: CaState, since_gen: int, now: datetime, shard: int | None = None
) -> list[Entry]:
    """The entries of a delta CRL against a base built at `since_gen`: certificates revoked
    since (with their reason), and holds lifted since (`removeFromCRL`)."""
    rows = conn.execute(
        select(certificates.c.serial, _RAW_REVOKED_AT, certificates.c.reason, certificates.c.status).where(
            certificates.c.issuer_id == ca.id,
            certificates.c.status_gen > since_gen,
            certificates.c.not_after > now,
            _in_crls(shard),
        )
    )
    # A lifted hold is listed as removeFromCRL (RFC 5280 5.3.1): the base may list it as on hold.
    at = _timestamps()
    return [
        Entry(
            int(serial, 16),
            at(raw),
            _REASONS[reason] if status == CertificateStatus.REVOKED else Reason.REMOVE_FROM_CRL,
        )
        for serial, raw, reason, status in rows
    ]


def revoked_indices(conn: Connection, ca: CaState, now: datetime) -> list[int]:
    """Dense indices of the CA's revoked, unexpired certificates: the filter's revoked set."""
    rows = conn.execute(
        select(certificates.c.idx).where(
            certificates.c.issuer_id == ca.id,
            certificates.c.status_gen.is_not(None),
            certificates.c.status == CertificateStatus.REVOKED,
            certificates.c.idx.is_not(None),
            certificates.c.not_after > now,
        )
    )
    return sorted(idx for (idx,) in rows)


def authorized_indices(conn: Connection, member: Any, now: datetime) -> tuple[dict[str, list[int]], int]:
    """For an allowlist: per CA name, the indices of unexpired, unrevoked certificates of the
    ACTIVE devices `member` selects (a condition on devices); and how many devices that is."""
    rows = conn.execute(
        select(cas.c.name, certificates.c.idx, certificates.c.device_id)
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .join(devices, devices.c.id == certificates.c.device_id)
        .where(
            member,
            devices.c.state == DeviceState.ACTIVE,
            certificates.c.status.in_((CertificateStatus.VALID, CertificateStatus.SUPERSEDED)),
            certificates.c.idx.is_not(None),
            certificates.c.not_after > now,
        )
    )
    members: dict[str, list[int]] = {}
    owners: set[int] = set()
    for name, idx, device in rows:
        members.setdefault(name, []).append(idx)
        owners.add(device)
    return {name: sorted(found) for name, found in members.items()}, len(owners)


@dataclass(frozen=True)
class Published:
    kind: str
    scope: str
    number: int
    generation: int
    base_number: int | None
    this_update: datetime
    next_update: datetime
    data: bytes


def latest(conn: Connection, kind: str, scope: str) -> Published | None:
    row = conn.execute(
        select(published)
        .where(published.c.kind == kind, published.c.scope == scope)
        .order_by(published.c.number.desc())
        .limit(1)
    ).first()
    return _published(row) if row is not None else None


def latest_all(conn: Connection) -> dict[tuple[str, str], Published]:
    """The latest version of everything published, by (kind, scope): one read, the maximum per
    (kind, scope) from the unique (kind, scope, number) index."""
    p = published.c
    newest = select(p.kind, p.scope, func.max(p.number).label("number")).group_by(p.kind, p.scope).subquery()
    rows = conn.execute(
        select(published).join(
            newest, and_(p.kind == newest.c.kind, p.scope == newest.c.scope, p.number == newest.c.number)
        )
    )
    return {(row.kind, row.scope): _published(row) for row in rows}


def version(conn: Connection, kind: str, scope: str, number: int) -> Published | None:
    row = conn.execute(
        select(published).where(
            published.c.kind == kind, published.c.scope == scope, published.c.number == number
        )
    ).first()
    return _published(row) if row is not None else None


def _published(row: Any) -> Published:
    return Published(
        row.kind,
        row.scope,
        row.number,
        row.generation,
        row.base_number,
        row.this_update,
        row.next_update,
        row.data,
    )


_STATUS_OF = (
    select(
        certificates.c.serial,
        certificates.c.status,
        certificates.c.revoked_at,
        certificates.c.reason,
        certificates.c.not_after,
    )
    .join(cas, cas.c.id == certificates.c.issuer_id)
    .where(cas.c.name == bindparam("ca"), certificates.c.serial.in_(bindparam("serials", expanding=True)))
)


class StoreStatus:
    """The store as a `devid.revocation.status.StatusSource`. `generation` is read at most every
    `poll` seconds per CA: OCSP's hot path asks on every request."""

    def __init__(self, engine: Engine, poll: float = 0.25) -> None:
        self._engine = engine
        self._poll = poll
        self._lock = threading.Lock()
        self._generations: dict[str, tuple[float, int]] = {}

    def statuses(self, ca_name: str, serials: Iterable[int]) -> dict[int, StatusEntry]:
        wanted = {serial_hex(s): s for s in serials}
        found: dict[int, StatusEntry] = {s: StatusEntry(s, CertStatus.UNKNOWN) for s in wanted.values()}
        if not wanted:
            return found
        with reading(self._engine) as conn:
            rows = conn.execute(_STATUS_OF, {"ca": ca_name, "serials": list(wanted)}).all()
        for text, status, at, reason, not_after in rows:
            serial = wanted[text]
            if status == CertificateStatus.REVOKED:
                found[serial] = StatusEntry(serial, CertStatus.REVOKED, at, Reason(reason), not_after)
            else:
                found[serial] = StatusEntry(serial, CertStatus.GOOD, not_after=not_after)
        return found

    def generation(self, ca_name: str, *, fresh: bool = False) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._generations.get(ca_name)
            if not fresh and cached is not None and now - cached[0] < self._poll:
                return cached[1]
        with reading(self._engine) as conn:
            gen = int(conn.execute(select(cas.c.revocation_gen).where(cas.c.name == ca_name)).scalar() or 0)
        with self._lock:
            self._generations[ca_name] = (now, gen)
        return gen

    def changed_since(self, ca_name: str, generation: int) -> list[int]:
        with reading(self._engine) as conn:
            rows = conn.execute(
                select(certificates.c.serial)
                .join(cas, cas.c.id == certificates.c.issuer_id)
                .where(cas.c.name == ca_name, certificates.c.status_gen > generation)
            )
            return [int(serial, 16) for (serial,) in rows]


def generations(conn: Connection) -> dict[str, int]:
    """Every CA's revocation generation: what the publisher polls."""
    return {name: gen for name, gen in conn.execute(select(cas.c.name, cas.c.revocation_gen))}


#: Versions of each published scope kept (deltas refer to recent bases; gateways hold recent filters).
KEEP = 8


def record(
    engine: Engine,
    kind: str,
    where: str,
    number: int,
    generation: int,
    base_number: int | None,
    this_update: datetime,
    next_update: datetime,
    data: bytes,
) -> None:
    """Record published status data, keeping the newest KEEP versions of its (kind, scope)."""
    with writing(engine) as conn:
        conn.execute(
            insert(published).values(
                kind=kind,
                scope=where,
                number=number,
                generation=generation,
                base_number=base_number,
                this_update=this_update,
                next_update=next_update,
                data=data,
            )
        )
        same = (published.c.kind == kind, published.c.scope == where)
        oldest_kept = conn.execute(
            select(published.c.number)
            .where(*same)
            .order_by(published.c.number.desc())
            .offset(KEEP - 1)
            .limit(1)
        ).scalar()
        if oldest_kept is not None:
            conn.execute(delete(published).where(*same, published.c.number < oldest_kept))
