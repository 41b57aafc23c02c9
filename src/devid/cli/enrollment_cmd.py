"""`devid enrollment`: individual enrollments, which admit one device by serial and override any
group for it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devid.cli import enrollment_common as shared
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, VersionOpt
from devid.cli.enrollment_opts import SettingsFlags
from devid.cli.options import with_option_groups
from devid.registry.enrollments import Kind

app = typer.Typer(help="Individual enrollments: one device, overriding its group.", no_args_is_help=True)


@app.command("create")
@with_option_groups
def create(
    serial: str,
    flags: SettingsFlags,
    device_cert: Annotated[
        Path | None,
        typer.Option("--device-cert", help="pin the enrollment to this IDevID (PEM/DER)"),
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an individual enrollment for the device SERIAL."""
    shared.create(Kind.INDIVIDUAL, serial, flags, home, passphrase_file, as_json, device_cert=device_cert)


@app.command("update")
@with_option_groups
def update(
    serial: str,
    flags: SettingsFlags,
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an individual enrollment's settings (options not given keep their value)."""
    shared.update(Kind.INDIVIDUAL, serial, flags, version, home, passphrase_file, as_json)


shared.add_shared_commands(app, Kind.INDIVIDUAL)
