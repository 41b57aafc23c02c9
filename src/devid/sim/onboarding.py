"""The demo's field stage: a fleet enrolls LDevIDs over EST, then a slice renews on schedule."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification

from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.device.agent import DeviceAgent
from devid.est.client import EstClient, EstError, tls_context
from devid.pki.encoding import cert_pem
from devid.registry import enrollments
from devid.registry.enrollments import Kind
from devid.server.app import make_app, start_server
from devid.server.tls import own_server_context
from devid.sim.contract import ContractManufacturer, onboard_manufacturer


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
    agents = [DeviceAgent.open(d, clock=clock) for d in device_dirs]
    start = asyncio.get_running_loop().time()
    try:

        async def enroll(agent: DeviceAgent) -> None:
            async with gate:
                await agent.enroll(server.url, trust)

        await asyncio.gather(*(enroll(a) for a in agents))
        report.enrolled = len(agents)
        slice_ = agents[: max(1, int(len(agents) * renew_share))]
        latest = max(a.state.renew_at for a in slice_ if a.state and a.state.renew_at)
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
    authority.close()
    return report


@dataclass
class FleetOnboardingReport:
    manufacturer: str
    group: str
    registered: int = 0
    per_hub: dict[str, int] | None = None
    blocked_when_disabled: bool = False
    seconds: float = 0.0


async def onboard_contract_fleet(
    home: Home, passphrase: bytes, devices: int = 200, concurrency: int = 32
) -> FleetOnboardingReport:
    """A contract manufacturer's CA (made outside devid) is registered with proof of possession;
    its devices register just in time over EST with their own IDevIDs, land on hubs by the
    group's hashed allocation, and are refused once the group is disabled."""
    authority = open_authority(home, passphrase)
    name = f"contoso-{secrets.token_hex(3)}"  # a new contract manufacturer each run
    maker = ContractManufacturer.create(f"Contoso Contract Mfg {name[-6:]}", authority.clock.now())
    group = onboard_manufacturer(authority, maker, name, ["hub-eu", "hub-us", "hub-ap"])
    ctx, _ = own_server_context(authority, home.path / "tls", passphrase)
    server = await start_server(make_app(authority), ctx, host="127.0.0.1", port=0)
    report = FleetOnboardingReport(name, group.name, per_hub={})
    trust = cert_pem(authority.root)
    gate = asyncio.Semaphore(concurrency)
    start = asyncio.get_running_loop().time()

    async def register(serial: str) -> str | None:
        chain, key = maker.device(serial, authority.clock.now())
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(chain[0].subject).sign(key, hashes.SHA256())
        )
        async with gate, EstClient(server.url, tls_context(trust, chain, key)) as client:
            return (await client.simpleenroll(csr)).hub

    try:
        prefix = name.upper()
        hubs_seen = await asyncio.gather(*(register(f"{prefix}-{i:05d}") for i in range(devices)))
        report.registered = sum(h is not None for h in hubs_seen)
        report.per_hub = dict(sorted(Counter(h for h in hubs_seen if h).items()))
        enrollments.update(authority, Kind.GROUP, group.name, enabled=False, actor="demo")
        try:
            await register(f"{prefix}-{devices:05d}")
        except EstError as exc:
            report.blocked_when_disabled = exc.status == 403 and exc.code == "enrollment-disabled"
        enrollments.update(authority, Kind.GROUP, group.name, enabled=True, actor="demo")
    finally:
        await server.stop()
        authority.close()
    report.seconds = asyncio.get_running_loop().time() - start
    return report
