"""What a relying party asks about one certificate: good, revoked (when, why) or unknown."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from devid.pki.reasons import Reason


class CertStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    #: The CA never issued this serial (RFC 6960 2.2 `unknown`).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StatusEntry:
    """The status of one serial under one CA, as of `generation` of that CA's revocation record."""

    serial: int
    status: CertStatus
    revoked_at: datetime | None = None
    reason: Reason | None = None
    #: notAfter of the certificate (None when unknown): a response need not outlive it.
    not_after: datetime | None = None


class StatusSource(Protocol):
    """Where the status of certificates comes from (the store, through the authority; in tests, a dict)."""

    def statuses(self, ca_name: str, serials: Iterable[int]) -> dict[int, StatusEntry]:
        """The status of each serial of CA `ca_name` (every serial asked gets an entry)."""
        ...

    def generation(self, ca_name: str, *, fresh: bool = False) -> int:
        """A number that grows whenever any status under `ca_name` changes: caches compare it.
        `fresh`: read now, not a value a source may have kept for a moment (after a revocation)."""
        ...

    def changed_since(self, ca_name: str, generation: int) -> list[int]:
        """The serials under `ca_name` whose status changed after `generation` (revoked, or a
        hold lifted): what a cache built at `generation` must drop or re-sign."""
        ...
