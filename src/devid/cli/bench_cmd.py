"""`devid bench`: measured figures beside same-run baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devid.bench import report
from devid.cli.common import JsonOpt

app = typer.Typer(
    help="Benchmarks; each figure beside a baseline measured in the same run.", no_args_is_help=True
)


@app.command("issue")
def issue(
    n: Annotated[int, typer.Option("--n", min=100, help="certificates per measurement")] = 5000,
    db: Annotated[
        str | None, typer.Option("--db", help="empty database URL (default: SQLite in a temp home)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """IDevIDs/s through the authority (store writes included) vs a bare cryptography sign loop."""
    from devid.bench import issue as bench

    report(bench.run(n, db), as_json)


@app.command("factory")
def factory(
    n: Annotated[int, typer.Option("--n", min=10, help="devices with the software secure element")] = 10000,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    pkcs11_n: Annotated[
        int, typer.Option("--pkcs11-n", min=0, help="devices with a SoftHSM2 secure element (0: skip)")
    ] = 200,
    softhsm_module: Annotated[Path, typer.Option(help="SoftHSM2 PKCS#11 module")] = Path(
        "/usr/lib/softhsm/libsofthsm2.so"
    ),
    as_json: JsonOpt = False,
) -> None:
    """The full factory flow in devices/s (software SE on N devices, SoftHSM2 SE on --pkcs11-n)."""
    from devid.bench import factory as bench
    from devid.keys.softhsm import temporary_token

    if pkcs11_n and softhsm_module.exists():
        with temporary_token(softhsm_module, "devid-bench-se") as token:
            report(bench.run(n, workers, pkcs11_n, token), as_json)
    else:
        report(bench.run(n, workers), as_json)


@app.command("tpm")
def tpm(
    n: Annotated[int, typer.Option("--n", min=10, help="keys and devices per backend")] = 100,
    handshakes: Annotated[
        int, typer.Option("--handshakes", min=5, help="mTLS handshakes with the TPM key (10x with software)")
    ] = 20,
    tcti: Annotated[
        str | None,
        typer.Option("--tcti", help="measure this TPM, a tpm2-tss TCTI (default: a swtpm for the run)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """TPM secure element: keys/s and devices/s at the factory, mTLS handshakes/s, beside software keys."""
    from devid.bench import tpm as bench

    report(bench.run(n, handshakes, tcti), as_json)


@app.command("est")
def est(
    clients: Annotated[int, typer.Option("--clients", min=1, help="concurrent EST clients")] = 16,
    n: Annotated[int, typer.Option("--n", min=10, help="enrollments per mode")] = 2000,
    fresh_connections: Annotated[
        bool, typer.Option("--fresh-connections", help="only: a new TLS connection per enrollment")
    ] = False,
    keep_alive: Annotated[bool, typer.Option("--keep-alive", help="only: reuse connections")] = False,
    server: Annotated[str | None, typer.Option("--server", help="measure this EST server instead")] = None,
    ca_bundle: Annotated[Path | None, typer.Option(help="trust anchor of --server")] = None,
    client_cert: Annotated[
        Path | None, typer.Option(help="client certificate chain PEM for --server")
    ] = None,
    client_key: Annotated[Path | None, typer.Option(help="client key PEM for --server")] = None,
    label: Annotated[str, typer.Option(help="EST label (with --server)")] = "",
    server_workers: Annotated[
        int,
        typer.Option(
            "--server-workers", min=1, help="`devid serve --workers` of the server it starts (default: 2)"
        ),
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Full mTLS simpleenroll round trips: enrollments/s and p50/p99, both connection modes by default."""
    from devid.bench import est as bench
    from devid.errors import ConfigError

    modes = [m for m, on in (("fresh", fresh_connections), ("keep-alive", keep_alive)) if on] or [
        "fresh",
        "keep-alive",
    ]
    if server:
        if not (ca_bundle and client_cert and client_key):
            raise ConfigError("bench-est", "--server needs --ca-bundle, --client-cert and --client-key")
        report(
            bench.run_remote(server, ca_bundle, client_cert, client_key, clients, n, modes, label), as_json
        )
    else:
        report(bench.run_local(clients, n, modes, server_workers), as_json)


