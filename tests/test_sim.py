"""The fleet simulator: real device agents (software secure elements, factory-made folders) against
devid's EST server over real TLS on loopback, time moved a day at a time on one shared clock.

The first test is the issue's acceptance test: 1,000 devices under `short-lived` survive 90 days
offline. It takes about half a minute on the 2-core reference machine; it is marked `slow` so that it
can be deselected (`-m "not slow"`) while iterating, but it runs by default."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from e2e import devid, flat

from devid.sim.fleet import FleetReport, run_fleet


def by_label(reports: list[FleetReport]) -> dict[str, FleetReport]:
    return {r.label: r for r in reports}


@pytest.mark.slow
def test_thousand_devices_survive_ninety_days_offline_under_short_lived() -> None:
    start = time.perf_counter()
    [report] = asyncio.run(run_fleet(devices=1000, labels=["short"], days=120, offline=(5, 95)))
    seconds = time.perf_counter() - start
    print(f"1,000 devices, short-lived, 120 days with 90 offline: {seconds:.1f} s")
    assert report.errors == []
    assert report.ok
    assert report.without_identity == 0 and report.online_days_without_identity == 0
    assert report.outcomes["enroll"] == 1000
    # Every LDevID (30 days) expired while offline: every device fell back to its IDevID once...
    assert report.outcomes["fallback"] == 1000
    # ...and renewed the fresh one at about 2/3 of its life (day ~115), before the run ended.
    assert report.outcomes["renew"] == 1000
    assert "error" not in report.outcomes


def test_every_policy_keeps_an_identity_through_a_long_offline_period() -> None:
    days, offline = 120, (5, 95)
    online_days = days - (offline[1] - offline[0])  # days 1-4 and 95-120
    labels = ["", "long", "short", "session"]
    reports = by_label(asyncio.run(run_fleet(devices=30, labels=labels, days=days, offline=offline)))
    for label, report in reports.items():
        assert report.ok, (label, report)
        assert report.errors == [] and "error" not in report.outcomes, (label, report.errors)
        assert report.outcomes["enroll"] == 30
        assert sum(report.outcomes.values()) == 30 + 30 * online_days
    # renew (365 days) and long-lived (5 years) outlive the gap untouched.
    assert reports[""].outcomes["idle"] == 30 * online_days
    assert reports["long"].outcomes["idle"] == 30 * online_days
    assert reports["short"].outcomes["fallback"] == 30
    # No LDevID at all under `session`: a new one-hour certificate at every daily connection.
    assert reports["session"].outcomes["session"] == 30 * online_days


def test_renew_policy_renews_after_coming_back_past_renew_at() -> None:
    """Offline across the renewal time (day ~243 of 365) but not past expiry: a plain renewal."""
    [report] = asyncio.run(run_fleet(devices=10, labels=[""], days=290, offline=(100, 280)))
    assert report.ok, report
    assert report.outcomes["renew"] == 10
    assert "fallback" not in report.outcomes and "error" not in report.outcomes


def test_sim_run_cli_all_policies_json() -> None:
    result = devid(
        "sim", "run", "--devices", "20", "--policy", "all", "--days", "40", "--offline-days", "30", "--json"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] is True
    policies = {p["policy"]: p for p in out["policies"]}
    assert list(policies) == ["renew", "long", "short", "session"]
    assert [p["label"] for p in out["policies"]] == ["", "long", "short", "session"]
    for p in policies.values():
        assert p["ok"] is True and p["devices"] == 20 and p["days"] == 40 and p["offline"] == [5, 35]
        assert p["without_identity"] == 0 and p["online_days_without_identity"] == 0
        assert p["errors"] == []
    online_days = 40 - 30
    assert policies["short"]["outcomes"] == {"enroll": 20, "fallback": 20, "idle": 20 * (online_days - 1)}
    assert policies["session"]["outcomes"] == {"enroll": 20, "session": 20 * online_days}
    assert policies["renew"]["outcomes"] == {"enroll": 20, "idle": 20 * online_days}


def test_sim_run_cli_fails_when_devices_lose_their_identity() -> None:
    """long-lived (5 years) never renews and has no IDevID fallback: past its lifetime the device has
    no identity, and the simulator says FAIL with exit status 1."""
    result = devid(
        "sim", "run", "--devices", "2", "--policy", "long", "--days", "1830", "--offline-from", "1",
        "--offline-days", "1824",
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = flat(result.stdout)
    assert "FAIL long" in out and "without identity at the end: 2" in out, out
    assert "idevid-fallback-refused" in out


def test_sim_run_cli_human_output() -> None:
    result = devid("sim", "run", "--devices", "3", "--policy", "short", "--days", "40", "--offline-days=30")
    assert result.returncode == 0, result.stderr
    out = flat(result.stdout)
    assert 'PASS short (label "short"): devices 3' in out, out
    assert "without identity at the end: 0" in out and "online-days without identity: 0" in out
    assert "fallback 3" in out
    assert out.endswith("PASS")
