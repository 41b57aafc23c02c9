"""Per-token rate limits: a token bucket per token name, refilled continuously.

A bucket holds up to one minute's allowance (`rate_per_minute`), so a quiet client may burst that
much and a busy one settles at the rate. Buckets live in this process's memory, without a write per
call; a limit holds across every server process on the store because each enforces its share of
it: the rate divided by the processes counted (`devid.store.lease.Presence`, re-counted every few
seconds). Behind a load balancer that spreads calls evenly a client gets its whole rate; however
they are spread, all processes together never allow more (a bucket holds at least one call, so a
rate below the number of processes admits one call per process and minute). A token's new rate
(after it is recreated) applies from its next call.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from devid.errors import RateLimited

__all__ = ["RateLimited", "RateLimiter"]


@dataclass
class _Bucket:
    rate_per_minute: int
    tokens: float
    at: float


def _alone() -> int:
    return 1


class RateLimiter:
    """Thread-safe buckets keyed by token name (handlers run on executor threads); `share`: the
    number of processes that each enforce a share of every limit."""

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, share: Callable[[], int] = _alone
    ) -> None:
        self._monotonic = monotonic
        self._share = share
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, name: str, rate_per_minute: int, who: str | None = None) -> None:
        """Spend one call of `name`'s allowance, or raise RateLimited saying when one is free
        (`who`: how the message names the caller; default: the API token `name`)."""
        now = self._monotonic()
        capacity = max(1.0, rate_per_minute / self._share())
        per_second = capacity / 60.0
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate_per_minute != rate_per_minute:
                bucket = self._buckets[name] = _Bucket(rate_per_minute, capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * per_second)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / per_second
        raise RateLimited(who or f"API token {name!r}", max(1, math.ceil(wait)))
