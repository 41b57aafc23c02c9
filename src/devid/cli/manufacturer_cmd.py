"""`devid manufacturer`: manufacturer CAs made outside devid, registered with proof of possession."""

from __future__ import annotations

from pathlib import Path
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
    read_file,
    store,
)
from devid.errors import PolicyError
from devid.registry import manufacturers
from devid.registry.manufacturers import CODE_TTL, ManufacturerInfo
from devid.store.engine import reading
from devid.store.states import ManufacturerState

app = typer.Typer(help="Manufacturer CAs: register, activate, deactivate, list.", no_args_is_help=True)
COLUMNS = ["name", "state", "auto register", "auto activate", "subject", "not after", "version"]
HOW_TO = """\
Prove possession of the manufacturer CA's key with a verification certificate whose subject CN is
this code, signed by that key, e.g. with openssl:
  openssl ecparam -name prime256v1 -genkey -noout -out verification.key
  openssl req -new -key verification.key -subj "/CN=CODE" -out verification.csr
  openssl x509 -req -in verification.csr -CA ca.pem -CAkey ca.key -days 1 -out verification.pem
then: devid manufacturer register NAME --ca-cert ca.pem --verification-cert verification.pem
The code is single use and expires in {hours:g} hours:"""


def _done(info: ManufacturerInfo, verb: str, as_json: bool) -> None:
    print_result(
        info.to_json(), f"manufacturer {info.name} {verb} ({info.state}, version {info.version})", as_json
    )


@app.command("register-code")
def register_code(home: HomeOpt = None, passphrase_file: PassphraseOpt = None) -> None:
    """A one-time registration code, alone on the last line, with how to use it."""
    code = manufacturers.create_registration_code(authority(home, passphrase_file), "cli")
    console.print(escape(HOW_TO.format(hours=CODE_TTL.total_seconds() / 3600)), highlight=False)
    print(code)


@app.command("register")
def register(
    name: str,
    ca_cert: Annotated[Path, typer.Option("--ca-cert", help="the manufacturer's CA certificate (PEM/DER)")],
    verification_cert: Annotated[
        Path,
        typer.Option(
            "--verification-cert", help="a certificate with CN = a registration code, signed by the CA"
        ),
    ],
    auto_register: Annotated[
        bool, typer.Option("--auto-register", help="register its devices just in time, on first contact")
    ] = False,
    auto_activate: Annotated[
        bool, typer.Option("--auto-activate", help="such devices start ACTIVE, not PENDING_ACTIVATION")
    ] = False,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a manufacturer CA: accepted only if the verification certificate proves possession
    of its key."""
    info = manufacturers.register(
        authority(home, passphrase_file),
        name,
        read_file(ca_cert, "CA certificate"),
        read_file(verification_cert, "verification certificate"),
        auto_register=auto_register,
        auto_activate=auto_activate,
    )
    _done(info, "registered", as_json)


@app.command("update")
def update(
    name: str,
    auto_register: Annotated[
        bool | None, typer.Option("--auto-register/--no-auto-register", help="just-in-time registration")
    ] = None,
    auto_activate: Annotated[
        bool | None,
        typer.Option("--auto-activate/--no-auto-activate", help="JIT-registered devices start ACTIVE"),
    ] = None,
    version: VersionOpt = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a manufacturer's just-in-time registration settings."""
    if auto_register is None and auto_activate is None:
        raise PolicyError("nothing-to-change", f"no change given for manufacturer {name!r}: see --help")
    info = manufacturers.update_settings(
        authority(home, passphrase_file),
        name,
        auto_register=auto_register,
        auto_activate=auto_activate,
        version=version,
    )
    _done(info, "updated", as_json)


def _set_state(name: str, state: str, home: HomeOpt, passphrase_file: PassphraseOpt, as_json: bool) -> None:
    info = manufacturers.update_settings(authority(home, passphrase_file), name, state=state)
    _done(info, "activated" if state == ManufacturerState.ACTIVE else "deactivated", as_json)


@app.command("activate")
def activate(
    name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
) -> None:
    """Trust the manufacturer's CA again: its devices may authenticate."""
    _set_state(name, ManufacturerState.ACTIVE, home, passphrase_file, as_json)


@app.command("deactivate")
def deactivate(
    name: str, home: HomeOpt = None, passphrase_file: PassphraseOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop trusting the manufacturer's CA: its devices are refused at once."""
    _set_state(name, ManufacturerState.INACTIVE, home, passphrase_file, as_json)


@app.command("list")
def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every registered manufacturer, in registration order."""
    with reading(store(home)) as conn:
        rows = [m.to_json() for m in manufacturers.list_all(conn)]
    print_listing(rows, COLUMNS, as_json)


@app.command("show")
def show(name: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """One manufacturer: its CA and settings."""
    with reading(store(home)) as conn:
        info = manufacturers.get(conn, name).to_json()
    print_one(info, as_json)
