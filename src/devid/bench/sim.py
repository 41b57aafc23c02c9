"""`devid bench sim`: how fast the discrete-event simulator compares the four strategies.

The figure the issue names is the wall time of `devid sim compare` (modelled issuance) on the given
fleet; beside it, the simulator's rate in device-years and events a second, against the same
simulator with real issuance (every certificate signed and recorded by the real authority) on a
small fleet in the same run: what modelling buys.
"""

from __future__ import annotations

from devid.bench import Figure
from devid.sim.compare import compare
from devid.sim.events import SimSpec, Strategy
from devid.sim.real import simulate_real

#: The real-issuance baseline: short-lived (a renewal every ~20 days) so that signing dominates.
REAL_SPEC = SimSpec(10, 1.0, Strategy.SHORT, seed=1)


def sim_figures(devices: int, years: float, workers: int | None) -> list[Figure]:
    comparison = compare(devices, years, seed=1, workers=workers)
    events = sum(r.events for r in comparison.results)
    device_years = devices * years * len(comparison.results)
    real = simulate_real(REAL_SPEC)
    real_device_years = REAL_SPEC.devices * REAL_SPEC.years
    return [
        Figure(
            f"sim compare, {devices:,} devices x {years:g} years, 4 strategies",
            comparison.seconds,
            "s",
            note="target: under 600 s at 100,000 devices x 10 years",
        ),
        *(
            Figure(f"sim {r.spec.strategy.display}, modelled", r.seconds, "s", note=f"{r.events:,} events")
            for r in comparison.results
        ),
        Figure(
            "sim device-years/s, modelled",
            device_years / comparison.seconds,
            "device-years/s",
            real_device_years / real.seconds,
            "real issuance (10 devices, short-lived, 1 year)",
        ),
        Figure(
            "sim events/s, modelled",
            events / comparison.seconds,
            "events/s",
            real.events / real.seconds,
            "real issuance (10 devices, short-lived, 1 year)",
        ),
    ]
