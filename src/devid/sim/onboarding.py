"""The demo's field stages: a fleet enrolls LDevIDs over EST and a slice renews on schedule; part of
it lives on the short-lived policy, offline past expiry and back; a contract manufacturer's fleet
registers just in time."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification

from devid.authority.setup import open_authority
from devid.config import Home
from devid.device.agent import DeviceAgent
from devid.est.client import EstClient, EstError, tls_context
from devid.registry import enrollments
from devid.registry.enrollments import Kind
from devid.sim.contract import ContractManufacturer, onboard_manufacturer
from devid.sim.fleet import loopback_est


@dataclass
class OnboardingReport:
    url: str
    enrolled: int = 0
    renewed: int = 0
    verified: int = 0
    seconds: float = 0.0
    errors: list[str] | None = None


async def each(
    agents: Sequence[DeviceAgent], act: Callable[[DeviceAgent], Awaitable[object]], concurrency: int
) -> list[str]:
    """`act` on every agent, at most `concurrency` at a time; what each answered."""
    gate = asyncio.Semaphore(concurrency)

    async def one(agent: DeviceAgent) -> str:
        async with gate:
            return str(await act(agent))

    return await asyncio.gather(*(one(a) for a in agents))


def renewal_moment(agents: Sequence[DeviceAgent]) -> datetime:
    """When the last of these agents is due to renew."""
    return max(a.state.renew_at for a in agents if a.state and a.state.renew_at)


async def onboard(
    home: Home,
    passphrase: bytes,
    device_dirs: Sequence[Path],
    renew_share: float = 0.1,
    concurrency: int = 32,
) -> OnboardingReport:
    """Serve EST on loopback, enroll every device with its IDevID, then move the clock past the
    renewal time and let a slice of the fleet check in and renew with its LDevID."""
    async with loopback_est(home, passphrase) as est:
        report = OnboardingReport(est.url, errors=[])
        agents = [DeviceAgent.open(d, clock=est.clock) for d in device_dirs]
        start = asyncio.get_running_loop().time()
        await each(agents, lambda a: a.enroll(est.url, est.trust), concurrency)
        report.enrolled = len(agents)
        slice_ = agents[: max(1, int(len(agents) * renew_share))]
        est.clock.advance(renewal_moment(slice_) - est.clock.now() + timedelta(hours=1))
        outcomes = await each(slice_, DeviceAgent.check_in, concurrency)
        report.renewed = outcomes.count("renew")
        report.errors = [o for o in outcomes if o != "renew"][:5]
        report.seconds = asyncio.get_running_loop().time() - start
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([est.authority.root]))
            .time(est.clock.now())
            .build_client_verifier()
        )
        operational = est.authority.chain("operational")
        for agent in agents:
            chain = agent.ldevid()
            if chain:
                verifier.verify(chain[0], operational)
                report.verified += 1
    return report


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
    """The demo's second renewal policy: enroll `device_dirs` on the `short` label (short-lived
    LDevIDs, whose expiry is their revocation); move the clock past their renewal time, where all
    but an `offline_share` check in and renew with their LDevID; then past the expiry of the
    offline devices' certificates, where they check in again and fall back to their IDevID."""
    async with loopback_est(home, passphrase) as est:
        lifetime = est.authority.label_policy(SHORT_LABEL).lifetime
        agents = [DeviceAgent.open(d, clock=est.clock, durable=False) for d in device_dirs]
        offline = agents[: int(len(agents) * offline_share)]
        online = agents[len(offline) :]
        start = asyncio.get_running_loop().time()
        await each(agents, lambda a: a.enroll(est.url, est.trust, SHORT_LABEL), concurrency)
        est.clock.advance(renewal_moment(online) - est.clock.now() + timedelta(hours=1))
        renewed = Counter(await each(online, DeviceAgent.check_in, concurrency))
        est.clock.advance(lifetime)  # the offline devices' certificates expired meanwhile
        fallback = Counter(await each(offline, DeviceAgent.check_in, concurrency))
        seconds = asyncio.get_running_loop().time() - start
    errors = tuple(o for o in (renewed + fallback) if o not in ("renew", "fallback"))
    return ShortLivedReport(
        SHORT_LABEL,
        lifetime / timedelta(days=1),
        len(agents),
        renewed["renew"],
        len(offline),
        fallback["fallback"],
        errors[:5],
        seconds,
    )


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
    name = f"contoso-{secrets.token_hex(3)}"  # a new contract manufacturer each run
    with open_authority(home, passphrase) as registering:  # before the server: its TLS trusts the CA
        maker = ContractManufacturer.create(f"Contoso Contract Mfg {name[-6:]}", registering.clock.now())
        group = onboard_manufacturer(registering, maker, name, ["hub-eu", "hub-us", "hub-ap"])
    async with loopback_est(home, passphrase) as est:
        authority = est.authority
        report = FleetOnboardingReport(name, group.name, per_hub={})
        gate = asyncio.Semaphore(concurrency)
        start = asyncio.get_running_loop().time()

        async def register(serial: str) -> str | None:
            chain, key = maker.device(serial, authority.clock.now())
            builder = x509.CertificateSigningRequestBuilder().subject_name(chain[0].subject)
            async with gate, EstClient(est.url, tls_context(est.trust, chain, key)) as client:
                return (await client.simpleenroll(builder.sign(key, hashes.SHA256()))).hub

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
    report.seconds = asyncio.get_running_loop().time() - start
    return report
