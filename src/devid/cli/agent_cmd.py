"""`devid agent`: the device side, working from a device folder made by the factory."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from devid.cli.common import PassphraseOpt, console
from devid.config import resolve_passphrase
from devid.device.agent import DeviceAgent
from devid.errors import ConfigError

app = typer.Typer(help="The device agent: enroll, renew, fall back, report.", no_args_is_help=True)
DeviceOpt = Annotated[Path, typer.Option("--device", help="device folder made by `devid factory run`")]


@app.command("enroll")
def enroll(
    device: DeviceOpt,
    server: Annotated[str, typer.Option("--server", help="EST server base URL, e.g. https://127.0.0.1:8443")],
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", help="PEM trust anchors for the server (default: the device's own chain root)"
        ),
    ] = None,
    label: Annotated[str, typer.Option("--label", help="EST label (renewal policy)")] = "",
    passphrase_file: PassphraseOpt = None,
) -> None:
    """First enrollment: the IDevID proves the device; an LDevID (or session certificate) comes back."""
    agent = DeviceAgent.open(device, resolve_passphrase(passphrase_file))
    trust = ca_bundle.read_bytes() if ca_bundle else (device / "chain.pem").read_bytes()
    enrolled = asyncio.run(agent.enroll(server, trust, label))
    console.print(
        f"enrolled {agent.serial}: {enrolled.policy or 'ldevid'} certificate serial "
        f"{enrolled.certificate.serial_number:x}, renew at {enrolled.renew_at or 'never'}",
        highlight=False,
    )


@app.command("run")
def run(
    device: DeviceOpt,
    once: Annotated[bool, typer.Option("--once", help="one check-in, then exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between check-ins")] = 60.0,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Check in: renew when due, back off while unreachable, fall back to the IDevID when needed."""
    agent = DeviceAgent.open(device, resolve_passphrase(passphrase_file))
    if agent.state is None:
        raise ConfigError("agent-not-enrolled", f"{device} is not enrolled: run `devid agent enroll` first")

    async def loop() -> None:
        while True:
            outcome = await agent.check_in()
            console.print(f"{datetime.now():%H:%M:%S} {agent.serial}: {outcome}", highlight=False)
            if once:
                if outcome.startswith("error"):
                    raise typer.Exit(1)  # a supervisor or cron job must see a failed check-in
                return
            await asyncio.sleep(interval)

    asyncio.run(loop())


@app.command("status")
def status(device: DeviceOpt, passphrase_file: PassphraseOpt = None) -> None:
    """The agent's state: certificates, policy, next renewal, failures."""
    agent = DeviceAgent.open(device, resolve_passphrase(passphrase_file))
    print(json.dumps(agent.status(), indent=2))
