"""`devid serve`: the EST server (and session tokens, the admin API) over TLS, EST-coaps over DTLS
with `--coaps-port`, with graceful shutdown, and the registry-event dispatcher in the background
(`devid.server.process`); with `--workers N` (N > 1) several processes on one port, kept running
(`devid.server.supervisor`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from devid.authority.setup import open_authority
from devid.cli.common import HomeOpt, PassphraseOpt, console, err_console, load_home
from devid.coap.dtls import DtlsIdentity
from devid.config import check_public_url, resolve_passphrase
from devid.errors import ConfigError
from devid.server import process
from devid.server.app import make_app
from devid.server.listener import ConnectionLimits
from devid.server.supervisor import Supervisor, WorkerSpec
from devid.server.tls import (
    ServerCertificate,
    client_trust,
    ensure_server_certificate,
    given_server_certificate,
    server_context,
    server_names_for,
)

_DEFAULT = ConnectionLimits()


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
    log_json: Annotated[
        bool,
        typer.Option(
            "--log-json",
            help="log as JSON lines on stderr, one per request (time, request id, method, path, "
            "status, duration, peer, device)",
        ),
    ] = False,
    deliver_events: Annotated[
        bool,
        typer.Option(
            "--deliver-events/--no-deliver-events",
            help="deliver registry events to their sinks (one server of the store at a time: a lease)",
        ),
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="server processes sharing the port (SO_REUSEPORT), each restarted if it dies; "
            "on SQLite 2 is the useful most",
        ),
    ] = 1,
    handshake_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds a client has to complete the TLS handshake")
    ] = _DEFAULT.handshake_timeout,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="seconds a client has to send a request's head (from connecting or its first byte)"
        ),
    ] = _DEFAULT.header_timeout,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds a client has to send a request's body after its head")
    ] = _DEFAULT.body_timeout,
    keepalive_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds an idle kept-alive connection stays open")
    ] = _DEFAULT.keepalive_timeout,
    max_per_address: Annotated[
        int,
        typer.Option(
            "--max-per-address",
            min=0,
            help="connections one client address may hold at once (per process; 0: no cap; "
            "trusted proxies are exempt)",
        ),
    ] = _DEFAULT.per_address or 0,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="the deployment's public base URL: issued certificates name <URL>/ocsp and their "
            "CRL under <URL>/crl/ (kept in devid.toml, so the factory and the CLI issue the same)",
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port", help="also serve OCSP, CRLs, filters and allowlists over plain HTTP on this port"
        ),
    ] = None,
    coaps_port: Annotated[
        int | None,
        typer.Option(
            "--coaps-port",
            min=0,
            max=65535,
            help="also serve EST-coaps (RFC 9148: EST over CoAP over DTLS 1.2, client certificates) on "
            "this UDP port (0: any free port, printed on start); with --workers, in the first worker",
        ),
    ] = None,
    publish: Annotated[
        bool,
        typer.Option(
            "--publish/--no-publish",
            help="keep CRLs and filters current (one server of the store at a time: a lease)",
        ),
    ] = True,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Serve EST (RFC 7030) at https://HOST:PORT/.well-known/est over TLS with optional client
    certificates (and EST-coaps, RFC 9148, on --coaps-port). SIGTERM or Ctrl-C stops accepting,
    lets requests in flight finish, and exits 0."""
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("tls-files", "--tls-cert and --tls-key go together")
    passphrase = resolve_passphrase(passphrase_file)
    devid_home = load_home(home)
    if public_url is not None and check_public_url(public_url) != devid_home.config.public_url:
        devid_home.config.public_url = check_public_url(public_url)
        devid_home.save()
        console.print(f"public URL {escape(devid_home.config.public_url)} saved in the home's devid.toml")
    authority = open_authority(devid_home, passphrase)
    for ca in authority.device_issuers():
        _ = ca.key  # a wrong passphrase (or a lost key) stops here, not at the first request
    server: ServerCertificate
    if tls_cert is not None and tls_key is not None:
        server = given_server_certificate(tls_cert, tls_key)
    else:
        dns, ips = server_names_for(host, server_name or [])
        server = ensure_server_certificate(authority, devid_home.path / "tls", passphrase, dns, ips)
    # Built here in every mode: a key that does not open stops the command before any worker starts.
    ctx = server_context(server.cert_file, server.key_file, client_trust(authority), password=passphrase)
    options = process.ServeOptions(
        host,
        port,
        shutdown_timeout,
        access_log,
        deliver_events,
        ConnectionLimits(
            handshake_timeout,
            header_timeout,
            body_timeout,
            keepalive_timeout,
            max_per_address or None,
        ),
        publish_status=publish,
        http_port=http_port,
        log_json=log_json,
        coaps_port=coaps_port,
    )
    if workers > 1:
        authority.close()
        spec = WorkerSpec(
            devid_home.path,
            passphrase,
            server.cert_file,
            server.key_file,
            tuple(trusted_proxy or ()),
            options,
        )
        supervisor = Supervisor(
            spec, workers, say=lambda line: err_console.print(escape(line), highlight=False)
        )

        def listening(bound: int, pids: list[int]) -> None:
            coaps = None if supervisor.coaps_port is None else _url(host, supervisor.coaps_port, "coaps")
            _print_started(_url(host, bound), server, coaps)
            console.print(f"{workers} worker processes (pids {', '.join(map(str, pids))})", highlight=False)
            sys.stdout.flush()

        supervisor.run(listening, _print_stopping)
        console.print("stopped", highlight=False)
        return
    try:
        app = make_app(authority, trusted_proxies=trusted_proxy or [])
        asyncio.run(
            process.serve(
                app,
                ctx,
                options,
                listening=lambda running: _print_started(running.url, server, running.coaps_url),
                stopping=_print_stopping,
                dtls=None
                if coaps_port is None
                else DtlsIdentity.load(server.cert_file, server.key_file, passphrase),
            )
        )
    finally:
        authority.close()
    console.print("stopped", highlight=False)


def _url(host: str, port: int, scheme: str = "https") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _print_started(url: str, server: ServerCertificate, coaps: str | None = None) -> None:
    console.print(f"devid EST server at {url}/.well-known/est", highlight=False)
    console.print(
        f"server certificate ({server.source}, {escape(str(server.cert_file))}) sha256 {server.fingerprint}",
        highlight=False,
    )
    if coaps is not None:
        console.print(f"devid EST-coaps server at {coaps}/.well-known/core", highlight=False)
    sys.stdout.flush()


def _print_stopping() -> None:
    console.print("stopping: finishing requests in flight", highlight=False)
    sys.stdout.flush()
