"""`--status filter` and `--status allowlist`: signed snapshots fetched from the status server and
kept current with deltas, swapped in without a restart.

URLs (under `--server`): `/filter/<ca>` and `/allowlist/<hub-or-group>` for a full snapshot, the
same with `?since=<version>` for a delta (HTTP 200: a delta to apply; 304: nothing changed; any
other status, or a delta that does not apply: fetch the full snapshot again).

The formats belong to `devid.revocation` (filter, allowlist); the gateway sees them only through
`SnapshotFormat`, so a format is plugged in, not copied. A snapshot is signed by the CA it speaks
for: the gateway binds each one to the anchor of `--ca-bundle` whose key verifies it, and a filter
then judges only certificates that CA issued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol
from urllib.parse import quote

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from devid.clock import Clock
from devid.errors import DevidError
from devid.gateway.status import CertRef, Hint, Known, StatusUnavailable, Verdict

#: Largest snapshot or delta accepted (a filter for millions of revoked serials is a few MB).
MAX_BYTES = 64 << 20
#: A new connection finding no snapshot retries the fetch at most this often (server down).
RETRY_EVERY = timedelta(seconds=1)


class SnapshotKind(StrEnum):
    FILTER = "filter"
    ALLOWLIST = "allowlist"


class Snapshot(Protocol):
    """A verified snapshot. Filter: REVOKED or GOOD; allowlist: GOOD (admitted) or UNKNOWN."""

    @property
    def version(self) -> int: ...

    def verdict(self, ref: CertRef) -> Verdict: ...

    def apply(self, delta: bytes, public_key: CertificatePublicKeyTypes) -> Snapshot:
        """The snapshot after a signed delta; ValueError or DevidError unless it verifies and applies."""
        ...


class SnapshotFormat(Protocol):
    def load(self, data: bytes, public_key: CertificatePublicKeyTypes) -> Snapshot:
        """A full snapshot; raises ValueError, InvalidSignature or DevidError unless `public_key` signs it."""
        ...


_REJECTED = (ValueError, InvalidSignature, DevidError)


@dataclass
class _Source:
    name: str
    path: str
    snapshot: Snapshot | None = None
    #: The anchor whose key signed the snapshot.
    signer: x509.Certificate | None = None
    fetched_at: datetime | None = None


class SnapshotStatus:
    """`StatusView` over signed snapshots of one kind, one per name (CA or hub/group)."""

    def __init__(
        self,
        kind: SnapshotKind,
        names: Sequence[str],
        base_url: str,
        fmt: SnapshotFormat,
        anchors: Sequence[x509.Certificate],
        clock: Clock,
        *,
        refresh_every: timedelta = timedelta(minutes=1),
        timeout: float = 10.0,
    ) -> None:
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.fmt = fmt
        self.anchors = list(anchors)
        self.clock = clock
        self.refresh_every = refresh_every
        self._sources = [_Source(n, f"/{kind.value}/{quote(n, safe='')}") for n in names]
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._attempted: datetime | None = None

    @property
    def version(self) -> str:
        return ",".join(
            f"{s.name}={s.snapshot.version if s.snapshot is not None else '-'}" for s in self._sources
        )

    def _judging(self, ref: CertRef) -> list[_Source]:
        if self.kind is SnapshotKind.FILTER:
            return [s for s in self._sources if s.signer == ref.issuer]
        return self._sources

    def known(self, ref: CertRef) -> Known:
        sources = self._judging(ref)
        held = [(s.snapshot, s.fetched_at) for s in sources if s.snapshot is not None]
        if not held or len(held) < len(sources):
            return Known(Verdict.UNKNOWN, None)
        verdicts = [snap.verdict(ref) for snap, _ in held]
        # Allowlists: admitted by any; filters: revoked by any.
        if self.kind is SnapshotKind.ALLOWLIST:
            verdict = Verdict.GOOD if Verdict.GOOD in verdicts else verdicts[0]
        else:
            verdict = Verdict.REVOKED if Verdict.REVOKED in verdicts else verdicts[0]
        return Known(verdict, min(t for _, t in held if t is not None))

    async def prepare(self, ref: CertRef) -> None:
        missing = not self._judging(ref) or any(s.snapshot is None for s in self._judging(ref))
        if missing and (self._attempted is None or self.clock.now() - self._attempted >= RETRY_EVERY):
            await self.refresh(())

    async def refresh(self, in_use: Iterable[CertRef], hint: Hint | None = None) -> None:
        async with self._lock:
            self._attempted = self.clock.now()
            failures: list[StatusUnavailable] = []
            for source in self._sources:
                try:
                    await self._update(source)
                except StatusUnavailable as exc:
                    failures.append(exc)
            if failures:
                raise StatusUnavailable(failures[0].code, "; ".join(f.message for f in failures))

    def oldest(self, in_use: Iterable[CertRef]) -> datetime | None:
        """Every snapshot judges every new connection: the oldest of them, in use or not."""
        times = [s.fetched_at for s in self._sources]
        if any(t is None for t in times):
            return datetime.min.replace(tzinfo=UTC)
        return min(t for t in times if t is not None)

    def due(self, now: datetime) -> bool:
        return self._attempted is None or now - self._attempted >= self.refresh_every

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = self.base_url + path
        try:
            async with self._session.get(url) as resp:
                body = await resp.content.read(MAX_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StatusUnavailable("status-unreachable", f"status server {url}: {exc!r}") from None
        if len(body) > MAX_BYTES:
            raise StatusUnavailable("status-too-large", f"{url}: more than {MAX_BYTES} bytes")
        return resp.status, body

    async def _update(self, source: _Source) -> None:
        snapshot, signer = source.snapshot, source.signer
        if snapshot is not None and signer is not None:
            status, body = await self._get(f"{source.path}?since={snapshot.version}")
            if status == 304:
                source.fetched_at = self.clock.now()
                return
            if status == 200:
                try:
                    source.snapshot = snapshot.apply(body, signer.public_key())
                except _REJECTED:
                    pass  # a delta that does not apply: the full snapshot below
                else:
                    source.fetched_at = self.clock.now()
                    return
        status, body = await self._get(source.path)
        if status != 200:
            raise StatusUnavailable(
                "status-http", f"status server {self.base_url}{source.path}: HTTP {status}"
            )
        # The anchor that signed it, the one already bound first.
        candidates = ([signer] if signer is not None else []) + [a for a in self.anchors if a != signer]
        for anchor in candidates:
            try:
                loaded = self.fmt.load(body, anchor.public_key())
            except _REJECTED:
                continue
            source.snapshot, source.signer, source.fetched_at = loaded, anchor, self.clock.now()
            return
        raise StatusUnavailable(
            "status-signature", f"{self.kind.value} {source.name!r} is not signed by a CA of the bundle"
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
