"""`devid api-token`: bearer tokens for the admin API (/api/v1), by role.

Creating a token needs the CA secret (the passphrase, or the PIN of a PKCS#11 home): the store
keeps only its MAC under the authority's credential key, so write access to the store alone cannot
mint a token. Listing and revoking need the store only. Creation and revocation are audited with
actor `cli`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape

from devid.api import tokens
from devid.authority.roles import Role
from devid.cli.common import (
    HomeOpt,
    JsonOpt,
    PassphraseOpt,
    authority,
    console,
    print_json,
    print_table,
    store,
)
from devid.clock import SystemClock
from devid.errors import PolicyError
from devid.store.engine import reading

app = typer.Typer(help="Admin API tokens: create (shown once), list, revoke.", no_args_is_help=True)


@app.command("create")
def create(
    name: str,
    role: Annotated[Role, typer.Option("--role", help="admin, operator, factory, auditor or gateway")],
    rate_per_minute: Annotated[
        int, typer.Option("--rate-per-minute", help="calls per minute before 429")
    ] = tokens.DEFAULT_RATE_PER_MINUTE,
    expires_days: Annotated[
        int | None, typer.Option("--expires-days", help="days until the token expires (default never)")
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """A new API token. The token is printed once, alone on the last line; only its MAC is stored."""
    if expires_days is not None and expires_days <= 0:
        raise PolicyError("request-token-expiry", "--expires-days must be positive")
    auth = authority(home, passphrase_file)
    now = SystemClock().now()
    try:
        token, info = tokens.create(
            auth,
            name,
            role.value,
            now,
            rate_per_minute=rate_per_minute,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
        )
    finally:
        auth.engine.dispose()
    expiry = f"expires {info.expires_at.isoformat()}" if info.expires_at else "no expiry"
    console.print(
        f"API token {escape(name)} (role {info.role.value}, {info.rate_per_minute}/min, {expiry}); "
        "shown once:",
        highlight=False,
    )
    print(token)


@app.command("list")
def list_(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """API tokens (names, roles, rates, times; never the tokens)."""
    engine = store(home)
    with reading(engine) as conn:
        infos = tokens.list_all(conn, limit=1_000_000)
    engine.dispose()
    if as_json:
        print_json([info.as_json() for info in infos])
        return
    print_table(
        ["name", "role", "rate/min", "created", "expires", "revoked"],
        [
            {
                "name": row["name"],
                "role": row["role"],
                "rate/min": row["rate_per_minute"],
                "created": row["created_at"],
                "expires": row["expires_at"],
                "revoked": row["revoked_at"],
            }
            for row in (info.as_json() for info in infos)
        ],
    )


@app.command("revoke")
def revoke(name: str, home: HomeOpt = None) -> None:
    """Revoke an API token: every server refuses it from its next call."""
    engine = store(home)
    try:
        tokens.revoke(engine, name, SystemClock().now())
    finally:
        engine.dispose()
    console.print(f"API token {escape(name)} revoked", highlight=False)
