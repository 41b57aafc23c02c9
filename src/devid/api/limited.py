"""Calls refused with 429 are audited once per caller and window, not one by one.

A caller over its rate limit (a token, or an address without a valid token) may keep calling at
line rate; auditing each refusal would let it grow the audit log just as fast. The first refusal
of a caller in a window is audited, carrying how many refusals it stands for (itself and those of
the caller's previous window that were not audited); the rest of the window is only counted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=1)
#: Callers tracked at most; beyond, those whose window has ended are forgotten (their unaudited
#: count with them: it is bounded by one window's refusals).
MAX_TRACKED = 10_000


@dataclass
class _Window:
    start: datetime
    unaudited: int = 0


class LimitedCalls:
    """Per-process tally of refused calls per caller; thread-safe (API calls run on worker threads)."""

    def __init__(self, window: timedelta = WINDOW, max_tracked: int = MAX_TRACKED) -> None:
        self.window = window
        self.max_tracked = max_tracked
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def refused(self, caller: str, now: datetime) -> int | None:
        """Count one refused call of `caller`: the number of refusals to audit now when it opens
        the caller's window, None when the window's first refusal was audited already."""
        with self._lock:
            found = self._windows.get(caller)
            if found is not None and now < found.start + self.window:
                found.unaudited += 1
                return None
            self._windows.pop(caller, None)
            if len(self._windows) >= self.max_tracked:
                self._forget_ended(now)
            self._windows[caller] = _Window(now)
            return 1 + (found.unaudited if found is not None else 0)

    def _forget_ended(self, now: datetime) -> None:
        for caller in [c for c, w in self._windows.items() if now >= w.start + self.window]:
            del self._windows[caller]
        while len(self._windows) >= self.max_tracked:  # all current: drop the oldest
            del self._windows[next(iter(self._windows))]
