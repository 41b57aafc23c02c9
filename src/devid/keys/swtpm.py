"""Throw-away software TPMs for tests and benchmarks (never for production keys).

swtpm simulates the TPM 2.0; tpm2-abrmd, on a private D-Bus, stands in front of it as the resource
manager TLS needs (OpenSSL's tpm2 provider holds more objects at once during a handshake than a
TPM's three transient slots: tpm2-openssl's README). Everything runs in a temporary folder, on free
ports, under a bus name of its own, and is stopped by process id.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devid.errors import ConfigError

#: What a process needs in its environment to reach the simulated TPM through tpm2-abrmd.
BUS_ENV = "DBUS_SESSION_BUS_ADDRESS"
INSTALL_HINT = "apt-get install swtpm tpm2-abrmd libtss2-tcti-tabrmd0 dbus"


@dataclass(frozen=True)
class SimulatedTpm:
    """A running swtpm: `tcti` for devid (through tpm2-abrmd when there is one), `direct_tcti`
    straight to swtpm; `bus_address` is the private D-Bus ("" without a resource manager)."""

    tcti: str
    direct_tcti: str
    bus_address: str


def _free_port_pair() -> int:
    """A free port P whose P+1 is free too (the swtpm TCTI finds the control channel at P+1).

    Linux hands out odd ports to bind(0) and even ones to connect(): P+1 is often a closed
    connection's port in TIME_WAIT, which swtpm (SO_REUSEADDR) may take, so the probe allows it too."""
    for _ in range(200):
        with socket.socket() as first, socket.socket() as second:
            for s in (first, second):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise ConfigError("swtpm-failed", "found no two consecutive free ports for swtpm")


def _need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found is None:
        raise ConfigError("swtpm-missing", f"{program} not found: {INSTALL_HINT}")
    return found


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    """Poll until `ready()` (these daemons give no readiness signal of their own)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise ConfigError("swtpm-failed", f"{proc.args!r} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise ConfigError("swtpm-failed", f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.02)


def _answers(tcti: str) -> bool:
    from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception

    try:
        ESAPI(TCTILdr.parse(tcti)).close()
    except TSS2_Exception:
        return False
    return True


def _bus_name_owned(dbus_send: str, name: str) -> bool:
    """Asked of the bus itself: trying the tabrmd TCTI first would have GLib warn on every miss."""
    reply = subprocess.run(
        [
            *(dbus_send, "--session", "--print-reply", "--dest=org.freedesktop.DBus"),
            *("/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{name}"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return "boolean true" in reply.stdout


@contextlib.contextmanager
def _process(args: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _bus_environment(address: str) -> Iterator[None]:
    previous = os.environ.get(BUS_ENV)
    os.environ[BUS_ENV] = address
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(BUS_ENV, None)
        else:
            os.environ[BUS_ENV] = previous


@contextlib.contextmanager
def _swtpm(swtpm: str, state: Path, attempts: int = 5) -> Iterator[str]:
    """swtpm on a free port pair; another pair when it could not take the first (a port the probe
    found free may be taken before swtpm binds it). Yields its direct TCTI."""
    for attempt in range(attempts):
        port = _free_port_pair()
        direct = f"swtpm:host=127.0.0.1,port={port}"
        server = [
            *(swtpm, "socket", "--tpm2", "--tpmstate", f"dir={state}"),
            *("--server", f"type=tcp,port={port},bindaddr=127.0.0.1"),
            *("--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"),
            *("--flags", "not-need-init,startup-clear"),
        ]
        with _process(server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            try:
                _wait(functools.partial(_answers, direct), proc, f"swtpm at {direct}")
            except ConfigError:
                if proc.poll() is None or attempt == attempts - 1:
                    raise
                continue
            yield direct
            return


@contextlib.contextmanager
def simulated_tpm(resource_manager: bool = True) -> Iterator[SimulatedTpm]:
    """Start swtpm and, with `resource_manager`, a private D-Bus and tpm2-abrmd on it; point this
    process (and the processes it starts) at that bus while the context lasts. GLib keeps one session
    bus per process: a process reaches the resource manager of one simulated TPM only (the others
    through `direct_tcti`)."""
    swtpm = _need("swtpm")
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    with tempfile.TemporaryDirectory(prefix="devid-swtpm-") as tmp, contextlib.ExitStack() as stack:
        state = Path(tmp) / "state"
        state.mkdir()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        direct = stack.enter_context(_swtpm(swtpm, state))
        if not resource_manager:
            yield SimulatedTpm(direct, direct, "")
            return
        dbus, dbus_send, abrmd = _need("dbus-daemon"), _need("dbus-send"), _need("tpm2-abrmd")
        bus_args = [
            *(dbus, "--session", "--nofork", "--print-address=1", "--nopidfile"),
            f"--address=unix:path={Path(tmp) / 'bus'}",
        ]
        bus = stack.enter_context(_process(bus_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise ConfigError("swtpm-failed", "dbus-daemon gave no bus address")
        stack.enter_context(_bus_environment(address))
        name = f"com.intel.tss2.Tabrmd.devid{secrets.token_hex(4)}"
        rm = [abrmd, "--session", "--allow-root", f"--tcti={direct}", f"--dbus-name={name}"]
        tcti = f"tabrmd:bus_type=session,bus_name={name}"
        rm_proc = stack.enter_context(_process(rm, **quiet))
        _wait(lambda: _bus_name_owned(dbus_send, name), rm_proc, f"tpm2-abrmd as {name}")
        _wait(lambda: _answers(tcti), rm_proc, f"tpm2-abrmd at {tcti}")
        yield SimulatedTpm(tcti, direct, address)
