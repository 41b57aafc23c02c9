"""`devid init`: a new home with its store and P-256 CA hierarchy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from devid.authority.setup import init_home, open_authority
from devid.cli.common import HomeOpt, PassphraseOpt, console, home_path
from devid.config import Pkcs11Settings, resolve_passphrase
from devid.errors import ConfigError
from devid.store import repo
from devid.store.engine import make_engine, reading


def init(
    home: HomeOpt = None,
    org: Annotated[str, typer.Option(help="organisation name in CA subjects")] = "devid",
    key_backend: Annotated[str, typer.Option(help="software (encrypted files) or pkcs11 (HSM)")] = "software",
    pkcs11_module: Annotated[str | None, typer.Option(help="PKCS#11 module path")] = None,
    pkcs11_token: Annotated[str | None, typer.Option(help="PKCS#11 token label")] = None,
    pkcs11_pin_file: Annotated[Path | None, typer.Option(help="file holding the token user PIN")] = None,
    db: Annotated[str | None, typer.Option("--db", help="database URL (default: SQLite in the home)")] = None,
    public_url: Annotated[
        str,
        typer.Option(
            "--public-url", help="public base URL where CRLs and OCSP are served; certificates name it"
        ),
    ] = "",
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Create a devid home: config, store (migrated) and the CA hierarchy."""
    passphrase = resolve_passphrase(passphrase_file)
    pkcs11 = None
    if key_backend == "pkcs11":
        if not (pkcs11_module and pkcs11_token and pkcs11_pin_file):
            raise ConfigError(
                "pkcs11-settings",
                "--key-backend pkcs11 needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file",
            )
        pkcs11 = Pkcs11Settings(pkcs11_module, pkcs11_token, str(pkcs11_pin_file.resolve()))
    path = home_path(home)
    created = init_home(
        path,
        org=org,
        passphrase=passphrase,
        db_url=db,
        key_backend=key_backend,
        pkcs11=pkcs11,
        public_url=public_url,
    )
    open_authority(created, passphrase).checkpoint_audit()  # the hierarchy's events, anchored
    engine = make_engine(created.config.db_url)
    with reading(engine) as conn:
        names = [row.name for row in repo.all_cas(conn)]
    console.print(
        f"Created devid home [bold]{escape(str(path))}[/] for {escape(repr(org))} ({key_backend} keys, "
        f"{engine.dialect.name} store): {', '.join(names)}"
    )
