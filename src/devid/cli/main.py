"""Entry point: assembles the command groups and turns devid errors into one clear line."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from devid.cli import (
    agent_cmd,
    api_token_cmd,
    audit_cmd,
    bench_cmd,
    ca_cmd,
    cert_cmd,
    db_cmd,
    demo_cmd,
    device_cmd,
    enrollment_cmd,
    events_cmd,
    factory_cmd,
    group_cmd,
    hub_cmd,
    init_cmd,
    manufacturer_cmd,
    serve_cmd,
    sim_cmd,
    token_cmd,
)
from devid.cli.common import err_console
from devid.errors import DevidError

app = typer.Typer(
    name="devid",
    help="Device identity for IoT fleets: IDevIDs at the factory, LDevIDs in the field, revocation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("init")(init_cmd.init)
app.command("demo")(demo_cmd.demo)
app.add_typer(ca_cmd.app, name="ca")
app.add_typer(cert_cmd.app, name="cert")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(factory_cmd.app, name="factory")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(token_cmd.app, name="token")
app.command("serve")(serve_cmd.serve)
app.add_typer(device_cmd.app, name="device")
app.add_typer(agent_cmd.app, name="agent")
app.add_typer(db_cmd.app, name="db")
app.add_typer(sim_cmd.app, name="sim")
app.add_typer(events_cmd.app, name="events")
app.add_typer(manufacturer_cmd.app, name="manufacturer")
app.add_typer(group_cmd.app, name="group")
app.add_typer(enrollment_cmd.app, name="enrollment")
app.add_typer(hub_cmd.app, name="hub")
app.add_typer(api_token_cmd.app, name="api-token")


def run() -> None:
    """Console script: a DevidError is reported as `error: <message> [<code>]`, exit status 2."""
    try:
        app()
    except DevidError as exc:
        # Messages quote user input (serials, paths, names): escaped, so `[` is never taken as markup.
        err_console.print(
            f"[bold red]error:[/] {escape(exc.message)} [dim]{escape(f'[{exc.code}]')}[/]", highlight=False
        )
        sys.exit(2)
