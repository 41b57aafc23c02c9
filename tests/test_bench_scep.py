"""`devid bench scep --json`: SCEP enrollments/s beside EST's, same server and run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from e2e import devid, ok


def test_bench_scep_prints_its_rate_beside_est() -> None:
    out = ok(devid("bench", "scep", "--n", "10", "--clients", "2", "--json")).stdout
    figures = {f["name"]: f for f in map(json.loads, out.splitlines())}
    rate = figures["scep.enroll_rate"]
    assert rate["unit"] == "enrollments/s"
    assert rate["value"] > 0 and rate["baseline"] > 0 and rate["ratio"] > 0
    assert "10/10 CertReps SUCCESS" in rate["note"] and "EST failures: 0" in rate["note"]
    assert {"scep.enroll_p50", "scep.enroll_p99"} <= figures.keys()


def test_bench_scep_with_p256_requesters() -> None:
    """`--p256`: every CertRep goes back by key agreement and opens with the requester's key."""
    out = ok(devid("bench", "scep", "--p256", "--n", "10", "--clients", "2", "--json")).stdout
    rate = next(f for f in map(json.loads, out.splitlines()) if f["name"] == "scep.enroll_rate")
    assert "10/10 CertReps SUCCESS" in rate["note"] and "P-256" in rate["note"]
