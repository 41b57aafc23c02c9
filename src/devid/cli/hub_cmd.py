"""`devid hub`: the named targets (an MQTT endpoint URL, a region, a weight) devices are allocated to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.markup import escape

from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    VersionOpt,
    authority,
    console,
    print_listing,
    print_one,
    print_result,
    store,
)
from devid.cli.options import parse_latencies, with_option_groups
from devid.errors import PolicyError
from devid.registry import hubs
from devid.registry.hubs import HubInfo
from devid.store.engine import reading

app = typer.Typer(help="Hubs: where registered devices are told to connect.", no_args_is_help=True)
COLUMNS = ["name", "url", "region", "weight", "enabled", "latencies", "version"]


@dataclass(frozen=True)
class HubFlags:
    region: Annotated[str | None, typer.Option("--region", help="the hub's region (lowest-latency)")] = None
    weight: Annotated[
        int | None, typer.Option("--weight", help="share of devices under weighted (1-10000)")
    ] = None
    latency: Annotated[
        list[str] | None,
        typer.Option(
            "--latency",
            metavar="REGION=MS",
            help="REGION=MS: latency from devices in REGION; repeat for several",
        ),
    ] = None


def _done(info: HubInfo, verb: str, as_json: bool) -> None:
    print_result(info.to_json(), f"hub {info.name} {verb} (version {info.version})", as_json)


@app.command("create")
@with_option_groups
def create(
    name: str,
    url: Annotated[
        str, typer.Option("--url", help="the endpoint devices connect to, e.g. mqtts://host:8883")
    ],
    flags: HubFlags,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a hub."""
    info = hubs.create(
        authority(home, passphrase_file),
        name,
        url,
        region=flags.region or "",
        weight=flags.weight if flags.weight is not None else 1,
        latencies=parse_latencies(flags.latency),
    )
    _done(info, "created", as_json)


@app.command("update")
@with_option_groups
def update(
    name: str,
    flags: HubFlags,
    url: Annotated[str | None, typer.Option("--url", help="a new endpoint URL")] = None,
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a hub (options not given keep their value; --latency replaces the whole table)."""
    if url is None and flags == HubFlags():
        raise PolicyError("nothing-to-change", f"no change given for hub {name!r}: see --help")
    info = hubs.update(
        authority(home, passphrase_file),
        name,
        url=url,
        region=flags.region,
        weight=flags.weight,
        latencies=parse_latencies(flags.latency) if flags.latency is not None else None,
        version=version,
    )
    _done(info, "updated", as_json)


def _set_enabled(
    name: str, enabled: bool, home: HomeOpt, passphrase_file: PassphraseOpt, as_json: bool
) -> None:
    info = hubs.update(authority(home, passphrase_file), name, enabled=enabled)
    _done(info, "enabled" if enabled else "disabled", as_json)


@app.command("disable")
def disable(
    name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable a hub: no new device is allocated to it."""
    _set_enabled(name, False, home, passphrase_file, as_json)


@app.command("enable")
def enable(
    name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a hub again."""
    _set_enabled(name, True, home, passphrase_file, as_json)


@app.command("remove")
def remove(name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """Delete a hub no device is allocated to (otherwise disable it)."""
    hubs.remove(authority(home, passphrase_file), name)
    console.print(f"hub {escape(name)} removed", highlight=False)


@app.command("list")
def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every hub, in creation order."""
    with reading(store(home)) as conn:
        rows = [h.to_json() for h in hubs.list_all(conn)]
    print_listing(rows, COLUMNS, as_json)


@app.command("show")
def show(name: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """One hub."""
    with reading(store(home)) as conn:
        info = hubs.get(conn, name).to_json()
    print_one(info, as_json)
