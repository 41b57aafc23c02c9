"""Keeps every CA's published status data current: CRLs (full, delta, shards) and the filter.

`publish()` compares each CA's revocation generation with what was last published and rebuilds
only what changed, once per call however many revocations came in between (a mass revocation of
100,000 devices rebuilds once). It also rebuilds anything past half its lifetime, so nothing
served goes stale while devid runs. The server calls it a few times a second in one process (the
one holding the store's duties lease); `devid crl build` and `devid filter build` use the same
builders. CRL numbers come from one sequence in the store whoever builds (`crl._next_number`).

What is rebuilt on a change: the delta CRL against the latest full CRL (the full one only when it
is older than `base_every`, since every full CRL makes the deltas start over), every shard CRL
holding a changed certificate (complete and small, they are what devices fetch) and the filter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from devid.authority.core import Authority
from devid.authority.status_signing import OCSP_SIGNER_ROLE, blob_signer
from devid.revocation import crl, records
from devid.revocation.filter import build_filter
from devid.store.engine import reading
from devid.store.models import cas, certificates

log = logging.getLogger("devid.revocation")

FILTER = "filter"
#: A filter's next-update; rebuilt at half of it, and whenever revocations or issuance move it.
FILTER_LIFETIME = timedelta(days=2)


@dataclass
class Publisher:
    authority: Authority
    #: How old a full CRL may get while deltas carry the changes since.
    base_every: timedelta = timedelta(minutes=10)
    #: Rebuild the filter when this many certificates were issued since (its universe grew).
    filter_growth: int = 1024
    #: Seconds between full checks (half-life rebuilds, filter growth) when nothing moved.
    check_every: float = 30.0
    _marker: object = None
    _checked: float = float("-inf")

    def tick(self) -> list[str]:
        """`publish()` if any CA's revocation generation or issued count moved since the last
        tick, or `check_every` seconds passed: one cheap query otherwise. The server calls this a
        few times a second."""
        with reading(self.authority.engine) as conn:
            marker = conn.execute(select(cas.c.id, cas.c.revocation_gen, cas.c.next_index)).all()
        now = time.monotonic()
        if marker == self._marker and now - self._checked < self.check_every:
            return []
        built = self.publish()
        self._marker, self._checked = marker, now
        return built

    def publish(self) -> list[str]:
        """Rebuild what is out of date; the scopes built (e.g. `crl operational`, `filter root`)."""
        now = self.authority.clock.now().astimezone(UTC)
        with reading(self.authority.engine) as conn:
            states = {name: records.ca_state(conn, name) for name in status_cas(self.authority)}
        built: list[str] = []
        for name, state in states.items():
            built += self._crls(name, state, now)
            built += self._filter(name, state, now)
        return built

    def _stale(
        self, found: records.Published | None, generation: int, now: datetime, lifetime: timedelta
    ) -> bool:
        return found is None or found.generation != generation or now >= found.next_update - lifetime / 2

    def _crls(self, name: str, state: records.CaState, now: datetime) -> list[str]:
        with reading(self.authority.engine) as conn:
            base = records.latest(conn, crl.FULL, name)
            delta = records.latest(conn, crl.DELTA, name)
            shards = self._changed_shards(conn, state, now)
        half = crl.CRL_LIFETIME / 2
        built = []
        if (
            base is None
            or now >= base.next_update - half
            or (base.generation != state.revocation_gen and now - base.this_update >= self.base_every)
        ):
            crl.build(self.authority, name)
            built.append(f"crl {name}")
            delta = None  # a new base: the delta starts over against it
            with reading(self.authority.engine) as conn:
                base = records.latest(conn, crl.FULL, name)
        if base is not None and (
            delta is None
            or delta.base_number != base.number
            or self._stale(delta, state.revocation_gen, now, crl.CRL_LIFETIME)
        ):
            crl.build(self.authority, name, delta=True)
            built.append(f"delta-crl {name}")
        for shard in shards:
            crl.build(self.authority, name, shard=shard)
            built.append(f"crl {name}/{shard}")
        return built

    def _changed_shards(self, conn: Connection, state: records.CaState, now: datetime) -> list[int]:
        """Shards whose CRL is missing, half-way to its next update, or older than a change in it."""
        ca = self.authority.cas[state.name]
        if ca.public_url is None or not ca.issues_devices:
            return []
        due = []
        for shard in range(state.crl_shards):
            found = records.latest(conn, crl.FULL, crl.scope(state.name, shard))
            if found is None or now >= found.next_update - crl.CRL_LIFETIME / 2:
                due.append(shard)
            elif found.generation != state.revocation_gen:
                moved = conn.execute(
                    select(certificates.c.id)
                    .where(
                        certificates.c.issuer_id == state.id,
                        certificates.c.status_gen > found.generation,
                        certificates.c.shard == shard,
                    )
                    .limit(1)
                ).first()
                if moved is not None:
                    due.append(shard)
        return due

    def _filter(self, name: str, state: records.CaState, now: datetime) -> list[str]:
        with reading(self.authority.engine) as conn:
            found = records.latest(conn, FILTER, name)
            grown = found is not None and state.next_index - _universe_of(found) >= self.filter_growth
            if not (grown or self._stale(found, state.revocation_gen, now, FILTER_LIFETIME)):
                return []
            revoked = records.revoked_indices(conn, state, now)
        build_filter_version(self.authority, state, revoked, (found.number + 1) if found else 1, now)
        return [f"filter {name}"]


def status_cas(authority: Authority) -> list[str]:
    """The CAs whose status devid publishes: every CA but the delegated OCSP signers."""
    return [name for name, ca in authority.cas.items() if ca.role != OCSP_SIGNER_ROLE]


def _universe_of(found: records.Published) -> int:
    return found.base_number or 0


def build_filter_version(
    authority: Authority, state: records.CaState, revoked: list[int], version: int, now: datetime
) -> bytes:
    """Sign and record version `version` of CA `state.name`'s filter over [0, next index)."""
    now = now.replace(microsecond=0)
    data = build_filter(
        revoked,
        state.next_index,
        version=version,
        ca_name=state.name,
        issued_at=now,
        next_update=now + FILTER_LIFETIME,
        sign=blob_signer(authority, state.name),
    )
    # `base_number` holds the universe for filters: the publisher rebuilds when issuance outgrows it.
    records.record(
        authority.engine,
        FILTER,
        state.name,
        version,
        state.revocation_gen,
        state.next_index,
        now,
        now + FILTER_LIFETIME,
        data,
    )
    return data
