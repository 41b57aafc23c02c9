"""What the gateway asks about an admitted certificate, whatever the status source (OCSP,
revocation filter, allowlist): one small protocol, so the proxy knows nothing of formats."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from cryptography import x509

from devid.errors import DevidError


class Verdict(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    #: The source does not vouch for the certificate (OCSP `unknown`, not in the allowlist).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CertRef:
    """One admitted certificate: what status is asked about, and whose it is."""

    leaf: x509.Certificate
    issuer: x509.Certificate
    device: str

    @property
    def serial(self) -> int:
        return self.leaf.serial_number


@dataclass(frozen=True)
class Hint:
    """An unsigned push (an MQTT event): what to ask the signed source about again, at once.
    Never a verdict by itself."""

    serial: int | None = None
    device: str | None = None
    ca: str | None = None

    def names(self, serial: int, device: str) -> bool:
        return serial == self.serial or device == self.device


@dataclass(frozen=True)
class Known:
    """A verdict with the time of the signed data it comes from (None: nothing known yet)."""

    verdict: Verdict
    fetched_at: datetime | None


class StatusUnavailable(DevidError):
    """The status server could not be reached or gave no verifiable answer."""


class StatusView(Protocol):
    """The status of admitted certificates, from signed data fetched from `--server`.

    `known` answers from what is held (no I/O), so live sessions can be re-judged after every
    update; `prepare` fetches what `known` needs for a new certificate; `refresh` is the
    scheduled update and the answer to a push (`hint`), over the certificates still in use.
    """

    @property
    def version(self) -> str:
        """Version of the data in use (snapshot versions, or the newest OCSP thisUpdate), for reports."""
        ...

    def known(self, ref: CertRef) -> Known: ...

    async def prepare(self, ref: CertRef) -> None:
        """Make `known(ref)` answer from fresh data if it can; raises StatusUnavailable."""
        ...

    async def refresh(self, in_use: Iterable[CertRef], hint: Hint | None = None) -> None:
        """Update the data behind `in_use` (all of it, or what `hint` names); raises StatusUnavailable."""
        ...

    def oldest(self, in_use: Iterable[CertRef]) -> datetime | None:
        """When the oldest data that `in_use` relies on was fetched (None: none relied on)."""
        ...

    def due(self, now: datetime) -> bool:
        """Whether a scheduled refresh is due."""
        ...

    async def aclose(self) -> None: ...
