"""`devid group`: enrollment groups, which admit every device whose IDevID chains to a signing
certificate (Azure DPS's model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devid.cli import enrollment_common as shared
from devid.cli.common import HomeOpt, JsonOpt, PassphraseOpt, VersionOpt
from devid.cli.enrollment_opts import SettingsFlags
from devid.cli.options import with_option_groups
from devid.registry.enrollments import Kind

app = typer.Typer(help="Enrollment groups: admit devices by signing certificate.", no_args_is_help=True)


@app.command("create")
@with_option_groups
def create(
    name: str,
    signing_cert: Annotated[
        Path,
        typer.Option(
            "--signing-cert",
            help="the CA (PEM/DER) whose devices the group admits: devid's manufacturing CA, a "
            "registered manufacturer CA, or a CA under one",
        ),
    ],
    flags: SettingsFlags,
    secondary_cert: shared.SecondaryOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an enrollment group."""
    shared.create(
        Kind.GROUP,
        name,
        flags,
        home,
        passphrase_file,
        as_json,
        signing_cert=signing_cert,
        secondary_cert=secondary_cert,
    )


@app.command("update")
@with_option_groups
def update(
    name: str,
    flags: SettingsFlags,
    secondary_cert: shared.SecondaryOpt = None,
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a group's settings (options not given keep their value) or its secondary certificate."""
    shared.update(Kind.GROUP, name, flags, version, home, passphrase_file, as_json, secondary_cert)


shared.add_shared_commands(app, Kind.GROUP)
