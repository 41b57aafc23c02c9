"""`devid bench coaps --json`: the EST-coaps figures beside their HTTPS baselines, same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e import devid, ok


def test_bench_coaps_prints_rate_and_wire_bytes_beside_https() -> None:
    out = ok(devid("bench", "coaps", "--n", "10", "--clients", "2", "--json")).stdout
    figures = {f["name"]: f for f in map(json.loads, out.splitlines())}
    rate, wire = figures["coaps.enroll_rate"], figures["coaps.wire_bytes_per_enrollment"]
    assert rate["value"] > 0 and rate["baseline"] > 0 and rate["ratio"] > 0
    assert "0 failures (HTTPS: 0)" in rate["note"]
    # A full DTLS handshake with a certificate each way, a CSR and a certificate: kilobytes.
    assert 2000 < wire["value"] < 10000 and 2000 < wire["baseline"] < 10000
