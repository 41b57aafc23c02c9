"""What `devid group` and `devid enrollment` share: create and update, and the commands that are
the same for both kinds (disable, enable, list, show), registered once per kind."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    print_listing,
    print_one,
    print_result,
    read_file,
    store,
)
from devid.cli.enrollment_opts import SettingsFlags, settings
from devid.errors import PolicyError
from devid.registry import enrollments
from devid.registry.enrollments import EnrollmentInfo, Kind
from devid.store.engine import reading

NOUN = {Kind.GROUP: "group", Kind.INDIVIDUAL: "enrollment"}
COLUMNS = ["name", "enabled", "policy", "lifetime hours", "allocation", "hubs", "reprovision", "version"]
SecondaryOpt = Annotated[
    Path | None,
    typer.Option("--secondary-cert", help="a second signing certificate (PEM/DER), for CA rotation"),
]


def _cert(path: Path | None, what: str) -> bytes | None:
    return None if path is None else read_file(path, what)


def _done(info: EnrollmentInfo, verb: str, as_json: bool) -> None:
    print_result(info.to_json(), f"{NOUN[info.kind]} {info.name} {verb} (version {info.version})", as_json)


def create(
    kind: Kind,
    name: str,
    flags: SettingsFlags,
    home: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
    *,
    signing_cert: Path | None = None,
    secondary_cert: Path | None = None,
    device_cert: Path | None = None,
) -> None:
    info = enrollments.create(
        authority(home, passphrase_file),
        kind,
        name,
        settings(kind, name, flags),
        signing_cert=_cert(signing_cert, "signing certificate"),
        secondary_cert=_cert(secondary_cert, "secondary certificate"),
        device_cert=_cert(device_cert, "device certificate"),
    )
    _done(info, "created", as_json)


def update(
    kind: Kind,
    name: str,
    flags: SettingsFlags,
    version: int | None,
    home: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
    secondary_cert: Path | None = None,
) -> None:
    """Apply the options given over the current settings; the version read (or `--version`) must
    still be current when the change is written, so a concurrent edit is never silently undone."""
    if not flags.given() and secondary_cert is None:
        raise PolicyError("nothing-to-change", f"no change given for {NOUN[kind]} {name!r}: see --help")
    auth = authority(home, passphrase_file)
    with reading(auth.engine) as conn:
        current = enrollments.get(conn, kind, name)
    info = enrollments.update(
        auth,
        kind,
        name,
        settings=settings(kind, name, flags, current.settings) if flags.given() else None,
        secondary_cert=_cert(secondary_cert, "secondary certificate"),
        version=version if version is not None else current.version,
    )
    _done(info, "updated", as_json)


def add_shared_commands(app: typer.Typer, kind: Kind) -> None:
    """`disable`, `enable`, `list` and `show` for enrollments of `kind`."""
    noun = NOUN[kind]

    def set_enabled(
        name: str, enabled: bool, home: Path | None, passphrase: Path | None, as_json: bool
    ) -> None:
        info = enrollments.update(authority(home, passphrase), kind, name, enabled=enabled)
        _done(info, "enabled" if enabled else "disabled", as_json)

    @app.command(
        "disable", help=f"Disable a {noun}: its devices are refused registration and renewal at once."
    )
    def disable(
        name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
    ) -> None:
        set_enabled(name, False, home, passphrase_file, as_json)

    @app.command("enable", help=f"Enable a {noun} again.")
    def enable(
        name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
    ) -> None:
        set_enabled(name, True, home, passphrase_file, as_json)

    @app.command("list", help=f"Every {noun}, in creation order.")
    def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        with reading(store(home)) as conn:
            rows = [e.to_json() for e in enrollments.list_all(conn, kind)]
        print_listing(rows, COLUMNS, as_json)

    @app.command("show", help=f"One {noun}: its settings, certificates and version.")
    def show(name: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        with reading(store(home)) as conn:
            info: dict[str, Any] = enrollments.get(conn, kind, name).to_json()
        print_one(info, as_json)
