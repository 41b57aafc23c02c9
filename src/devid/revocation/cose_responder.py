"""The compact status responder: COSE_Sign1 answers (`devid.revocation.cose_status`) for each
(CA, serial) asked, pre-signed and cached like OCSP's, by the same delegated responders.

An answer is signed once and served until it nears its nextUpdate (`refresh_margin`) or the
status of its serial changes (the OCSP responder's `GenerationWatch`: checked at most every
`generation_check_interval` seconds, and by `refresh()`). If the status source fails, an answer
signed before is served while it is still current; none: the error goes up (5.03 over CoAP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from devid.clock import Clock
from devid.errors import ConfigError, NotFoundError
from devid.revocation.cose_status import CompactStatus, StatusQuery, issuer_key_hash, sign_status
from devid.revocation.ocsp import OcspIssuer
from devid.revocation.status import StatusSource
from devid.revocation.watch import GenerationWatch


@dataclass(frozen=True)
class SignedStatus:
    """A signed answer, when it stops being current, and when the responder signs a newer one
    (what a CoAP Max-Age may say)."""

    answer: bytes
    next_update: datetime
    refresh_at: datetime


class CoseStatusResponder:
    """Answers status queries for `issuers` from `source`, signing with each CA's delegated responder."""

    def __init__(
        self,
        issuers: Sequence[OcspIssuer],
        source: StatusSource,
        clock: Clock,
        *,
        validity: timedelta = timedelta(hours=24),
        refresh_margin: timedelta = timedelta(hours=6),
        max_cached: int = 100_000,
        generation_check_interval: float = 0.5,
    ) -> None:
        if not issuers:
            raise ConfigError("status-issuers", "a status responder needs at least one issuer")
        if not timedelta(0) <= refresh_margin < validity:
            raise ConfigError("status-validity", "the refresh margin must be shorter than the validity")
        self._issuers = tuple(issuers)
        self._key_hashes = [issuer_key_hash(issuer.ca_cert) for issuer in issuers]
        self._source = source
        self._clock = clock
        self._validity = validity
        self._refresh_margin = refresh_margin
        self._max_cached = max_cached
        self._cache: dict[tuple[int, int], SignedStatus] = {}
        self._watch = GenerationWatch(source, [i.ca_name for i in issuers], generation_check_interval)
        #: Answers signed, and requests answered from the cache (what tests and benchmarks count).
        self.signed = 0
        self.hits = 0

    @property
    def issuers(self) -> tuple[OcspIssuer, ...]:
        return self._issuers

    def issuer_of(self, key_hash: bytes) -> int:
        """The index of the one CA whose key hash starts with `key_hash`; NotFoundError otherwise."""
        found = [i for i, full in enumerate(self._key_hashes) if full.startswith(key_hash)]
        if len(found) != 1:
            raise NotFoundError("not-found", f"no one CA here has key hash {key_hash.hex()}...")
        return found[0]

    def answer(self, query: StatusQuery) -> SignedStatus:
        """The signed answer about `query`'s serial (a serial the CA never issued: status unknown)."""
        index = self.issuer_of(query.issuer)
        if self._watch.due():
            self.refresh(fresh=False)
        key = (index, query.serial)
        now = self._clock.now()
        cached = self._cache.get(key)
        if cached is not None and now < cached.refresh_at:
            self.hits += 1
            return cached
        try:
            signed = self._sign(index, query.serial, now)
        except Exception:
            if cached is not None and now < cached.next_update:
                return cached
            raise
        self._cache.pop(key, None)
        if len(self._cache) >= self._max_cached:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = signed
        return signed

    def max_age(self, signed: SignedStatus) -> int:
        """Seconds a cache may keep `signed`: until the responder would sign it again."""
        return max(0, int((signed.refresh_at - self._clock.now()).total_seconds()))

    def refresh(self, *, fresh: bool = True) -> None:
        """Drop the answers of serials whose status changed since they were signed (`fresh`: by
        the store's generations now, as after a revocation; the hot path passes False)."""
        for index, changed in self._watch.changes(fresh=fresh):
            if changed is None:
                changed = [serial for (i, serial) in self._cache if i == index]
            for serial in changed:
                self._cache.pop((index, serial), None)

    def _sign(self, index: int, serial: int, now: datetime) -> SignedStatus:
        issuer = self._issuers[index]
        entry = self._source.statuses(issuer.ca_name, [serial])[serial]
        this_update = now.replace(microsecond=0)
        next_update = this_update + self._validity
        status = CompactStatus(serial, entry.status, this_update, next_update, entry.revoked_at, entry.reason)
        answer = sign_status(status, issuer.signer_cert, issuer.signer_key)
        self.signed += 1
        return SignedStatus(answer, next_update, next_update - self._refresh_margin)