@app.command("coaps")
def coaps(
    clients: Annotated[int, typer.Option("--clients", min=1, help="concurrent devices")] = 8,
    n: Annotated[int, typer.Option("--n", min=10, help="enrollments per protocol")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """EST-coaps enrollments/s over DTLS (a full handshake each) beside EST over HTTPS in the same
    run, and bytes on the wire per enrollment for both."""
    from devid.bench import coaps as bench

    report(bench.run(clients, n), as_json)


@app.command("scep")
def scep(
    clients: Annotated[int, typer.Option("--clients", min=1, help="concurrent devices")] = 8,
    n: Annotated[int, typer.Option("--n", min=10, help="enrollments per protocol")] = 200,
    p256: Annotated[
        bool, typer.Option("--p256", help="P-256 device keys (answered by key agreement), not RSA-2048")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """SCEP enrollments/s (PKCSReq with an enrollment secret, on a label opted into RSA; RSA-2048
    or P-256 device keys) beside EST enrollments/s against the same server in the same run."""
    from devid.bench import scep as bench

    report(bench.run(clients, n, p256), as_json)


@app.command("onboard")
def onboard(
    n: Annotated[
        int, typer.Option("--n", min=50, help="devices onboarded (and baseline enrollments)")
    ] = 1000,
    clients: Annotated[int, typer.Option("--clients", min=1, help="concurrent devices")] = 16,
    server_workers: Annotated[int, typer.Option("--server-workers", min=1, help="devid serve processes")] = 2,
    skew_devices: Annotated[
        int, typer.Option("--skew-devices", min=100, help="devices in the allocation-skew figures")
    ] = 100_000,
    hubs: Annotated[
        int, typer.Option("--hubs", min=2, help="hubs (one more is added for the moved share)")
    ] = 10,
    as_json: JsonOpt = False,
) -> None:
    """JITR + enrollment group + allocation + EST enroll in devices/s beside bare EST enrollment,
    and the hashed allocation's skew and moved share when a hub is added (beside hash mod n)."""
    from devid.bench import onboard as bench

    report(bench.run(n, clients, server_workers, skew_devices, hubs), as_json)


@app.command("slowdrip")
def slowdrip(
    connections: Annotated[
        int, typer.Option("--connections", min=1, help="slow-drip TLS connections the attacker holds")
    ] = 600,
    addresses: Annotated[
        int,
        typer.Option(
            "--addresses", min=1, max=60000, help="loopback addresses they come from (127.0.0.2 ...)"
        ),
    ] = 20,
    n: Annotated[int, typer.Option("--n", min=10, help="enrollments measured with and without")] = 100,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="seconds between two bytes of a connection")
    ] = 2.0,
    hold: Annotated[
        float,
        typer.Option(
            "--hold", min=1, help="seconds of attack (longer than the server's 10 s header deadline)"
        ),
    ] = 15.0,
    server_workers: Annotated[
        int, typer.Option("--server-workers", min=1, help="`devid serve --workers` of the server it starts")
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Slow-drip connections against `devid serve`: connections held, a device's enrollment latency
    during the attack beside without it, and the server workers' memory growth."""
    from devid.bench import slowdrip as bench

    report(bench.run(connections, addresses, n, server_workers, interval, hold), as_json)


@app.command("revocation")
def revocation(
    only: Annotated[
        str, typer.Option("--only", help="comma-separated sections: ocsp,compact,filter,crl,mass,gateway")
    ] = "ocsp,compact,filter,crl,mass,gateway",
    quick: Annotated[bool, typer.Option("--quick", help="small sizes: a smoke run in seconds")] = False,
    crl_revoked: Annotated[
        str | None,
        typer.Option("--crl-revoked", help="revoked counts of the full CRLs (default 10000,1000000)"),
    ] = None,
    mass: Annotated[
        int | None, typer.Option("--mass", min=1, help="devices of the lot revoked at once (default 100000)")
    ] = None,
    gateway_revoked: Annotated[
        int | None,
        typer.Option(
            "--gateway-revoked", min=1, help="revocations the gateway's filter holds (default 300000)"
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="an empty database URL (PostgreSQL) to measure the mass revocation on too"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """OCSP responses/s, compact (COSE) status answers beside OCSP's, filter size, full CRL build
    time and size, mass revocation to every status channel, gateway admission rate, revocation cut
    and memory; each beside a same-run baseline."""
    from dataclasses import replace

    from devid.bench import revocation as bench

    sizes = bench.QUICK if quick else bench.Sizes()
    if crl_revoked is not None:
        sizes = replace(sizes, crl_revoked=tuple(int(n) for n in crl_revoked.split(",")))
    if mass is not None:
        sizes = replace(sizes, mass_devices=mass)
    if gateway_revoked is not None:
        sizes = replace(sizes, gateway_revoked=gateway_revoked, gateway_issued=10 * gateway_revoked)
    for figures in bench.run(bench.parse_sections(only), sizes, db):
        report(figures, as_json)


@app.command("sim")
def sim(
    devices: Annotated[int, typer.Option("--devices", min=1, help="simulated devices")] = 100_000,
    years: Annotated[float, typer.Option("--years", help="simulated years")] = 10.0,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="processes (default: cores)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Wall time of `devid sim compare` (modelled issuance, all four strategies) and the simulator's
    rate beside the same simulator with real issuance."""
    from devid.bench.sim import sim_figures

    report(sim_figures(devices, years, workers), as_json)


@app.command("soak")
def soak(
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, help="how long the paced soak runs")] = 60.0,
    clients: Annotated[int, typer.Option("--clients", min=1, help="client threads, one device each")] = 8,
    workers: Annotated[int, typer.Option("--workers", min=1, help="devid serve worker processes")] = 2,
    calibrate: Annotated[
        float, typer.Option("--calibrate", min=1.0, help="seconds of unpaced traffic that measure capacity")
    ] = 15.0,
    every: Annotated[float, typer.Option("--every", min=0.5, help="seconds between process samples")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Mixed traffic (enroll, re-enroll, OCSP, token, revoke, gateway connects) at half the capacity
    measured first: throughput and p99 beside it, errors, and per devid process the slope of resident
    memory and open descriptors per hour (flat: no leak)."""
    from devid.bench.soak import run

    report(run(minutes, clients, workers, calibrate, every), as_json)


@app.command("ui")
def ui(
    devices: Annotated[
        int, typer.Option("--devices", min=100, help="devices, and certificates, in the store")
    ] = 1_000_000,
    as_json: JsonOpt = False,
) -> None:
    """Every dashboard page's median and p95 latency on a filled store, beside the scan it replaced."""
    from devid.bench import ui as bench

    report(bench.run(devices), as_json)


@app.command("c509")
def c509(as_json: JsonOpt = False) -> None:
    """C509 bytes beside DER bytes for every profile devid issues (and the cacerts chain), and the
    codec's decode rate beside cryptography's DER load."""
    from devid.bench import c509 as bench

    report(bench.run(), as_json)
