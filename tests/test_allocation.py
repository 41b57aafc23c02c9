"""Allocation policies as pure functions: stability, minimal movement, weights, latency."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devid.errors import PolicyError
from devid.registry.allocation import Allocation, AllocationFailed, allocate, lowest_latency, rendezvous
from devid.registry.hubs import HubInfo


def hub(name: str, region: str = "r", weight: int = 1, **latencies: float) -> HubInfo:
    return HubInfo(name, f"mqtts://{name}.example:8883", region, weight, True, dict(latencies))


HUBS = [hub(f"h{i}") for i in range(5)]


@given(st.text(min_size=1, max_size=40), st.permutations(HUBS))
def test_hashed_is_stable_whatever_the_hub_order(device: str, order: list[HubInfo]) -> None:
    assert rendezvous(device, order).name == rendezvous(device, HUBS).name


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=40))
def test_adding_a_hub_moves_a_device_only_onto_the_new_hub(device: str) -> None:
    before = rendezvous(device, HUBS)
    after = rendezvous(device, [*HUBS, hub("new")])
    assert after.name in (before.name, "new")


def test_removing_a_hub_moves_only_its_devices() -> None:
    devices = [f"D{i}" for i in range(3000)]
    placed = {d: rendezvous(d, HUBS).name for d in devices}
    rest = [h for h in HUBS if h.name != "h2"]
    for d in devices:
        if placed[d] != "h2":
            assert rendezvous(d, rest).name == placed[d]


def test_weighted_shares_follow_weights() -> None:
    hubs = [hub("small", weight=1), hub("big", weight=3)]
    counts = Counter(rendezvous(f"D{i}", hubs, weighted=True).name for i in range(20000))
    assert counts["big"] / counts["small"] == pytest.approx(3.0, rel=0.08)


def test_hashed_ignores_weights_and_is_even() -> None:
    hubs = [hub("small", weight=1), hub("big", weight=3)]
    counts = Counter(allocate(Allocation.HASHED, f"D{i}", hubs).hub.name for i in range(20000))
    assert counts["big"] / counts["small"] == pytest.approx(1.0, rel=0.06)


def test_lowest_latency_prefers_table_then_region_then_hash() -> None:
    hubs = [hub("eu", "eu", eu=10.0, us=95.0), hub("us", "us", eu=90.0, us=8.0), hub("ap", "ap")]
    assert lowest_latency("d", "us", hubs).name == "us"
    assert lowest_latency("d", "eu", hubs).name == "eu"
    assert lowest_latency("d", "ap", hubs).name == "ap"  # no table entry: its own region
    assert lowest_latency("d", None, hubs).name == rendezvous("d", hubs).name


def test_static_needs_exactly_one_hub_and_no_hub_is_an_error() -> None:
    assert allocate(Allocation.STATIC, "d", [HUBS[3]]).hub.name == "h3"
    with pytest.raises(PolicyError):
        allocate(Allocation.STATIC, "d", HUBS)
    with pytest.raises(AllocationFailed) as err:
        allocate(Allocation.HASHED, "d", [])
    assert err.value.code == "no-hub"
