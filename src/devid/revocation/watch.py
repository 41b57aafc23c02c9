"""Which serials' status changed since a cache of signed answers was built: one watch over a
`StatusSource`'s per-CA generations, shared by every responder that pre-signs (OCSP, COSE)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from devid.revocation.status import StatusSource

log = logging.getLogger("devid.revocation.watch")


class GenerationWatch:
    """The revocation generations of `ca_names` (by their index in it), compared with the source
    at most every `interval` seconds on the hot path (`due`), and on demand (`changes`)."""

    def __init__(self, source: StatusSource, ca_names: Sequence[str], interval: float) -> None:
        self._source = source
        self._names = tuple(ca_names)
        self._interval = interval
        self._generations = [source.generation(name) for name in self._names]
        self._next_check = time.monotonic() + interval

    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    def changes(self, *, fresh: bool = False) -> list[tuple[int, list[int] | None]]:
        """(CA index, the serials whose status changed) for each CA whose generation moved since
        the last call; None instead of serials when the record went back (it was replaced: trust
        no answer of that CA). A CA whose generation cannot be read is skipped: answers signed
        before stay true until their nextUpdate. `fresh`: generations read from the store now (a
        caller that just revoked must not get the source's recent, older reading)."""
        self._next_check = time.monotonic() + self._interval
        found: list[tuple[int, list[int] | None]] = []
        for index, name in enumerate(self._names):
            try:
                generation = self._source.generation(name, fresh=fresh)
                if generation == self._generations[index]:
                    continue
                changed = (
                    None
                    if generation < self._generations[index]
                    else self._source.changed_since(name, self._generations[index])
                )
            except Exception:
                log.exception("status generation of CA %r unavailable", name)
                continue
            found.append((index, changed))
            self._generations[index] = generation
        return found
