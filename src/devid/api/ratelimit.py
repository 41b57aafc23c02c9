"""Per-token rate limits: a token bucket per token name, refilled continuously.

A bucket holds up to one minute's allowance (`rate_per_minute`), so a quiet client may burst that
much and a busy one settles at the rate. Buckets live in this process's memory: with several
`devid serve` workers behind a load balancer each enforces the limit on its own share, so the
effective ceiling is the rate times the number of workers. That is acceptable for a guard against
runaway scripts; a hard global quota would need a shared counter in the store, costing a write per
call. A token's new rate (after it is recreated) applies from its next call.
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


class RateLimiter:
    """Thread-safe buckets keyed by token name (handlers run on executor threads)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, name: str, rate_per_minute: int, who: str | None = None) -> None:
        """Spend one call of `name`'s allowance, or raise RateLimited saying when one is free
        (`who`: how the message names the caller; default: the API token `name`)."""
        now = self._monotonic()
        per_second = rate_per_minute / 60.0
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate_per_minute != rate_per_minute:
                bucket = self._buckets[name] = _Bucket(rate_per_minute, float(rate_per_minute), now)
            bucket.tokens = min(float(rate_per_minute), bucket.tokens + (now - bucket.at) * per_second)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / per_second
        raise RateLimited(who or f"API token {name!r}", max(1, math.ceil(wait)))
