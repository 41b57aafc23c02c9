"""`devid bench onboard`: devices/s through the whole fleet-onboarding path, beside bare EST.

Onboarding: a contract manufacturer's CA is registered (proof of possession), with an enrollment
group over hubs; each of N new devices opens its own mTLS connection with its manufacturer-made
IDevID and enrolls: identification through the registry, just-in-time registration, admission by
the group, hashed allocation, LDevID issuance, all recorded. Baseline, in the same run: N devices
that devid itself made (already registered, no registry configured) doing the same `simpleenroll`
on a fresh connection each against a server on a bare home. Both servers run as `devid serve`
processes with the same worker count; the load generator is `devid.bench.est.load`.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from sqlalchemy import func, select

from devid.authority.setup import init_home, open_authority
from devid.bench import Figure, allocation
from devid.bench.est import PASSPHRASE, Run, _start_server, make_csrs, provision, timed_load
from devid.est.client import tls_context
from devid.pki.encoding import cert_pem
from devid.sim.contract import ContractManufacturer, onboard_manufacturer
from devid.store import repo
from devid.store.engine import reading


def _serve_and_load(
    home: Path, workers: int, clients: int, devices: list[ssl.SSLContext], csrs: list[bytes]
) -> Run:
    """Start `devid serve` on `home`, warm it up on the first devices, measure the rest."""
    proc, url = _start_server(home, workers, "--max-per-address", "0")  # all devices on one address
    try:
        warm = min(len(devices) // 10, 50)
        timed_load(url, devices[:clients], csrs[:warm], False, devices=devices[:warm])
        return timed_load(
            url, devices[:clients], csrs[warm:], False, server_pid=proc.pid, devices=devices[warm:]
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run(
    n: int = 1000, clients: int = 16, workers: int = 2, skew_devices: int = 100_000, hubs: int = 10
) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-onboard-") as tmp:
        bare_home = init_home(Path(tmp) / "bare", org="Bench Org", passphrase=PASSPHRASE)
        bare = open_authority(bare_home, PASSPHRASE)
        trust = cert_pem(bare.root)
        own = [tls_context(trust, i.chain, i.key) for i in provision(bare, n)]
        bare.close()
        baseline = _serve_and_load(bare_home.path, workers, clients, own, make_csrs(n))

        home = init_home(Path(tmp) / "fleet", org="Bench Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        now = authority.clock.now()
        maker = ContractManufacturer.create("Bench Contract Mfg", now)
        onboard_manufacturer(
            authority, maker, "bench-mfg", [f"hub-{i:02d}" for i in range(hubs)], actor="bench"
        )
        trust = cert_pem(authority.root)
        made = [maker.device(f"BENCH-MFG-{i:06d}", now) for i in range(n)]
        contract = [tls_context(trust, chain, key) for chain, key in made]
        onboarding = _serve_and_load(home.path, workers, clients, contract, make_csrs(n))
        with reading(authority.engine) as conn:
            allocated = conn.execute(
                select(func.count()).select_from(repo.devices).where(repo.devices.c.hub_id.is_not(None))
            ).scalar_one()
        authority.close()

    note = f"{clients} clients, a new device and mTLS connection per enrollment, devid serve x{workers}"
    figures = [
        Figure(
            "onboard.devices_per_s",
            onboarding.rate,
            "devices/s",
            baseline.rate,
            "bare EST simpleenroll of devid-made, already registered devices",
            f"{note}; {onboarding.failures} failures, {allocated} devices registered and allocated "
            f"(baseline failures: {baseline.failures})",
        ),
        Figure("onboard.p50", onboarding.percentile_ms(50), "ms", baseline.percentile_ms(50), "bare EST p50"),
        Figure("onboard.p99", onboarding.percentile_ms(99), "ms", baseline.percentile_ms(99), "bare EST p99"),
    ]
    server_cpu, baseline_cpu = onboarding.cpu_ms(onboarding.server_cpu), baseline.cpu_ms(baseline.server_cpu)
    if server_cpu is not None and baseline_cpu is not None:
        figures.append(
            Figure("onboard.server_cpu", server_cpu, "ms/device", baseline_cpu, "bare EST server CPU")
        )
    return figures + allocation.run(skew_devices, hubs)
