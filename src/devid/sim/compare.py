"""The four renewal strategies on one fleet, one link and one seed, side by side."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devid.sim.cas import measured_issuance_rate
from devid.sim.events import SimSpec, Strategy, StrategyResult, simulate_modelled
from devid.sim.links import Connectivity

#: The comparison's default share of the fleet whose key is compromised (and revoked) each year.
DEFAULT_REVOKE_RATE = 0.01

#: The lines of the strategy table: (row key, what it says).
FIGURES = (
    ("lost_devices", "devices that lost their identity while online"),
    ("lost_device_days", "device-days without identity"),
    ("lost_max_days", "longest loss of one device (days)"),
    ("lost_for_good", "devices that lost it for good"),
    ("enrollments", "first enrollments"),
    ("renewals", "renewals with the LDevID"),
    ("re_enrollments", "re-enrollments with the IDevID"),
    ("sessions", "session certificates"),
    ("refusals", "refused requests"),
    ("ca_peak_per_hour", "CA requests, peak hour"),
    ("ca_steady_peak_per_hour", "CA requests, peak hour after month 1"),
    ("ca_mean_per_hour", "CA requests an hour, mean"),
    ("cert_kb_per_device_year", "certificate KB per device-year on the link"),
    ("revocation_kb_per_device_year", "revocation KB per device-year on the link"),
    ("link_seconds_per_device_year", "link seconds per device-year"),
    ("revoked", "devices revoked (key compromise)"),
    ("exposure_mean_hours", "exposure after revocation, mean (h)"),
    ("exposure_max_hours", "exposure after revocation, longest (h)"),
)


@dataclass(frozen=True)
class Comparison:
    results: list[StrategyResult]
    #: Certificates a second this machine signs: what the CA-load figures are set against.
    ca_rate: float
    seconds: float

    def rows(self) -> list[dict[str, Any]]:
        return [r.row(self.ca_rate) for r in self.results]

    def write_table(self, out: Path) -> list[Path]:
        """The table as JSON (every figure) and CSV (one line a strategy)."""
        out.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        data = out / "comparison.json"
        data.write_text(
            json.dumps(
                {"ca_rate_per_second": round(self.ca_rate), "seconds": round(self.seconds, 1), "rows": rows},
                indent=1,
            )
        )
        csv = out / "comparison.csv"
        header = list(rows[0])
        lines = [",".join(header)] + [
            ",".join("" if r[k] is None else str(r[k]) for k in header) for r in rows
        ]
        csv.write_text("\n".join(lines) + "\n")
        return [data, csv]


def compare(
    devices: int,
    years: float,
    seed: int,
    connectivity: str = Connectivity.DAILY.value,
    *,
    revoke_rate: float = DEFAULT_REVOKE_RATE,
    workers: int | None = None,
) -> Comparison:
    """Simulate every strategy with modelled issuance; the fleet of each is split over `workers`
    processes (default: the machine's cores)."""
    began = time.perf_counter()
    link = Connectivity(connectivity)
    specs = [SimSpec(devices, years, s, link, revoke_rate, seed) for s in Strategy]
    count = workers or os.cpu_count() or 1
    results = [simulate_modelled(spec, count) for spec in specs]
    return Comparison(results, measured_issuance_rate(), time.perf_counter() - began)
