"""Dense certificate indices, handed out in blocks.

Every certificate gets the next index under its CA (inside its serial: `devid.pki.serials`), so the
revocation filter is exact over a universe [0, N) the CA knows. Indices are allocated before
signing, which happens outside the store's write lock: a process reserves a block with one short
transaction and hands its indices out from memory. A block left unused when a process stops is a
gap in the universe (a few bytes of filter), never a duplicate: the unique (issuer, index) index
would refuse one.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine, update

from devid.store.engine import writing
from devid.store.models import cas

#: Indices reserved per transaction: one write per this many certificates.
BLOCK = 1024


class IndexAllocator:
    """Hands out each CA's next indices; thread-safe, one per authority."""

    def __init__(self, engine: Engine, block: int = BLOCK) -> None:
        self._engine = engine
        self._block = block
        self._lock = threading.Lock()
        self._ranges: dict[int, tuple[int, int]] = {}

    def take(self, ca_id: int, count: int = 1) -> list[int]:
        """`count` fresh indices under CA `ca_id`, ascending."""
        taken: list[int] = []
        with self._lock:
            while len(taken) < count:
                start, end = self._ranges.get(ca_id, (0, 0))
                if start == end:
                    start, end = self._reserve(ca_id, max(self._block, count - len(taken)))
                n = min(end - start, count - len(taken))
                taken.extend(range(start, start + n))
                self._ranges[ca_id] = (start + n, end)
        return taken

    def _reserve(self, ca_id: int, size: int) -> tuple[int, int]:
        """One atomic increment in the store: processes and replicas sharing it (on PostgreSQL,
        concurrently: the row lock orders them) each get a block of their own."""
        with writing(self._engine) as conn:
            bump = update(cas).where(cas.c.id == ca_id).values(next_index=cas.c.next_index + size)
            end = int(conn.execute(bump.returning(cas.c.next_index)).scalar_one())
        return end - size, end
