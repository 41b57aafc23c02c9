"""`devid demo`: the main job end to end on the embedded default store."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.x509 import verification
from rich.markup import escape

from devid.authority.core import Authority
from devid.authority.policy import DEFAULT_LABELS
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.cli.common import HomeOpt, console
from devid.cli.demo_serve import serve_dashboard
from devid.cli.factory_cmd import print_summary, run_with_progress
from devid.cli.revocation_cmd import report_rows
from devid.config import CONFIG_FILE, Home, default_home, refuse_non_directory, resolve_passphrase
from devid.errors import ConflictError, DevidError
from devid.factory.line import RunSpec, next_serials
from devid.factory.secure_elements import SecureElementSpec
from devid.factory.station import IDEVID_FILE, LineInfo
from devid.pki.encoding import load_certificates
from devid.pki.reasons import Reason
from devid.report.demo import (
    REPORT_DIR,
    DemoRecord,
    LotRevocation,
    Step,
    simulation_section,
    snapshot,
    write_report,
)
from devid.revocation.publisher import Publisher
from devid.sim.compare import compare
from devid.sim.onboarding import onboard, onboard_contract_fleet, short_lived_field
from devid.sim.plots import write_plots
from devid.ui.html import Markup

DEMO_PASSPHRASE_FILE = "demo-passphrase"
#: The organisation of a demo home: `--fresh` deletes a home only if it is one.
DEMO_ORG = "devid demo"
#: Where the demo home's certificates say their status is published (`devid serve --http-port 8080`):
#: with a public URL, CRLs are partitioned into shards, which the lot revocation step measures.
DEMO_PUBLIC_URL = "http://127.0.0.1:8080"
DEMO_LOT = "lot-demo"


class DemoFailed(DevidError):
    """A step of the demo did not do what it must."""


def _passphrase(path: Path) -> bytes:
    """$DEVID_PASSPHRASE if set; else the demo's own passphrase file inside the demo home, said aloud."""
    if os.environ.get("DEVID_PASSPHRASE"):
        return resolve_passphrase(None)
    file = path / DEMO_PASSPHRASE_FILE
    if not file.exists():
        path.mkdir(parents=True, exist_ok=True)
        file.write_text(secrets.token_urlsafe(24))
        file.chmod(0o600)
        console.print(
            f"[yellow]demo:[/] no DEVID_PASSPHRASE set, so the demo made its own passphrase file "
            f"{escape(str(file))} (a real home never does this: `devid init` refuses to run without one)"
        )
    return resolve_passphrase(file)


def verify_idevids(home_path: Path, out_dir: Path, serials: list[str]) -> int:
    """Path-validate every IDevID against the root alone, with cryptography's RFC 5280 verifier."""
    bundle = load_certificates((out_dir / serials[0] / "chain.pem").read_bytes()) if serials else []
    root, intermediates = bundle[-1], bundle[:-1]
    verifier = verification.PolicyBuilder().store(verification.Store([root])).build_client_verifier()
    verified = 0
    for serial in serials:
        pem = (out_dir / serial / IDEVID_FILE).read_bytes()
        leaf = x509.load_pem_x509_certificate(pem)
        verifier.verify(leaf, intermediates)
        verified += 1
    return verified


class Steps:
    """The demo's steps as it prints them, kept for the report."""

    def __init__(self) -> None:
        self.done: list[Step] = []

    def record(self, title: str, text: str) -> None:
        """A step that printed its own lines (the factory's progress and summary)."""
        self.done.append(Step(title, text))

    def say(self, title: str, text: str) -> None:
        self.record(title, text)
        console.print(f"[bold]{len(self.done)}. {escape(title)}[/]: {escape(text)}", highlight=False)


