"""`devid gateway`: the enforcing edge gateway in front of an MQTT broker (`devid.gateway`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from devid.authority.sightings import GATEWAY_NAME
from devid.cli.options import parse_duration
from devid.clock import SystemClock
from devid.config import resolve_passphrase
from devid.errors import PolicyError
from devid.fsutil import read_file
from devid.gateway.formats import AllowlistFormat, FilterFormat
from devid.gateway.ocsp import OcspStatus
from devid.gateway.proxy import FailMode, Gateway, GatewayOptions, serve
from devid.gateway.report import Reporter
from devid.gateway.snapshots import SnapshotFormat, SnapshotKind, SnapshotStatus
from devid.gateway.status import StatusView
from devid.gateway.tls import gateway_context, load_bundle


class StatusMode(StrEnum):
    OCSP = "ocsp"
    ALLOWLIST = "allowlist"
    FILTER = "filter"


def host_port(text: str, what: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PolicyError("address", f"{what} {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def snapshot_format(kind: SnapshotKind) -> SnapshotFormat:
    """The format of `kind` snapshots: devid's signed filter or allowlist."""
    return FilterFormat() if kind is SnapshotKind.FILTER else AllowlistFormat()


def gateway(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to accept device TLS connections on")],
    upstream: Annotated[str, typer.Option("--upstream", help="HOST:PORT of the MQTT broker (plain TCP)")],
    ca_bundle: Annotated[
        Path, typer.Option("--ca-bundle", help="PEM: the root and the CAs that issue device certificates")
    ],
    cert: Annotated[Path, typer.Option("--cert", help="the gateway's own server certificate chain (PEM)")],
    key: Annotated[Path, typer.Option("--key", help="its key (PEM, clear or encrypted with the passphrase)")],
    server: Annotated[
        str,
        typer.Option(
            "--server", help="status URL: the OCSP responder (ocsp), or the base of /filter and /allowlist"
        ),
    ],
    status: Annotated[StatusMode, typer.Option("--status", help="where revocation status comes from")],
    max_staleness: Annotated[
        str, typer.Option("--max-staleness", help="oldest status data judged on (then --fail applies)")
    ] = "10m",
    fail: Annotated[
        FailMode,
        typer.Option("--fail", help="past --max-staleness: closed refuses and cuts, open admits on old data"),
    ] = FailMode.CLOSED,
    events_topic: Annotated[
        str,
        typer.Option("--events-topic", help="MQTT topic on the upstream broker where devid publishes events"),
    ] = "devid/events",
    events: Annotated[
        bool, typer.Option("--events/--no-events", help="take pushed status events from --events-topic")
    ] = True,
    refresh: Annotated[
        str,
        typer.Option(
            "--refresh", help="scheduled status refresh (OCSP: at latest; nextUpdate may be sooner)"
        ),
    ] = "1m",
    status_ca: Annotated[
        list[str] | None,
        typer.Option(
            "--status-ca", help="filter mode: CA whose filter is fetched (repeatable; default operational)"
        ),
    ] = None,
    allowlist: Annotated[
        list[str] | None,
        typer.Option(
            "--allowlist", help="allowlist mode: hub or group whose allowlist is fetched (repeatable)"
        ),
    ] = None,
    ocsp_sha1: Annotated[bool, typer.Option("--ocsp-sha1", help="SHA-1 CertIDs (default SHA-256)")] = False,
    handshake_timeout: Annotated[
        float, typer.Option(min=0.1, help="seconds a client has to complete the TLS handshake")
    ] = 10.0,
    status_file: Annotated[
        Path | None, typer.Option("--status-file", help="JSON status written every tick (and on SIGUSR1)")
    ] = None,
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="passphrase of an encrypted --key")
    ] = None,
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            help="devid's https:// URL: report the certificates sessions presented (devid health's "
            "revoked-still-connected check); needs --report-token-file",
        ),
    ] = None,
    report_token_file: Annotated[
        Path | None,
        typer.Option("--report-token-file", help="file holding an API token of the gateway role (last line)"),
    ] = None,
    report_cacert: Annotated[
        Path | None,
        typer.Option("--report-cacert", help="PEM devid's TLS certificate chains to (default --ca-bundle)"),
    ] = None,
    report_every: Annotated[str, typer.Option("--report-every", help="how often to report")] = "1m",
    name: Annotated[
        str | None,
        typer.Option("--name", help="this gateway's name in reports (default HOSTNAME:LISTEN_PORT)"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="serve Prometheus metrics (admissions, refusals by reason, cuts) at "
            "http://LISTEN_HOST:PORT/metrics",
        ),
    ] = None,
) -> None:
    """Proxy device mTLS connections to an MQTT broker, admitting only certificates that chain to
    --ca-bundle, are valid now and whose signed status is good; cut live sessions that turn bad.
    SIGUSR1 logs a status line; SIGTERM or Ctrl-C stops."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    listen_host, listen_port = host_port(listen, "--listen")
    up_host, up_port = host_port(upstream, "--upstream")
    staleness = parse_duration(max_staleness, "--max-staleness")
    every = parse_duration(refresh, "--refresh")
    password = (
        resolve_passphrase(passphrase_file)
        if passphrase_file is not None or os.environ.get("DEVID_PASSPHRASE")
        else None
    )
    anchors = load_bundle(ca_bundle)
    context = gateway_context(cert, key, anchors, password=password)
    clock = SystemClock()
    view: StatusView
    if status is StatusMode.OCSP:
        view = OcspStatus(server, clock, refresh_every=every, sha1=ocsp_sha1)
    else:
        kind = SnapshotKind(status.value)
        names = (status_ca or ["operational"]) if kind is SnapshotKind.FILTER else (allowlist or [])
        if not names:
            raise PolicyError("gateway-allowlist", "--status allowlist needs --allowlist HUB-OR-GROUP")
        view = SnapshotStatus(kind, names, server, snapshot_format(kind), anchors, clock, refresh_every=every)
    options = GatewayOptions(
        listen_host,
        listen_port,
        up_host,
        up_port,
        max_staleness=staleness,
        fail=fail,
        handshake_timeout=handshake_timeout,
        status_file=status_file,
        tick=min(1.0, every.total_seconds()),
        metrics_port=metrics_port,
    )
    reporter = (
        None
        if report is None
        else _reporter(report, report_token_file, report_cacert or ca_bundle, report_every, name, listen_port)
    )
    gw = Gateway(options, context, anchors, view, clock, mode=status.value, reporter=reporter)

    def listening(port: int) -> None:
        typer.echo(f"devid gateway on {listen_host}:{port} -> {up_host}:{up_port} (status {status.value})")
        if gw.metrics_port is not None:
            typer.echo(f"metrics at http://{listen_host}:{gw.metrics_port}/metrics")
        sys.stdout.flush()

    asyncio.run(serve(gw, (up_host, up_port, events_topic) if events else None, listening))
    typer.echo("stopped")


def _reporter(
    url: str, token_file: Path | None, cacert: Path, every: str, name: str | None, listen_port: int
) -> Reporter:
    """The sightings reporter `--report` asks for, its options checked before anything listens."""
    if token_file is None:
        raise PolicyError(
            "gateway-report", "--report needs --report-token-file (an API token of the gateway role)"
        )
    lines = read_file(token_file, "--report-token-file").decode(errors="replace").split()
    if not lines:
        raise PolicyError("gateway-report", f"{token_file} holds no token")
    name = name or f"{socket.gethostname()}:{listen_port}"
    if not GATEWAY_NAME.fullmatch(name):
        raise PolicyError("gateway-name", f"--name {name!r}: 1-128 of letters, digits and . _ : -")
    context = ssl.create_default_context(cadata=read_file(cacert, "--report-cacert").decode(errors="replace"))
    return Reporter(url, lines[-1], context, name, parse_duration(every, "--report-every"))
