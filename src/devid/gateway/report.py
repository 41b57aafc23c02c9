"""Telling devid which certificates this gateway's sessions presented (`devid gateway --report`).

Every `every`, the certificates seen since the last report (sessions open now, and those that
ended in between) go to `POST /api/v1/gateways/{name}/sightings` on devid's TLS port, with an API
token of the `gateway` role, in batches the server accepts. `devid health` compares them with
revocation times: a revoked certificate a gateway still carried is its revoked-still-connected
finding. A report that fails is kept and merged into the next (up to `MAX_PENDING` certificates,
the longest pending dropped first and counted), so an outage of devid loses nothing short.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from devid.errors import ConfigError

log = logging.getLogger("devid.gateway")

#: Sessions per request: the server's limit (`devid.authority.sightings.MAX_REPORT`).
BATCH = 300
#: Certificates kept while devid cannot be reached.
MAX_PENDING = 100_000
#: Seconds one report request may take.
TIMEOUT = 10.0


@dataclass(frozen=True)
class Seen:
    first: datetime
    last: datetime


class Reporter:
    """Collects sightings (`seen`) and sends them (`send`); `aclose()` ends its HTTP session."""

    def __init__(self, url: str, token: str, context: ssl.SSLContext, name: str, every: timedelta) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc:
            raise ConfigError("gateway-report", f"--report must be devid's https:// URL, not {url!r}")
        # Any path is dropped: the API is at the server's root, whatever URL was pasted (EST's, say).
        self.endpoint = f"https://{parts.netloc}/api/v1/gateways/{quote(name, safe='')}/sightings"
        self.name = name
        self.every = every
        self._token = token
        self._context = context
        self._pending: dict[str, Seen] = {}
        self._http: aiohttp.ClientSession | None = None
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        #: The server's count of certificates seen past their revocation, summed over reports.
        self.revoked = 0

    def seen(self, fingerprint: str, first: datetime, last: datetime) -> None:
        """A certificate seen connected from `first` to `last` (merged with what is pending)."""
        held = self._pending.get(fingerprint)
        if held is not None:
            first, last = min(first, held.first), max(last, held.last)
        elif len(self._pending) >= MAX_PENDING:
            del self._pending[next(iter(self._pending))]  # the longest pending
            self.dropped += 1
        self._pending[fingerprint] = Seen(first, last)

    async def send(self) -> bool:
        """Report everything pending; what a failed request carried stays pending. True if all went."""
        items = list(self._pending.items())
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            body = {
                "sessions": [
                    {"fingerprint": fp, "first_seen": s.first.isoformat(), "last_seen": s.last.isoformat()}
                    for fp, s in batch
                ]
            }
            try:
                answer = await self._post(body)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.failures += 1
                log.warning("report to %s failed: %s", self.endpoint, exc)
                return False
            for fp, s in batch:
                # A session seen again while the request was out keeps its newer sighting.
                if self._pending.get(fp) == s:
                    del self._pending[fp]
            self.sent += len(batch)
            self.revoked += int(answer.get("revoked", 0))
        return True

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                headers={"Authorization": f"Bearer {self._token}"},
            )
        async with self._http.post(self.endpoint, json=body) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                raise ValueError(f"HTTP {response.status}: {text}")
            answer: dict[str, Any] = await response.json()
            return answer

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def pending(self) -> int:
        return len(self._pending)


async def final_report(reporter: Reporter, seconds: float = 2.0) -> None:
    """A last report as the gateway stops (best effort, bounded), then close."""
    try:
        await asyncio.wait_for(reporter.send(), seconds)
    except TimeoutError:
        log.warning("final report to %s did not finish in %.0f s", reporter.endpoint, seconds)
    finally:
        await reporter.aclose()