def demo(
    home: HomeOpt = None,
    devices: Annotated[int, typer.Option("--devices", min=1, help="devices to provision")] = 1000,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    contract_devices: Annotated[
        int, typer.Option("--contract-devices", min=1, help="devices of the contract manufacturer")
    ] = 200,
    short_share: Annotated[
        float,
        typer.Option("--short-share", min=0.0, max=0.9, help="share of the fleet on the short-lived policy"),
    ] = 0.1,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="delete the home of an earlier demo run first")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="then serve the home with its dashboard until Ctrl-C")
    ] = False,
    port: Annotated[int, typer.Option("--port", help="with --serve: TCP port (0: any free port)")] = 8443,
    sim_devices: Annotated[
        int, typer.Option("--sim-devices", min=1, help="devices in the simulated strategy comparison")
    ] = 1_000,
    sim_years: Annotated[float, typer.Option("--sim-years", help="years of the simulated comparison")] = 10.0,
) -> None:
    """Make a new home, run the factory, verify every IDevID, enroll over EST under two renewal
    policies, onboard a contract manufacturer's fleet, check the audit chain, revoke the lot, and
    write an HTML report; with --serve, then serve the dashboard.

    The demo always starts from a new home: it refuses a home that exists (its figures would mix
    with the earlier run's devices) unless --fresh, which deletes an earlier demo's home first.
    """
    path = (home or default_home()).resolve()
    refuse_non_directory(path)
    if (path / CONFIG_FILE).exists():
        if not fresh:
            raise ConflictError(
                "demo-home-exists",
                f"{path} already holds a devid home; the demo starts from a new one: pass --fresh to "
                "delete an earlier demo's home and start again, or --home NEW_FOLDER",
            )
        if Home.load(path).config.org != DEMO_ORG:
            raise ConflictError(
                "demo-home-not-demo", f"{path} is not a home the demo made; --fresh deletes only those"
            )
        shutil.rmtree(path)
        console.print(f"[bold]0. fresh[/]: deleted the earlier demo home {escape(str(path))}")
    passphrase = _passphrase(path)
    steps = Steps()
    init_home(path, org=DEMO_ORG, passphrase=passphrase, public_url=DEMO_PUBLIC_URL)
    steps.say(
        "init",
        f"new home {path} with root, manufacturing, operational CAs and OCSP signers (P-256, encrypted at "
        "rest, SQLite store)",
    )
    home_obj = Home.load(path)
    out_dir = path / "devices"
    serials = next_serials(home_obj, "DEMO", devices, None)
    spec = RunSpec(
        path,
        passphrase,
        LineInfo("demo-line", "demo-sensor", DEMO_LOT),
        SecureElementSpec("software"),
        out_dir,
    )
    console.print(
        f"[bold]2. factory[/]: provisioning {devices} devices ({serials[0]} .. {serials[-1]}) "
        f"with {workers} station processes"
    )
    manifest = out_dir / "manifest.jsonl"
    summary = run_with_progress(spec, serials, workers, manifest, "factory")
    print_summary(summary, manifest)
    steps.record(
        "factory",
        f"{summary.devices} devices ({serials[0]} .. {serials[-1]}) provisioned in lot {DEMO_LOT} with "
        f"{workers} station processes: key in the secure element, IDevID from the manufacturing CA, "
        f"{summary.failures} failures, line rate {summary.rate:,.0f} devices/s",
    )
    ok_serials = [s for s in serials if s not in {f.serial for f in summary.failed}]
    verified = verify_idevids(path, out_dir, ok_serials)
    steps.say(
        "verify",
        f"{verified}/{len(ok_serials)} IDevIDs path-validate to the root (RFC 5280, cryptography's verifier)",
    )
    if summary.failures or verified != devices:
        raise DemoFailed("demo-failed", f"{summary.failures} devices failed on the line")
    short_count = int(len(ok_serials) * short_share)
    renewing, short = ok_serials[short_count:], ok_serials[:short_count]
    field = asyncio.run(onboard(home_obj, passphrase, [out_dir / s for s in renewing]))
    steps.say(
        "onboarding (renew policy)",
        f"EST server at {field.url}; {field.enrolled} devices enrolled LDevIDs (one year) over mTLS with "
        f"their IDevIDs, then {field.renewed} of them renewed with their LDevIDs at their renewal time "
        f"(simulated clock) in {field.seconds:.1f} s; {field.verified} LDevIDs path-validate through the "
        "operational CA",
    )
    if field.enrolled != len(renewing) or field.verified != len(renewing) or field.errors:
        raise DemoFailed("demo-failed", f"onboarding incomplete: {field.errors}")
    if short:
        spell = asyncio.run(short_lived_field(home_obj, passphrase, [out_dir / s for s in short]))
        steps.say(
            "onboarding (short-lived policy)",
            f"{spell.enrolled} devices enrolled on EST label {spell.label!r} ({spell.lifetime_days:g}-day "
            f"LDevIDs); at their renewal time {spell.renewed} renewed with their LDevIDs; offline past "
            f"their LDevID's expiry: {spell.offline}, of which {spell.fallback} came back and re-enrolled "
            f"with their IDevID (simulated clock, {spell.seconds:.1f} s)",
        )
        if spell.errors or spell.renewed + spell.fallback != spell.enrolled:
            raise DemoFailed("demo-failed", f"short-lived renewals incomplete: {list(spell.errors)}")
    contract = asyncio.run(onboard_contract_fleet(home_obj, passphrase, contract_devices))
    steps.say(
        "fleet onboarding",
        f"contract manufacturer CA {contract.manufacturer!r} (made outside devid) registered with proof of "
        f"possession; {contract.registered} of its devices registered just in time over EST and were "
        f"allocated by group {contract.group!r} (hashed): "
        + ", ".join(f"{hub} {count}" for hub, count in (contract.per_hub or {}).items())
        + f"; with the group disabled a new device is refused (403): {contract.blocked_when_disabled}"
        f" ({contract.seconds:.1f} s)",
    )
    if contract.registered != contract_devices or not contract.blocked_when_disabled:
        raise DemoFailed("demo-failed", "fleet onboarding of the contract manufacturer did not complete")
    with open_authority(home_obj, passphrase) as anchoring:
        anchoring.checkpoint_audit()  # none when the EST server's shutdown already anchored the head
        chain = anchoring.verify_audit()
    if not chain.ok or chain.unanchored:
        raise DemoFailed("demo-failed", f"the audit chain does not verify: {chain.reason}")
    steps.say(
        "audit",
        f"the chain's {chain.events} events verify and are anchored by {chain.checkpoints} checkpoints "
        "signed with the home's audit key",
    )
    with open_authority(home_obj, passphrase) as revoking:
        before = snapshot(revoking)
        lot = _revoke_lot(revoking, steps)
        revoking.checkpoint_audit()
        after = snapshot(revoking)
    simulation = _compare_strategies(steps, sim_devices, sim_years, path / REPORT_DIR)
    report = write_report(DemoRecord(path, tuple(steps.done), before, after, lot, chain, simulation))
    console.print(
        f"[bold green]demo complete[/]: {devices} devices provisioned at {summary.rate:,.0f} devices/s "
        "(line rate), "
        f"enrolled and renewed over EST under two policies, {contract_devices} contract devices onboarded; "
        f"try `devid cert list --home {escape(str(path))} --limit 5` or "
        f"`devid audit verify --home {escape(str(path))}{_passphrase_hint(path)}`"
    )
    console.print(f"[bold]report[/]: {escape(str(report))}", highlight=False)
    if serve:
        serve_dashboard(home_obj, passphrase, port)


