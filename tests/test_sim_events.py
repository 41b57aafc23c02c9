"""The discrete-event simulator: devid's agent decisions on a virtual clock against the real
authority or its model, over the link models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e import devid

from devid.sim.cas import ModelledCa
from devid.sim.events import Issuance, SimInvalid, SimSpec, Strategy, simulate, simulate_modelled
from devid.sim.links import Connectivity
from devid.sim.real import simulate_real

#: Figures that measure the run itself, not the fleet.
RUN_FIGURES = {"issuance", "seconds", "events"}


def outcomes(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in RUN_FIGURES}


def modelled(spec: SimSpec, *, fast_forward: bool = True) -> dict[str, Any]:
    ca = ModelledCa(spec.strategy.policy())
    return simulate(spec, ca, Issuance.MODELLED, fast_forward=fast_forward).row(1000.0)


@pytest.mark.parametrize(
    ("strategy", "devices", "years", "link"),
    [
        # Renewals every ~20 days, three of eight devices revoked along the way.
        (Strategy.SHORT, 8, 1.0, Connectivity.DAILY),
        # Past the 5-year lifetime: the real authority refuses the IDevID re-enrollment, as modelled.
        (Strategy.LONG, 4, 5.5, Connectivity.DAILY),
    ],
)
def test_real_and_modelled_issuance_give_the_same_outcomes(
    strategy: Strategy, devices: int, years: float, link: Connectivity
) -> None:
    spec = SimSpec(devices, years, strategy, link, revoke_rate=0.3, seed=5)
    real = simulate_real(spec)
    assert real.issuance is Issuance.REAL
    row = real.row(1000.0)
    assert outcomes(row) == outcomes(modelled(spec))
    assert row["enrollments"] == devices
    if strategy is Strategy.SHORT:
        assert row["renewals"] > 8 * devices and row["revoked"] > 0
    else:
        assert row["lost_for_good"] > 0 and row["refusals"] >= row["lost_for_good"]


@pytest.mark.parametrize("link", [Connectivity.NB_IOT, Connectivity.FLAKY])
def test_sessions_counted_in_bulk_equal_sessions_one_by_one(link: Connectivity) -> None:
    spec = SimSpec(40, 2.0, Strategy.SESSION, link, revoke_rate=0.2, seed=3)
    bulk, single = modelled(spec), modelled(spec, fast_forward=False)
    assert bulk["events"] < single["events"] / 10
    bulk.pop("link_seconds_per_device_year"), single.pop("link_seconds_per_device_year")  # float sums
    assert outcomes(bulk) == outcomes(single)
    assert bulk["sessions"] > 40 * 300


def test_a_fleet_split_over_processes_is_simulated_alike() -> None:
    spec = SimSpec(300, 3.0, Strategy.SHORT, Connectivity.FLAKY, revoke_rate=0.1, seed=9)
    one, two = simulate_modelled(spec, 1), simulate_modelled(spec, 2)
    rows = outcomes(one.row(1000.0)), outcomes(two.row(1000.0))
    rows[0].pop("link_seconds_per_device_year"), rows[1].pop("link_seconds_per_device_year")
    assert rows[0] == rows[1]
    assert one.monthly_requests() == two.monthly_requests()


def test_the_strategies_trade_offs_show() -> None:
    daily = {s: modelled(SimSpec(200, 10.0, s, revoke_rate=0.05, seed=2)) for s in Strategy}
    # Long-lived (5 years, no IDevID fallback by policy): every device still in service at year 5 loses
    # its identity for good.
    long = daily[Strategy.LONG]
    assert 100 < long["lost_for_good"] <= long["lost_devices"]
    assert 4.9 * 365 < long["lost_max_days"] < 5.1 * 365
    for s in (Strategy.RENEW, Strategy.SHORT, Strategy.SESSION):
        assert daily[s]["lost_devices"] == 0, s
    # Revocation data goes to devices only where certificates enter CRLs.
    assert daily[Strategy.RENEW]["revocation_kb_per_device_year"] > 50
    assert daily[Strategy.SHORT]["revocation_kb_per_device_year"] == 0
    # Exposure: a day's CRL propagation, the rest of a 30-day certificate, the rest of an hour.
    assert daily[Strategy.RENEW]["exposure_max_hours"] <= 24.01
    assert 24 < daily[Strategy.SHORT]["exposure_max_hours"] <= 30 * 24
    assert daily[Strategy.SESSION]["exposure_max_hours"] <= 1
    # The CA's load follows the renewal rhythm.
    loads = [
        daily[s]["ca_mean_per_hour"]
        for s in (Strategy.LONG, Strategy.RENEW, Strategy.SHORT, Strategy.SESSION)
    ]
    assert loads == sorted(loads) and loads[0] < loads[-1] / 100
    # Over LoRaWAN a session certificate (4.6 KB an exchange) arrives days after its hour ended.
    lora = modelled(SimSpec(50, 1.0, Strategy.SESSION, Connectivity.LORAWAN, seed=2))
    assert lora["lost_devices"] == 50 and lora["sessions"] > 50


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"devices": 0}, "sim-devices"),
        ({"devices": -3}, "sim-devices"),
        ({"years": 0}, "sim-years"),
        ({"years": -1}, "sim-years"),
        ({"revoke_rate": 1.5}, "sim-revoke-rate"),
    ],
)
def test_impossible_parameters_are_refused(kwargs: dict[str, Any], code: str) -> None:
    values: dict[str, Any] = {"devices": 10, "years": 1.0, "strategy": Strategy.RENEW} | kwargs
    with pytest.raises(SimInvalid) as refused:
        SimSpec(**values)
    assert refused.value.code == code


def test_sim_compare_writes_the_table_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    done = devid("sim", "compare", "--devices", "120", "--years", "3", "--seed", "4", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["strategy"] for r in report["strategies"]] == ["long-lived", "renew", "short-lived", "session"]
    assert {Path(p).name for p in report["files"]} == {
        "comparison.json", "comparison.csv", "tradeoffs.png", "tradeoffs.svg", "ca-load.png", "ca-load.svg",
    }  # fmt: skip
    for name in ("tradeoffs.png", "ca-load.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("tradeoffs.svg", "ca-load.svg"):
        assert "<svg" in (out / name).read_text()
    assert json.loads((out / "comparison.json").read_text())["rows"] == report["strategies"]
    assert (out / "comparison.csv").read_text().splitlines()[0].startswith("strategy,devices,years")

    table = devid(
        "sim", "run", "--years", "2", "--devices", "50", "--policy", "short", "--connectivity", "nb-iot"
    )
    assert table.returncode == 0, table.stderr
    assert "short-lived" in table.stdout and "renewals with the LDevID" in table.stdout


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["sim", "run", "--years", "0"], "[sim-years]"),
        (["sim", "run", "--years", "1", "--revoke-rate", "-0.1"], "[sim-revoke-rate]"),
        (["sim", "run", "--years", "1", "--days", "10"], "[sim-mode]"),
        (["sim", "run", "--years", "1", "--issuance", "real", "--devices", "5000"], "[sim-real-too-large]"),
        (["sim", "compare", "--devices", "-1"], "[sim-devices]"),
        (["sim", "run", "--years", "1", "--policy", "forever"], "'forever' is not one of"),
        (["sim", "run", "--years", "1", "--connectivity", "carrier-pigeon"], "is not one of"),
    ],
)
def test_the_cli_refuses_impossible_parameters(args: list[str], wanted: str) -> None:
    done = devid(*args)
    assert done.returncode == 2
    assert wanted in done.stderr


def test_bench_sim_prints_its_figures_beside_the_real_issuance_baseline() -> None:
    done = devid("bench", "sim", "--devices", "40", "--years", "1", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    figures = {f["name"]: f for f in map(json.loads, done.stdout.splitlines())}
    assert figures["sim compare, 40 devices x 1 years, 4 strategies"]["unit"] == "s"
    rate = figures["sim device-years/s, modelled"]
    assert rate["baseline_name"].startswith("real issuance") and rate["value"] > 0 and rate["baseline"] > 0
    assert rate["ratio"] == pytest.approx(rate["value"] / rate["baseline"], rel=1e-3)
