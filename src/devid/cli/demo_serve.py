"""`devid demo --serve`: the demo home served on loopback (`devid serve`'s process), with an admin
API token for the dashboard's login written to a 0600 file (never put in a URL or printed) and the
root certificate written where a browser or curl can be told to trust it."""

from __future__ import annotations

import asyncio
import sys

from rich.markup import escape

from devid.api import tokens
from devid.authority.roles import Role
from devid.authority.setup import open_authority
from devid.cli.common import console
from devid.config import Home
from devid.fsutil import atomic_write
from devid.pki.encoding import cert_pem
from devid.server import process
from devid.server.app import RunningServer, make_app
from devid.server.tls import own_server_context

TOKEN_FILE = "dashboard-token"
TRUST_FILE = "root.pem"
HOST = "127.0.0.1"


def serve_dashboard(home: Home, passphrase: bytes, port: int) -> None:
    """Serve `home` on loopback until Ctrl-C (or SIGTERM), the dashboard under /ui."""
    authority = open_authority(home, passphrase)
    try:
        token, _ = tokens.create(
            authority,
            f"demo-dashboard-{authority.clock.now():%Y%m%d%H%M%S}",
            Role.ADMIN.value,
            authority.clock.now(),
            actor="demo",
        )
        token_file = home.path / TOKEN_FILE
        atomic_write(token_file, f"{token}\n".encode(), mode=0o600)
        trust_file = home.path / "tls" / TRUST_FILE
        ctx, _ = own_server_context(authority, home.path / "tls", passphrase, HOST)
        atomic_write(trust_file, cert_pem(authority.root), mode=0o644)

        def listening(running: RunningServer) -> None:
            console.print(f"[bold]dashboard[/]: {running.url}/ui", highlight=False)
            console.print(
                f"log in with the admin API token in {escape(str(token_file))} (mode 0600); the server "
                f"certificate chains to devid's root {escape(str(trust_file))}: import it in the browser "
                f"as a trusted authority, or `curl --cacert {escape(str(trust_file))} "
                f"{running.url}/ui/login`; Ctrl-C stops",
                highlight=False,
            )
            sys.stdout.flush()

        asyncio.run(
            process.serve(make_app(authority), ctx, process.ServeOptions(HOST, port), listening=listening)
        )
    finally:
        authority.close()
    console.print("stopped", highlight=False)
