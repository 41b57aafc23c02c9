"""`devid serve`: the EST server (and session tokens, the admin API) over TLS, with graceful
shutdown, and the registry-event dispatcher in the background (webhooks, MQTT;
`devid.registry.delivery`; with several workers, the first one delivers).

With `--workers N` (N > 1) the command supervises N server processes on one home and one port
(SO_REUSEPORT: the kernel spreads connections over them). Each worker has its own event loop,
authority and group commit; on SQLite the issuing transactions of the workers queue on the store's
write lock file (`devid.store.engine.write_lock`). SIGTERM or Ctrl-C reaches every worker, which
finishes its requests in flight before exiting.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
import signal
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Annotated, Any

import typer
from aiohttp import web
from rich.markup import escape

from devid.authority.core import ISSUER_OF
from devid.authority.setup import open_authority
from devid.cli.common import HomeOpt, PassphraseOpt, console, load_home
from devid.config import resolve_passphrase
from devid.errors import ConfigError, DevidError
from devid.registry.delivery import Dispatcher
from devid.server.app import AUTHORITY, RunningServer, make_app, start_server
from devid.server.tls import (
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
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="server processes sharing the port (SO_REUSEPORT); on SQLite 2 is the useful most",
        ),
    ] = 1,
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
    if workers > 1:
        authority.close()
        spec = _WorkerSpec(
            devid_home.path,
            passphrase,
            server.cert_file,
            server.key_file,
            host,
            port,
            tuple(trusted_proxy or ()),
            shutdown_timeout,
            access_log,
            deliver_events,
        )
        _supervise(spec, workers, server)
        return
    try:
        dispatcher = Dispatcher(authority.engine) if deliver_events else None
        asyncio.run(_run(app, ctx, host, port, shutdown_timeout, server, access_log, dispatcher))
    finally:
        authority.close()


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
    _print_started(running.url, server)
    await _until_stopped(running, stop, dispatcher, announce=True)
    console.print("stopped", highlight=False)


async def _until_stopped(
    running: RunningServer, stop: asyncio.Event, dispatcher: Dispatcher | None, *, announce: bool = False
) -> None:
    """Deliver events while serving until `stop`, then drain. The dispatcher starts after the
    server listens and stops after it has drained: events emitted by the last requests still wake
    it, and whatever is left waits in the outbox for the next start."""
    delivering = asyncio.create_task(dispatcher.run()) if dispatcher is not None else None
    await stop.wait()
    if announce:
        console.print("stopping: finishing requests in flight", highlight=False)
        sys.stdout.flush()
    await running.stop()
    if dispatcher is not None and delivering is not None:
        dispatcher.stop()
        await delivering


def _print_started(url: str, server: ServerCertificate) -> None:
    console.print(f"devid EST server at {url}/.well-known/est", highlight=False)
    console.print(
        f"server certificate ({server.source}, {escape(str(server.cert_file))}) sha256 {server.fingerprint}",
        highlight=False,
    )
    sys.stdout.flush()


# --- several worker processes -------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker process needs to serve (sent to it through a pipe, never argv or environment)."""

    home: Path
    passphrase: bytes
    cert_file: Path
    key_file: Path
    host: str
    port: int
    trusted_proxies: tuple[str, ...]
    shutdown_timeout: float
    access_log: bool
    deliver_events: bool = False


def _worker(spec: _WorkerSpec, events: Any) -> None:
    """One server process: its own authority and event loop; reports ("ready", port) or ("error", text).
    It stops on the SIGTERM its supervisor forwards, and ignores SIGINT (a terminal's Ctrl-C
    reaches the whole process group: the supervisor turns it into that one SIGTERM)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        authority = open_authority(load_home(spec.home), spec.passphrase)
        ctx = server_context(spec.cert_file, spec.key_file, client_trust(authority), password=spec.passphrase)
        app = make_app(authority, trusted_proxies=spec.trusted_proxies)
    except DevidError as exc:
        events.put(("error", exc.message))
        sys.exit(2)
    if spec.access_log:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_serve_worker(app, ctx, spec, events))
    finally:
        authority.close()


async def _serve_worker(app: web.Application, ctx: ssl.SSLContext, spec: _WorkerSpec, events: Any) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        running = await start_server(
            app,
            ctx,
            host=spec.host,
            port=spec.port,
            shutdown_timeout=spec.shutdown_timeout,
            access_log=logging.getLogger("aiohttp.access") if spec.access_log else None,
            reuse_port=True,
        )
    except DevidError as exc:
        events.put(("error", exc.message))
        raise
    events.put(("ready", running.port))
    dispatcher = Dispatcher(app[AUTHORITY].engine) if spec.deliver_events else None
    await _until_stopped(running, stop, dispatcher)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on `host:port`: it fixes the port (0: a free
    one) that every worker then binds, and receives no connection itself."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError("listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _supervise(spec: _WorkerSpec, count: int, server: ServerCertificate) -> None:
    """Start `count` workers on one port, print the start lines once all listen, forward SIGTERM
    and SIGINT to them and wait for their graceful exits; exits non-zero if a worker failed."""
    reserved = _reserve_port(spec.host, spec.port)
    spec = _WorkerSpec(**{**spec.__dict__, "port": int(reserved.getsockname()[1])})
    mp = multiprocessing.get_context("spawn")
    events = mp.Queue()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[BaseProcess] = []
    failed = ""
    try:
        for i in range(count):
            # One dispatcher for the whole server: the first worker's.
            worker_spec = replace(spec, deliver_events=spec.deliver_events and i == 0)
            procs.append(mp.Process(target=_worker, args=(worker_spec, events), name=f"devid-serve-{i}"))
            procs[-1].start()
        ready = 0
        while ready < count and not failed and not stop.is_set():
            try:
                kind, detail = events.get(timeout=0.5)
            except queue.Empty:
                if any(p.exitcode is not None for p in procs):
                    failed = "a worker process exited while starting"
                continue
            if kind == "ready":
                ready += 1
            else:
                failed = str(detail)
        reserved.close()
        if ready == count and not failed:
            host = f"[{spec.host}]" if ":" in spec.host else spec.host
            _print_started(f"https://{host}:{spec.port}", server)
            console.print(f"{count} worker processes", highlight=False)
            sys.stdout.flush()
            while not stop.wait(0.5):
                if any(p.exitcode is not None for p in procs):
                    failed = "a worker process exited"
                    break
        console.print("stopping: finishing requests in flight", highlight=False)
        sys.stdout.flush()
    finally:
        reserved.close()
        for proc in procs:
            if proc.exitcode is None and proc.pid is not None:
                proc.terminate()  # SIGTERM: the worker's graceful shutdown
        for proc in procs:
            proc.join(spec.shutdown_timeout + 10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise ConfigError("serve-workers", failed)
    if any(p.exitcode != 0 for p in procs):
        raise ConfigError("serve-workers", "a worker process did not stop cleanly")
    console.print("stopped", highlight=False)
