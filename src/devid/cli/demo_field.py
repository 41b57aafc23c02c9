"""The demo's second renewal policy: part of the fleet on the `short` label (short-lived LDevIDs,
whose expiry is their revocation), renewing on the simulated clock; the devices that were offline
past their certificate's expiry come back and re-enroll with their IDevID (the fallback)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.device.agent import DeviceAgent
from devid.pki.encoding import cert_pem
from devid.server.app import make_app, start_server
from devid.server.tls import own_server_context

SHORT_LABEL = "short"


@dataclass(frozen=True)
class ShortLivedReport:
    label: str
    lifetime_days: float
    enrolled: int
    renewed: int
    offline: int
    fallback: int
    #: What the check-ins answered other than the expected renew/fallback (empty when all went well).
    errors: tuple[str, ...]
    seconds: float


async def short_lived_field(
    home: Home,
    passphrase: bytes,
    device_dirs: Sequence[Path],
    offline_share: float = 0.25,
    concurrency: int = 32,
) -> ShortLivedReport:
    """Enroll `device_dirs` on the `short` label over EST; move the clock past their renewal time,
    where all but an `offline_share` check in and renew with their LDevID; then past the expiry of
    the offline devices' certificates, where they check in again and fall back to their IDevID."""
    clock = FixedClock(datetime.now(UTC))
    authority = open_authority(home, passphrase, clock=clock)
    lifetime = authority.label_policy(SHORT_LABEL).lifetime
    ctx, _ = own_server_context(authority, home.path / "tls", passphrase)
    server = await start_server(make_app(authority), ctx, host="127.0.0.1", port=0)
    trust = cert_pem(authority.root)
    gate = asyncio.Semaphore(concurrency)
    agents = [DeviceAgent.open(d, clock=clock, durable=False) for d in device_dirs]
    offline = agents[: int(len(agents) * offline_share)]
    online = agents[len(offline) :]
    start = asyncio.get_running_loop().time()

    async def each(
        group: Sequence[DeviceAgent], act: Callable[[DeviceAgent], Awaitable[object]]
    ) -> list[str]:
        async def one(agent: DeviceAgent) -> str:
            async with gate:
                return str(await act(agent))

        return await asyncio.gather(*(one(a) for a in group))

    try:
        await each(agents, lambda a: a.enroll(server.url, trust, SHORT_LABEL))
        renew_by = max(
            datetime.fromisoformat(a.state.renew_at) for a in online if a.state and a.state.renew_at
        )
        clock.advance(renew_by - clock.now() + timedelta(hours=1))
        renewed = Counter(await each(online, DeviceAgent.check_in))
        clock.advance(lifetime)  # the offline devices' certificates expired meanwhile
        fallback = Counter(await each(offline, DeviceAgent.check_in))
    finally:
        await server.stop()
        authority.close()
    errors = tuple(o for o in (renewed + fallback) if o not in ("renew", "fallback"))
    return ShortLivedReport(
        SHORT_LABEL,
        lifetime / timedelta(days=1),
        len(agents),
        renewed["renew"],
        len(offline),
        fallback["fallback"],
        errors[:5],
        asyncio.get_running_loop().time() - start,
    )
