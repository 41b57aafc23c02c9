"""`devid factory run`: the reference production line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from devid.authority.requests import MatterIds, check_device_serial
from devid.authority.setup import open_authority
from devid.cli.common import HomeOpt, PassphraseOpt, console, load_home
from devid.config import Home, Pkcs11Settings, resolve_passphrase
from devid.errors import ConfigError, PolicyError
from devid.factory.line import RunSpec, Summary, next_serials, run_line
from devid.factory.secure_elements import SecureElementSpec
from devid.factory.station import Credential, LineInfo
from devid.keys.tpmtls import DEFAULT_TCTI, TCTI_ENV
from devid.pki.matter import parse_id
from devid.pki.profiles import ProfileName

app = typer.Typer(help="Provision devices on a production line.", no_args_is_help=True)
TctiOpt = Annotated[
    str,
    typer.Option(
        "--se-tcti",
        envvar=TCTI_ENV,
        help="TPM of a tpm secure element, as a tpm2-tss TCTI (tabrmd:bus_type=system, swtpm:port=2321...)",
    ),
]


def se_spec(
    home: Home,
    backend: str,
    module: str | None,
    token: str | None,
    pin_file: Path | None,
    tcti: str | None = None,
) -> SecureElementSpec:
    """The line's secure element; a PKCS#11 element defaults to the home's token settings."""
    pkcs11 = None
    if backend == "pkcs11":
        base = home.config.pkcs11
        module = module or (base.module if base else None)
        token = token or (base.token if base else None)
        pin = str(pin_file.resolve()) if pin_file else (base.pin_file if base else None)
        if not (module and token and pin):
            raise ConfigError(
                "se-pkcs11",
                "--secure-element pkcs11 needs --se-module, --se-token and --se-pin-file (or a pkcs11 home)",
            )
        pkcs11 = Pkcs11Settings(module, token, pin)
    spec = SecureElementSpec(backend, pkcs11, tcti if backend == "tpm" else None)
    spec.validate()
    return spec


def run_with_progress(spec: RunSpec, serials: list[str], workers: int, manifest: Path, label: str) -> Summary:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(escape(label), total=len(serials), rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            elapsed = progress.tasks[task].elapsed or 0
            if elapsed:
                done = progress.tasks[task].completed
                progress.update(task, rate=f"{done / elapsed:,.0f} devices/s wall clock (start-up included)")

        return run_line(spec, serials, workers, manifest, advance)


def print_summary(summary: Summary, manifest: Path) -> None:
    console.print(
        f"devices: {summary.devices}  failures: {summary.failures}  "
        f"line rate: {summary.rate:,.0f} devices/s (stations ready to last device, "
        f"{summary.startup_seconds:.1f} s start-up not counted)  "
        f"per device p50: {summary.percentile(50) * 1000:.2f} ms  "
        f"p99: {summary.percentile(99) * 1000:.2f} ms  manifest: {escape(str(manifest))}",
        highlight=False,
    )
    for failed in summary.failed[:20]:
        console.print(f"[red]failed[/] {escape(failed.serial)}: {escape(str(failed.error))}", highlight=False)
    if len(summary.failed) > 20:
        console.print(f"... and {len(summary.failed) - 20} more failures (see the manifest)")


def line_credential(profile: str, vid: str | None, pid: str | None) -> Credential:
    """What the line issues: `--profile idevid` (no VID/PID) or `matter-dac` with both."""
    if profile == ProfileName.IDEVID.value:
        if vid is not None or pid is not None:
            raise PolicyError("matter-ids-unexpected", "--vid and --pid go with --profile matter-dac only")
        return Credential()
    if profile == ProfileName.MATTER_DAC.value:
        if vid is None or pid is None:
            raise PolicyError("matter-ids-required", "--profile matter-dac needs --vid and --pid")
        return Credential(MatterIds(parse_id(vid, "VID"), parse_id(pid, "PID")))
    raise PolicyError("line-profile", f"the line issues idevid or matter-dac certificates, not {profile!r}")


@app.command("run")
def run(
    count: Annotated[int, typer.Option("--count", min=1, help="devices to provision")],
    line: Annotated[str, typer.Option("--line")] = "line-1",
    model: Annotated[str, typer.Option("--model")] = "device",
    lot: Annotated[str, typer.Option("--lot")] = "lot-1",
    serial_prefix: Annotated[str, typer.Option("--serial-prefix")] = "DEV",
    start: Annotated[
        int | None, typer.Option("--start", help="first serial number (default: next free)")
    ] = None,
    secure_element: Annotated[
        str, typer.Option("--secure-element", help="software, pkcs11 or tpm")
    ] = "software",
    se_module: Annotated[str | None, typer.Option(help="PKCS#11 module of the device elements")] = None,
    se_token: Annotated[str | None, typer.Option(help="token label holding the device keys")] = None,
    se_pin_file: Annotated[Path | None, typer.Option(help="PIN file of that token")] = None,
    se_tcti: TctiOpt = DEFAULT_TCTI,
    workers: Annotated[int, typer.Option("--workers", min=1, help="station processes")] = 1,
    profile: Annotated[
        str,
        typer.Option("--profile", help="idevid, or matter-dac (a Matter DAC from the PAI of --vid/--pid)"),
    ] = "idevid",
    vid: Annotated[str | None, typer.Option("--vid", help="Matter Vendor ID (hex), with matter-dac")] = None,
    pid: Annotated[str | None, typer.Option("--pid", help="Matter Product ID (hex), with matter-dac")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for device folders and the manifest")
    ] = None,
    home: HomeOpt = None,
    passphrase_file: PassphraseOpt = None,
) -> None:
    """Provision COUNT devices: key in the secure element, CSR, IDevID (or Matter DAC), write-back,
    end-of-line test."""
    credential = line_credential(profile, vid, pid)
    passphrase = resolve_passphrase(passphrase_file)
    home_obj = load_home(home)
    se = se_spec(home_obj, secure_element, se_module, se_token, se_pin_file, se_tcti)
    out_dir = (out or home_obj.path / "devices").resolve()
    serials = next_serials(home_obj, serial_prefix, count, start)
    for serial in (serials[0], serials[-1]):
        check_device_serial(serial)  # a bad --serial-prefix is one error, not one per device
    spec = RunSpec(
        home_obj.path.resolve(), passphrase, LineInfo(line, model, lot), se, out_dir, credential=credential
    )
    manifest = out_dir / "manifest.jsonl"
    summary = run_with_progress(spec, serials, workers, manifest, f"{line} {lot}")
    print_summary(summary, manifest)
    open_authority(home_obj, passphrase).checkpoint_audit()  # the stations' events, anchored
    if summary.failures == summary.devices:
        raise typer.Exit(1)
