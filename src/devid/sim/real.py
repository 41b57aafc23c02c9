"""Real issuance for the simulator: devid's authority, store and factory line on a throw-away home."""

from __future__ import annotations

import tempfile
from pathlib import Path

from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.sim.cas import RealCa
from devid.sim.events import START, Issuance, SimSpec, StrategyResult, simulate
from devid.sim.fleet import PASSPHRASE, memory_dir, provision


def simulate_real(spec: SimSpec, workdir: Path | None = None) -> StrategyResult:
    """Provision the fleet on the real factory line, then simulate it with every certificate
    signed and recorded by the real authority, whose clock is the simulation's."""
    with tempfile.TemporaryDirectory(prefix="devid-sim-", dir=memory_dir(spec.devices)) as tmp:
        base = workdir or Path(tmp)
        serials = spec.serials()
        home = provision(base, serials)
        clock = FixedClock(START)
        with open_authority(home, PASSPHRASE, clock=clock) as authority:
            ca = RealCa(authority, clock, spec.strategy.label, base / "devices", serials)
            try:
                return simulate(spec, ca, Issuance.REAL, fast_forward=False, on_loop=True)
            finally:
                ca.close()
