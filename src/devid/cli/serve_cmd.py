"""`devid serve`: the EST server (and session tokens) over TLS, with graceful shutdown, and the
registry-event dispatcher in the background (webhooks, MQTT; `devid.registry.delivery`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Annotated

import typer
from aiohttp import web
from rich.markup import escape

from devid.authority.core import ISSUER_OF
from devid.authority.setup import open_authority
from devid.cli.common import HomeOpt, PassphraseOpt, console, load_home
from devid.config import resolve_passphrase
from devid.errors import ConfigError
from devid.registry.delivery import Dispatcher
from devid.web.app import make_app, start_server
from devid.web.tls import (
    ServerCertificate,
    client_trust,
    ensure_server_certificate,
    given_server_certificate,
    server_context,
    server_names_for,
)


def serve(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed on start)")] = 8443,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="server certificate chain PEM (default: devid's own)")
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="server key PEM (clear or passphrase-encrypted)"),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="IP address or network of a TLS-terminating proxy whose X-SSL-Client-Cert header is "
            "believed (repeatable); the header is ignored from anyone else",
        ),
    ] = None,
    server_name: Annotated[
        list[str] | None,
        typer.Option("--server-name", help="extra DNS name or IP for the server certificate (repeatable)"),
    ] = None,
    shutdown_timeout: Annotated[
        float, typer.Option(help="seconds in-flight requests get to finish after SIGTERM")
    ] = 30.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="log each request to stderr")] = False,
    deliver_events: Annotated[
        bool,
        typer.Option(
            "--deliver-events/--no-deliver-events",
            help="deliver registry events to their sinks from this process (one replica is enough)",
        ),
    ] = True,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Serve EST (RFC 7030) at https://HOST:PORT/.well-known/est over TLS with optional client
    certificates. SIGTERM or Ctrl-C stops accepting, lets requests in flight finish, and exits 0."""
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls-files", "--tls-cert and --tls-key go together")
    passphrase = resolve_passphrase(passphrase_file)
    devid_home = load_home(home)
    authority = open_authority(devid_home, passphrase)
    for ca_name in dict.fromkeys(ISSUER_OF.values()):
        if ca_name in authority.cas:
            _ = authority.cas[ca_name].key  # a wrong passphrase stops here, not at the first request
    server: ServerCertificate
    if tls_cert is not None and tls_key is not None:
        server = given_server_certificate(tls_cert, tls_key)
    else:
        dns, ips = server_names_for(host, server_name or [])
        server = ensure_server_certificate(authority, devid_home.path / "tls", passphrase, dns, ips)
    ctx = server_context(server.cert_file, server.key_file, client_trust(authority), password=passphrase)
    app = make_app(authority, trusted_proxies=trusted_proxy or [])
    if access_log:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        dispatcher = Dispatcher(authority.engine) if deliver_events else None
        asyncio.run(_run(app, ctx, host, port, shutdown_timeout, server, access_log, dispatcher))
    finally:
        authority.engine.dispose()


async def _run(
    app: web.Application,
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    shutdown_timeout: float,
    server: ServerCertificate,
    access_log: bool,
    dispatcher: Dispatcher | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_server(
        app,
        ctx,
        host=host,
        port=port,
        shutdown_timeout=shutdown_timeout,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    console.print(f"devid EST server at {running.url}/.well-known/est", highlight=False)
    console.print(
        f"server certificate ({server.source}, {escape(str(server.cert_file))}) sha256 {server.fingerprint}",
        highlight=False,
    )
    sys.stdout.flush()
    # Started after the server listens and stopped after it has drained: events emitted by the
    # last requests still wake it, and whatever is left waits in the outbox for the next start.
    delivering = asyncio.create_task(dispatcher.run()) if dispatcher is not None else None
    await stop.wait()
    console.print("stopping: finishing requests in flight", highlight=False)
    sys.stdout.flush()
    await running.stop()
    if dispatcher is not None and delivering is not None:
        dispatcher.stop()
        await delivering
    console.print("stopped", highlight=False)
