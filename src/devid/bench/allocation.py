"""Allocation figures for `devid bench onboard`: how evenly `hashed` spreads devices over hubs and
how many move when a hub is added, beside the naive `hash mod n` assignment as baseline.

Both are computed on the policy code devices are really allocated with (`devid.registry.allocation`),
over synthetic registration ids; no server or store involved.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from devid.bench import Figure
from devid.registry.allocation import rendezvous
from devid.registry.hubs import HubInfo


def _modulo(device: str, hubs: list[HubInfo]) -> HubInfo:
    digest = hashlib.sha256(device.encode()).digest()
    return hubs[int.from_bytes(digest[:8], "big") % len(hubs)]


def run(devices: int = 100_000, hub_count: int = 10) -> list[Figure]:
    hubs = [HubInfo(f"hub-{i:02d}", f"mqtts://hub-{i:02d}.example:8883", "r") for i in range(hub_count + 1)]
    before, after = hubs[:hub_count], hubs
    ids = [f"DEV{i:08d}" for i in range(devices)]
    placed = {d: rendezvous(d, before).name for d in ids}
    moved = sum(rendezvous(d, after).name != placed[d] for d in ids)
    modulo_placed = {d: _modulo(d, before).name for d in ids}
    modulo_moved = sum(_modulo(d, after).name != modulo_placed[d] for d in ids)
    mean = devices / hub_count
    skew = max(Counter(placed.values()).values()) / mean
    modulo_skew = max(Counter(modulo_placed.values()).values()) / mean
    ideal = 1 / (hub_count + 1)
    return [
        Figure(
            "onboard.hashed_skew",
            skew,
            "max/mean",
            modulo_skew,
            "hash mod n",
            f"{devices:,} devices over {hub_count} hubs; 1.0 is perfectly even",
        ),
        Figure(
            "onboard.hashed_moved_share",
            moved / devices,
            "share",
            modulo_moved / devices,
            "hash mod n",
            f"devices that change hub when hub {hub_count + 1} is added; the ideal is {ideal:.4f}",
        ),
    ]