def _compare_strategies(steps: Steps, devices: int, years: float, out: Path) -> Markup:
    """Step 9: the four renewal strategies on a simulated fleet (modelled issuance), for the report."""
    comparison = compare(devices, years, seed=1)
    plots = write_plots(comparison, out / "simulation")
    rows = {r["strategy"]: r for r in comparison.rows()}
    long, short, session = rows["long-lived"], rows["short-lived"], rows["session"]
    steps.say(
        "strategies",
        f"{devices:,} simulated devices over {years:g} years on a daily link, once per renewal strategy "
        f"({comparison.seconds:.1f} s): long-lived lost {long['lost_device_days']:,.0f} device-days of "
        f"identity once its {DEFAULT_LABELS['long'].lifetime.days // 365}-year certificates expired; renew, "
        f"short-lived and session lost none; short-lived costs {short['cert_kb_per_device_year']:g} KB a "
        f"device-year but no CRL, session {session['cert_kb_per_device_year']:,.0f} KB and a CA "
        f"{session['ca_mean_per_hour'] / max(rows['renew']['ca_mean_per_hour'], 0.1):,.0f} times busier "
        "than renew; details and plots in the report (`devid sim compare` for your own fleet)",
    )
    return simulation_section(comparison.rows(), plots)


def _revoke_lot(authority: Authority, steps: Steps) -> LotRevocation:
    """Step 8: revoke the production lot (keyCompromise), publish, and say what it costs to tell devices."""
    request = RevokeRequest(Selector.LOT, DEMO_LOT, Reason.KEY_COMPROMISE, "demo: a compromised lot")
    result = revoke(authority, request, "demo")
    Publisher(authority).publish()
    rows = report_rows(authority)
    sizes = {row.name: row.bytes for row in rows}
    steps.say(
        "lot revocation",
        f"lot {DEMO_LOT!r} revoked for keyCompromise: {result.devices} devices and {result.certificates} "
        "certificates; CRLs, filters and OCSP answers published at once",
    )
    for ca in result.cas:
        shard = max((b for name, b in sizes.items() if name.startswith(f"crl {ca}/")), default=0)
        console.print(
            f"   {ca}: full CRL {sizes.get(f'crl {ca}', 0):,} B, largest shard CRL {shard:,} B, "
            f"filter {sizes.get(f'filter {ca}', 0):,} B, one OCSP response {sizes.get(f'ocsp {ca}', 0):,} B",
            highlight=False,
        )
    return LotRevocation(
        DEMO_LOT, request.reason.rfc_name, result.devices, result.certificates, tuple(result.cas), tuple(rows)
    )


def _passphrase_hint(path: Path) -> str:
    """The option a command that opens keys needs on a home whose passphrase the demo made."""
    if os.environ.get("DEVID_PASSPHRASE"):
        return ""
    return f" --passphrase-file {escape(str(path / DEMO_PASSPHRASE_FILE))}"
