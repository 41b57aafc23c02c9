"""`devid agent`: the device side, working from a device folder made by the factory.

A device whose key is in a PKCS#11 token or a TPM authenticates TLS through OpenSSL's pkcs11-provider
or tpm2 provider, which OpenSSL activates only from the configuration named by OPENSSL_CONF when
Python's ssl module is first imported, long before a command runs. So `enroll` and `run` for such a
device write that configuration (devid.keys.p11tls, devid.keys.tpmtls) and re-execute this same
command line with OPENSSL_CONF set: same process id (exec), so supervisors and exit statuses see no
difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from devid.cli.common import console, read_file
from devid.device.agent import SE_PIN_FILE_ENV, DeviceAgent, provider_tls
from devid.errors import ConfigError
from devid.keys.tpmtls import TCTI_ENV

app = typer.Typer(help="The device agent: enroll, renew, fall back, report.", no_args_is_help=True)
DeviceOpt = Annotated[Path, typer.Option("--device", help="device folder made by `devid factory run`")]
SePinOpt = Annotated[
    Path | None,
    typer.Option(
        "--se-pin-file",
        envvar=SE_PIN_FILE_ENV,
        help="PIN file (mode 0600) of the PKCS#11 token holding the device key (pkcs11 elements only)",
    ),
]
SeTctiOpt = Annotated[
    str | None,
    typer.Option(
        "--se-tcti",
        envvar=TCTI_ENV,
        help="the TPM holding the device key, as a tpm2-tss TCTI (tpm elements; default: the factory's)",
    ),
]


def _open(device: Path, se_pin_file: Path | None, se_tcti: str | None, *, tls: bool) -> DeviceAgent:
    """Open the device's agent; it never needs the CA operator's passphrase (a software element is
    sealed with its own device-local key). For a PKCS#11 device that will do TLS, make sure this
    process runs with the OpenSSL configuration that loads the provider for its token or TPM: if it
    did not start with it, re-execute the command line with it set."""
    files = provider_tls(device, se_pin_file, se_tcti)
    if files is None:
        return DeviceAgent.open(device, tls=tls)
    if tls:
        files.prepare()
        env = files.environment()
        if any(os.environ.get(k) != v for k, v in env.items()):
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **env})
    # Started with it: DeviceAgent.open still checks that the provider is really active.
    return DeviceAgent.open(device, se_pin_file=se_pin_file, se_tcti=se_tcti, tls=tls)


class Transport(StrEnum):
    HTTPS = "https"
    COAPS = "coaps"


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
    transport: Annotated[
        Transport,
        typer.Option(
            "--transport",
            help="https: EST over TLS (RFC 7030); coaps: EST over CoAP over DTLS (RFC 9148), "
            "--server coaps://HOST:PORT. Later check-ins use the same.",
        ),
    ] = Transport.HTTPS,
    se_pin_file: SePinOpt = None,
    se_tcti: SeTctiOpt = None,
) -> None:
    """First enrollment: the IDevID proves the device; an LDevID (or session certificate) comes back."""
    scheme = server.split("://", 1)[0] if "://" in server else ""
    if scheme != transport.value:
        raise ConfigError(
            "agent-transport",
            f"--transport {transport.value} needs a {transport.value}:// server URL, not {server!r}",
        )
    agent = _open(device, se_pin_file, se_tcti, tls=True)
    trust = read_file(ca_bundle, "CA bundle") if ca_bundle else (device / "chain.pem").read_bytes()
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
    interval: Annotated[
        float, typer.Option(help="most seconds between check-ins (sooner when something falls due)")
    ] = 60.0,
    se_pin_file: SePinOpt = None,
    se_tcti: SeTctiOpt = None,
) -> None:
    """Check in: renew when due, back off while unreachable, fall back to the IDevID when needed."""
    agent = _open(device, se_pin_file, se_tcti, tls=True)
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
            # Wake when the next renewal, expiry or retry falls due, or after `interval` at most.
            wait = (agent.next_due() - agent.clock.now()).total_seconds()
            await asyncio.sleep(min(interval, max(wait, 1.0)))

    asyncio.run(loop())


@app.command("status")
def status(device: DeviceOpt, se_pin_file: SePinOpt = None, se_tcti: SeTctiOpt = None) -> None:
    """The agent's state: certificates, policy, next renewal, failures."""
    agent = _open(device, se_pin_file, se_tcti, tls=False)
    print(json.dumps(agent.status(), indent=2))
