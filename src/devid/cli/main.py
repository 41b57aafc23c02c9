"""Entry point: the command table, loaded lazily, and devid errors turned into one clear line.

`devid --help` and `devid ca list` must start in well under half a second, so a command's module
(and what it imports: aiohttp, Alembic, the device agent...) is imported only when that command
runs; the listing in `devid --help` comes from the table below. Help is Click's plain formatter:
it wraps long option names instead of cutting them at 80 columns as Rich's tables do when piped.
"""

from __future__ import annotations

import importlib
import os
import sys

# Before Typer is first imported: plain help (see above), and Rich stays unimported for --help.
os.environ.setdefault("TYPER_USE_RICH", "0")

from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from devid.errors import DevidError

#: name -> (module, attribute: a Typer app or a command function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("devid.cli.init_cmd", "init", "Create a devid home: config, store and the CA hierarchy."),
    "demo": ("devid.cli.demo_cmd", "demo", "The whole lifecycle on a new home: factory, EST, onboarding."),
    "serve": ("devid.cli.serve_cmd", "serve", "Serve EST, session tokens and the admin API over TLS."),
    "ca": ("devid.cli.ca_cmd", "app", "Inspect the CA hierarchy and export the trust bundle."),
    "cert": ("devid.cli.cert_cmd", "app", "Issue, show and list certificates."),
    "audit": ("devid.cli.audit_cmd", "app", "The hash-chained audit log: verify it, list events."),
    "factory": ("devid.cli.factory_cmd", "app", "Provision devices on a production line."),
    "matter": ("devid.cli.matter_cmd", "app", "Matter attestation: PAA/PAI CAs, verify a DAC chain."),
    "bench": ("devid.cli.bench_cmd", "app", "Benchmarks, each figure beside a baseline from the same run."),
    "token": ("devid.cli.token_cmd", "app", "Session tokens: verify, publish and rotate the signing keys."),
    "device": ("devid.cli.device_cmd", "app", "Manage devices: enrollment secrets, approval, state."),
    "agent": ("devid.cli.agent_cmd", "app", "The device agent: enroll, renew, fall back, report."),
    "db": ("devid.cli.db_cmd", "app", "The store: schema migrations."),
    "store": ("devid.cli.db_cmd", "app", "The store: schema migrations, moving it to PostgreSQL."),
    "sim": ("devid.cli.sim_cmd", "app", "Simulate a fleet of device agents (real TLS, simulated time)."),
    "events": ("devid.cli.events_cmd", "app", "Registry events: list, deliver, manage their sinks."),
    "manufacturer": ("devid.cli.manufacturer_cmd", "app", "Manufacturer CAs: register, activate, list."),
    "group": ("devid.cli.group_cmd", "app", "Enrollment groups: admit devices by signing certificate."),
    "enrollment": ("devid.cli.enrollment_cmd", "app", "Individual enrollments: one device, over its group."),
    "hub": ("devid.cli.hub_cmd", "app", "Hubs: where registered devices are told to connect."),
    "revoke": (
        "devid.cli.revoke_cmd",
        "revoke_command",
        "Revoke certificates: one, a device, lot, model or maker.",
    ),
    "crl": ("devid.cli.crl_cmd", "app", "Certificate revocation lists: build one for publishing."),
    "filter": ("devid.cli.filter_cmd", "app", "Revocation filters: build, check a serial, diff versions."),
    "revocation": ("devid.cli.revocation_cmd", "app", "Revocation at IoT scale: status data sizes per link."),
    "unrevoke": ("devid.cli.revoke_cmd", "unrevoke_command", "Lift a certificateHold."),
    "api-token": ("devid.cli.api_token_cmd", "app", "Admin API tokens: create (shown once), list, revoke."),
    "health": ("devid.cli.health_cmd", "health", "Fleet health checks: expiry, renewal, shared keys."),
    "backup": ("devid.cli.backup_cmd", "backup", "Back up a home as it serves: store, sealed keys, config."),
    "restore": ("devid.cli.backup_cmd", "restore", "Make a new home from a backup (never over a newer one)."),
    "gateway": ("devid.cli.gateway_cmd", "gateway", "mTLS gateway to an MQTT broker: revoked devices cut."),
    "scep": ("devid.cli.scep_cmd", "app", "SCEP: opt a label into RSA device keys, show the RA."),
}


def load_command(name: str) -> Any:
    """Import the module of one command and build its command object (a Typer group or command)."""
    module, attr, short_help = COMMANDS[name]
    target = getattr(importlib.import_module(module), attr)
    if isinstance(target, typer.Typer):
        command: Any = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    command.short_help = short_help
    return command


class LazyGroup(TyperGroup):
    """The top-level group. Its commands are placeholders carrying the one-line help, which is
    all `devid --help` needs; the command a user runs is imported when it is resolved."""

    def __init__(self, *, commands: object = None, **attrs: Any) -> None:
        # Typer passes the commands registered on the app: none, the table stands for them.
        placeholders: dict[str, Any] = {
            name: TyperCommand(name=name, short_help=short) for name, (_, _, short) in COMMANDS.items()
        }
        super().__init__(commands=placeholders, **attrs)

    # Typer vendors Click and keeps its Context type private: hence `Any` for what Click passes.
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        return name, (load_command(name) if name in COMMANDS else command), rest


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"devid {version('devid')}")
        raise typer.Exit()


app = typer.Typer(
    cls=LazyGroup,
    name="devid",
    help="Device identity for IoT fleets: IDevIDs at the factory, LDevIDs in the field, revocation.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["--help", "-h"], "max_content_width": 100},
)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Device identity for IoT fleets: IDevIDs at the factory, LDevIDs in the field, revocation."""


def run() -> None:
    """Console script: a DevidError is reported as `error: <message> [<code>]`, exit status 2."""
    try:
        typer.main.get_group(app).main(prog_name="devid")
    except DevidError as exc:
        # echo drops the colour when stderr is not a terminal; no markup is interpreted.
        typer.echo(f"{typer.style('error:', fg='red', bold=True)} {exc.message} [{exc.code}]", err=True)
        sys.exit(2)
