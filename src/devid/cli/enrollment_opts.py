"""The settings options every enrollment command takes (groups and individual enrollments alike),
and how they become a registry `Settings`: from the defaults on create, over the current ones on
update (an option not given keeps its value)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from devid.authority.policy import RenewalPolicy
from devid.cli.common import read_file
from devid.cli.options import parse_duration, parse_pairs
from devid.errors import PolicyError
from devid.registry.allocation import Allocation
from devid.registry.enrollments import Kind, Reprovision, Settings, make_policy


@dataclass(frozen=True)
class SettingsFlags:
    policy: Annotated[
        RenewalPolicy | None, typer.Option("--policy", help="renewal policy of the devices' LDevIDs")
    ] = None
    lifetime: Annotated[
        str | None,
        typer.Option(
            "--lifetime", metavar="DURATION", help="LDevID lifetime: 30d, 12h, 90m, 2w, 1y (needs a policy)"
        ),
    ] = None
    allocation: Annotated[
        Allocation | None,
        typer.Option("--allocation", help="how devices are allocated to hubs (default hashed)"),
    ] = None
    hub: Annotated[
        list[str] | None,
        typer.Option(
            "--hub",
            metavar="NAME",
            help="a hub devices may be allocated to; repeat for several; --hub '' clears",
        ),
    ] = None
    webhook: Annotated[
        str | None,
        typer.Option("--webhook", metavar="URL", help="custom allocation webhook (http(s) URL); '' clears"),
    ] = None
    reprovision: Annotated[
        Reprovision | None,
        typer.Option("--reprovision", help="when a device comes back through another enrollment"),
    ] = None
    property_: Annotated[
        list[str] | None,
        typer.Option(
            "--property", help="an initial device property KEY=VALUE (a string); repeat for several"
        ),
    ] = None
    properties_json: Annotated[
        Path | None,
        typer.Option(
            "--properties-json", help="a JSON object file: all initial properties (--property adds)"
        ),
    ] = None

    def given(self) -> bool:
        return any(v is not None for v in vars(self).values())


def _properties(flags: SettingsFlags, current: dict[str, Any]) -> dict[str, Any]:
    base = current
    if flags.properties_json is not None:
        try:
            base = json.loads(read_file(flags.properties_json, "properties"))
        except ValueError:
            raise PolicyError("properties-json", f"{flags.properties_json} is not valid JSON") from None
        if not isinstance(base, dict):
            raise PolicyError("properties-json", f"{flags.properties_json} must hold a JSON object")
    return {**base, **parse_pairs(flags.property_, "--property")}


def settings(kind: Kind, name: str, flags: SettingsFlags, current: Settings | None = None) -> Settings:
    """The settings `flags` ask for: over `current` (update) or the defaults (create)."""
    now = current or Settings()
    policy = now.policy
    if flags.policy is not None or flags.lifetime is not None:
        kind_now = now.policy.policy if now.policy else None
        chosen = flags.policy or kind_now
        lifetime = parse_duration(flags.lifetime) if flags.lifetime is not None else None
        if lifetime is None and now.policy is not None and chosen is kind_now:
            lifetime = now.policy.lifetime
        policy = make_policy(f"{kind.value}:{name}", chosen.value if chosen else None, lifetime)
    return Settings(
        policy=policy,
        allocation=flags.allocation or now.allocation,
        hubs=tuple(h for h in flags.hub if h) if flags.hub is not None else now.hubs,
        webhook_url=(flags.webhook or None) if flags.webhook is not None else now.webhook_url,
        reprovision=flags.reprovision or now.reprovision,
        properties=_properties(flags, now.properties),
    )
