"""Group commit: concurrent issuance requests share one transaction and one fsync.

A durable store pays one fsync per commit (milliseconds on this disk), which caps one-at-a-time
issuance far below what signing allows. Requests arriving while a commit is in progress wait
for the next batch, so under load each commit carries many certificates, and an idle server
still answers a lone request at once. Every caller still gets its certificate only after the
transaction that records it has committed.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from devid.authority.core import Authority
from devid.authority.requests import Issued, IssueRequest
from devid.errors import ConfigError, DevidError

MAX_BATCH = 128
_Item = tuple[IssueRequest, str, "Future[Issued]"]
_STOP = None


class GroupCommitter:
    """One committer thread per authority; `issue()` may be called from any thread."""

    def __init__(self, authority: Authority, max_batch: int = MAX_BATCH) -> None:
        self.authority = authority
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closing = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="devid-group-commit", daemon=True)
        self._thread.start()

    def issue(self, request: IssueRequest, actor: str) -> Issued:
        """Issue through the next group commit; raises the request's own refusal (audited)."""
        return self.submit(request, actor).result()

    def submit(self, request: IssueRequest, actor: str) -> Future[Issued]:
        """Queue for the next group commit; the future completes once the transaction that records
        the certificate has committed (or holds the request's own refusal, audited). An event
        loop awaits it with `asyncio.wrap_future`: no thread waits on its behalf."""
        future: Future[Issued] = Future()
        with self._closing:
            if self._closed:
                raise ConfigError("authority-closed", "the authority's group committer was closed")
            self._queue.put((request, actor, future))
        return future

    def close(self) -> None:
        """Commit every request already submitted, then stop the thread (waits for both)."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:  # nothing is queued after it: commit this batch, then stop
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        # A request whose caller gave up (a cancelled future) is not issued; the others can
        # no longer be cancelled, so every result below finds its future waiting.
        batch = [item for item in batch if item[2].set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            outcomes = self.authority.issue_each([r for r, _, _ in batch], [a for _, a, _ in batch])
        except BaseException as exc:
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, DevidError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def committer(authority: Authority) -> GroupCommitter:
    """The authority's committer, started on first use; `authority.close()` drains and stops it."""
    return authority.owned(GroupCommitter, lambda: GroupCommitter(authority))
