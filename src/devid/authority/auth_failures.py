"""Failed authentication: limited per peer address and per claimed identity, audited in aggregate.

A client that keeps presenting a wrong enrollment secret, or a certificate that authenticates no
one, is answered 429 with Retry-After once it has failed `per_peer` times from its address or
`per_identity` times for the identity it claims (a device serial, a certificate fingerprint) within
a window, whatever it presents until the window ends. Its failures cost the audit log one event
per window, not one each: the first failure of a (peer, identity) pair in a window is audited as
the refusal it was; the later ones, and the attempts refused with 429, are counted and written as
one `est.auth-failures` event once the window has closed (noticed at the next request, or when the
service closes). Attempts from an address over its limit are counted as one, whatever identity each
claims, so the events a window costs stay bounded by the limits, not by the attempts.

The counters live in this process (one per `devid serve` worker), without a write per failure to
a shared store; the limits hold across every server process on the store because each allows its
share of them: the limit divided by the processes counted (`share`; at least one failure each).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from devid.errors import RateLimited
from devid.store import audit

WINDOW = timedelta(minutes=1)
PER_PEER = 30
PER_IDENTITY = 5
#: Counters kept at most (per kind); beyond, the oldest windows are closed early.
MAX_TRACKED = 10_000
ACTION = "est.auth-failures"
#: The identity of the aggregate that counts an over-limit address's attempts, whatever they claim.
ANY = "*"


@dataclass
class _Window:
    start: datetime
    failures: int = 0


@dataclass
class _Tally:
    """Failures of one (peer, identity) pair in one window, for its aggregate audit event."""

    first: datetime
    last: datetime
    failures: int = 0
    limited: int = 0
    codes: set[str] = field(default_factory=set)


class FailedAuthentications:
    """Per-process counters of failed authentications; thread-safe (decisions run on the event
    loop and in worker threads). Times come from the caller (the authority's clock)."""

    def __init__(
        self,
        *,
        window: timedelta = WINDOW,
        per_peer: int = PER_PEER,
        per_identity: int = PER_IDENTITY,
        max_tracked: int = MAX_TRACKED,
        share: Callable[[], int] | None = None,
    ) -> None:
        self._share = share
        self.window = window
        self.per_peer = per_peer
        self.per_identity = per_identity
        self.max_tracked = max_tracked
        self._peers: dict[str, _Window] = {}
        self._identities: dict[str, _Window] = {}
        #: In the order their windows opened, so closed ones are found at the front.
        self._tallies: dict[tuple[str, str], _Tally] = {}
        #: Closed windows not yet written.
        self._done: list[tuple[tuple[str, str], _Tally]] = []
        self._lock = threading.Lock()

    def check(self, peer: str | None, identity: str, now: datetime) -> None:
        """Raise RateLimited if `peer` (None: unknown, not limited) or `identity` has used up its
        failures in the current window; the refused attempt is counted for the aggregate audit."""
        share = self._share() if self._share is not None else 1
        per_peer, per_identity = max(1, self.per_peer // share), max(1, self.per_identity // share)
        with self._lock:
            peer_wait = self._wait(self._peers, peer, per_peer, now)
            wait = max(peer_wait, self._wait(self._identities, identity, per_identity, now))
            if wait <= 0:
                return
            # An address over its limit is tallied as one, whatever identities it tries next.
            self._tally(peer, ANY if peer_wait > 0 else identity, now).limited += 1
        who = f"failed authentication for {identity[:64]!r}" + (f" or from {peer}" if peer else "")
        raise RateLimited(who, math.ceil(wait))

    def failed(self, peer: str | None, identity: str, code: str, now: datetime) -> bool:
        """Count a failed authentication; True when it is the pair's first in this window (audit
        it as the refusal it is), False when the aggregate event will account for it."""
        with self._lock:
            for table, key in ((self._peers, peer), (self._identities, identity)):
                if key is None:
                    continue
                found = table.get(key)
                if found is None or now >= found.start + self.window:
                    table.pop(key, None)
                    found = table[key] = _Window(now)
                    _bound(table, self.max_tracked, now - self.window)
                found.failures += 1
            tally = self._tally(peer, identity, now)
            tally.failures += 1
            tally.codes.add(code)
            return tally.failures == 1 and tally.limited == 0

    def closed(self, now: datetime) -> list[audit.Event]:
        """The aggregate events of windows that have closed, removed from the counters."""
        with self._lock:
            if not self._done and not self._tallies:
                return []
            done, self._done = self._done, []
            while self._tallies:
                key, tally = next(iter(self._tallies.items()))
                if now < tally.first + self.window and len(self._tallies) <= self.max_tracked:
                    break
                done.append((key, self._tallies.pop(key)))
        return [event for key, tally in done for event in _event(key, tally)]

    def drain(self) -> list[audit.Event]:
        """Every aggregate event still open (the service is closing)."""
        with self._lock:
            done = [*self._done, *self._tallies.items()]
            self._done, self._tallies = [], {}
        return [event for key, tally in done for event in _event(key, tally)]

    def _wait(self, table: dict[str, _Window], key: str | None, limit: int, now: datetime) -> float:
        found = table.get(key) if key is not None else None
        if found is None or found.failures < limit:
            return 0.0
        return (found.start + self.window - now).total_seconds()

    def _tally(self, peer: str | None, identity: str, now: datetime) -> _Tally:
        key = (peer or "-", identity)
        tally = self._tallies.get(key)
        if tally is not None and now >= tally.first + self.window:
            self._done.append((key, self._tallies.pop(key)))
            tally = None
        if tally is None:
            tally = self._tallies[key] = _Tally(now, now)
        tally.last = now
        return tally


def _bound(table: dict[str, _Window], limit: int, expired_before: datetime) -> None:
    """Keep a counter table within `limit` entries: drop expired windows, then the oldest."""
    if len(table) <= limit:
        return
    for key in [k for k, w in table.items() if w.start < expired_before]:
        del table[key]
    while len(table) > limit:
        del table[next(iter(table))]


def _event(key: tuple[str, str], tally: _Tally) -> list[audit.Event]:
    """The window's aggregate event; none when its only failure was audited on its own."""
    if tally.failures + tally.limited <= 1:
        return []
    peer, identity = key
    detail = {
        "peer": peer,
        "identity": identity,
        "failures": tally.failures,
        "limited": tally.limited,
        "codes": sorted(tally.codes),
        "first": tally.first.isoformat(),
        "last": tally.last.isoformat(),
    }
    return [audit.Event(ACTION, peer if identity == ANY else identity, f"est:{peer}", "refused", detail)]
