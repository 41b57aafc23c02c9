"""Allocation policies: which hub a registering device goes to.

`hashed` and `weighted` use rendezvous (highest-random-weight) hashing: each device scores every
hub with a hash of (device, hub) and takes the best, so the answer is stable while the hub set
is unchanged and adding an n+1-th hub moves only the ~1/(n+1) of devices that now score best on
it; no table to rebalance. `weighted` scales scores by hub weight (Schindelhauer & Schomaker's
-w/ln(u) form), so shares follow weights. `custom` asks an operator's webhook.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from devid.errors import DevidError, PolicyError
from devid.registry.hubs import HubInfo

WEBHOOK_TIMEOUT = 2.0
#: Largest webhook answer read (a hub name and a few properties).
WEBHOOK_MAX = 64 * 1024


class Allocation(StrEnum):
    HASHED = "hashed"
    STATIC = "static"
    LOWEST_LATENCY = "lowest-latency"
    WEIGHTED = "weighted"
    CUSTOM = "custom"


class AllocationFailed(DevidError):
    """The allocation could not be made (no hub, a failing custom webhook): HTTP 502/503."""


@dataclass(frozen=True)
class Decision:
    hub: HubInfo
    properties: dict[str, Any] = field(default_factory=dict)


def _uniform(device: str, hub: str) -> float:
    """A hash of (device, hub) as a number in (0, 1)."""
    digest = hashlib.sha256(f"{device}\x00{hub}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 2)


def rendezvous(device: str, candidates: Sequence[HubInfo], weighted: bool = False) -> HubInfo:
    def score(hub: HubInfo) -> float:
        u = _uniform(device, hub.name)
        return -(hub.weight if weighted else 1) / math.log(u)

    return max(candidates, key=score)


def lowest_latency(device: str, region: str | None, candidates: Sequence[HubInfo]) -> HubInfo:
    """The hub with the least latency from the device's region (table entry, else 0 in its own
    region); without a region or any entry, an even hash (stable, like `hashed`)."""
    if region:

        def latency(hub: HubInfo) -> float:
            if region in hub.latencies:
                return float(hub.latencies[region])
            return 0.0 if hub.region == region else math.inf

        best = min(latency(h) for h in candidates)
        if best != math.inf:
            return rendezvous(device, [h for h in candidates if latency(h) == best])
    return rendezvous(device, candidates)


def custom(url: str, registration: dict[str, Any], candidates: Sequence[HubInfo], timeout: float) -> Decision:
    """Ask the custom-allocation webhook: POST the registration as JSON, expect
    `{"hub": "<name>", "properties": {...}}` naming one of the candidate hubs.

    Runs in the authority's worker thread, synchronously and with a hard timeout; the standard
    library's client is enough for one bounded request and keeps this path free of event loops.
    """
    body = json.dumps({**registration, "hubs": [h.name for h in candidates]}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(WEBHOOK_MAX + 1)
    except TimeoutError:
        raise AllocationFailed(
            "allocation-webhook-timeout", f"custom allocation webhook did not answer within {timeout:g} s"
        ) from None
    except urllib.error.HTTPError as exc:
        raise AllocationFailed(
            "allocation-webhook-status", f"custom allocation webhook answered HTTP {exc.code}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise AllocationFailed(
                "allocation-webhook-timeout", f"custom allocation webhook did not answer within {timeout:g} s"
            ) from None
        raise AllocationFailed(
            "allocation-webhook-unreachable", f"custom allocation webhook unreachable: {reason}"
        ) from None
    try:
        if len(raw) > WEBHOOK_MAX:
            raise ValueError("answer too large")
        answer = json.loads(raw)
        name = answer["hub"]
        properties = answer.get("properties", {})
        if not isinstance(name, str) or not isinstance(properties, dict):
            raise ValueError("hub must be a string and properties an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise AllocationFailed(
            "allocation-webhook-garbage",
            f'custom allocation webhook answer is not {{"hub": "<name>", "properties": {{...}}}}: {exc}',
        ) from None
    for hub in candidates:
        if hub.name == name:
            return Decision(hub, properties)
    raise AllocationFailed(
        "allocation-webhook-garbage",
        f"custom allocation webhook named hub {name!r}, which is not one of this enrollment's enabled hubs",
    )


def allocate(
    policy: Allocation,
    device: str,
    candidates: Sequence[HubInfo],
    *,
    region: str | None = None,
    webhook_url: str | None = None,
    registration: dict[str, Any] | None = None,
    timeout: float = WEBHOOK_TIMEOUT,
) -> Decision:
    """Pick a hub for `device` among `candidates` (the enrollment's enabled hubs)."""
    if not candidates:
        raise AllocationFailed("no-hub", "no enabled hub to allocate this device to: add or enable a hub")
    if policy is Allocation.STATIC:
        if len(candidates) != 1:
            raise PolicyError("static-hubs", "a static allocation names exactly one hub")
        return Decision(candidates[0])
    if policy is Allocation.HASHED:
        return Decision(rendezvous(device, candidates))
    if policy is Allocation.WEIGHTED:
        return Decision(rendezvous(device, candidates, weighted=True))
    if policy is Allocation.LOWEST_LATENCY:
        return Decision(lowest_latency(device, region, candidates))
    if not webhook_url:
        raise PolicyError("allocation-webhook", "custom allocation needs a webhook URL")
    return custom(webhook_url, registration or {"device": device}, candidates, timeout)
