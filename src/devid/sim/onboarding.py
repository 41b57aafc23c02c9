"""The demo's field stage: a fleet enrolls LDevIDs over EST, then a slice renews on schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.x509 import verification

from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.device.agent import DeviceAgent
from devid.pki.encoding import cert_pem
from devid.web.app import make_app, start_server
from devid.web.tls import own_server_context


@dataclass
class OnboardingReport:
    url: str
    enrolled: int = 0
    renewed: int = 0
    verified: int = 0
    seconds: float = 0.0
    errors: list[str] | None = None


async def onboard(
    home: Home,
    passphrase: bytes,
    device_dirs: Sequence[Path],
    renew_share: float = 0.1,
    concurrency: int = 32,
) -> OnboardingReport:
    """Serve EST on loopback, enroll every device with its IDevID, then move the clock past the
    renewal time and let a slice of the fleet check in and renew with its LDevID."""
    clock = FixedClock(datetime.now(UTC))
    authority = open_authority(home, passphrase, clock=clock)
    ctx, _ = own_server_context(authority, home.path / "tls", passphrase)
    server = await start_server(make_app(authority), ctx, host="127.0.0.1", port=0)
    report = OnboardingReport(server.url, errors=[])
    trust = cert_pem(authority.root)
    gate = asyncio.Semaphore(concurrency)
    agents = [DeviceAgent.open(d, passphrase, clock=clock) for d in device_dirs]
    start = asyncio.get_running_loop().time()
    try:

        async def enroll(agent: DeviceAgent) -> None:
            async with gate:
                await agent.enroll(server.url, trust)

        await asyncio.gather(*(enroll(a) for a in agents))
        report.enrolled = len(agents)
        slice_ = agents[: max(1, int(len(agents) * renew_share))]
        latest = max(datetime.fromisoformat(a.state.renew_at) for a in slice_ if a.state and a.state.renew_at)
        clock.advance(latest - clock.now() + timedelta(hours=1))

        async def check_in(agent: DeviceAgent) -> str:
            async with gate:
                return await agent.check_in()

        outcomes = await asyncio.gather(*(check_in(a) for a in slice_))
        report.renewed = outcomes.count("renew")
        report.errors = [o for o in outcomes if o != "renew"][:5]
    finally:
        await server.stop()
    report.seconds = asyncio.get_running_loop().time() - start
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([authority.root]))
        .time(clock.now())
        .build_client_verifier()
    )
    operational = authority.chain("operational")
    for agent in agents:
        chain = agent.ldevid()
        if chain:
            verifier.verify(chain[0], operational)
            report.verified += 1
    authority.engine.dispose()
    return report
