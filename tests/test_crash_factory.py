"""Crash safety of the factory line and the device agent, by killing them for real (SIGKILL):
a rerun of the killed line resumes without duplicates or gaps, and an agent killed mid-renewal
still holds a usable certificate when it starts again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from e2e import DEVID, devid, devid_env, ok, query

from devid.authority.setup import init_home

PASSPHRASE = b"correct horse battery staple"
COUNT = 600
#: The folder of a finished device: its element, IDevID, chain and device.json.
FINISHED = ("device.json", "idevid.pem", "chain.pem")


def _line(home: Path, out: Path) -> list[str]:
    return [
        *DEVID, "factory", "run", "--count", str(COUNT), "--start", "1", "--serial-prefix", "K",
        "--home", str(home), "--out", str(out),
    ]  # fmt: skip


def _kill_when(home: Path, out: Path, ready: Callable[[], bool]) -> None:
    """Start the line, SIGKILL its whole process group as soon as `ready()`."""
    line = subprocess.Popen(
        _line(home, out),
        env=devid_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not ready():
        assert line.poll() is None, line.stderr.read() if line.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(line.pid, signal.SIGKILL)
    line.wait()


def _devices(home: Path) -> int:
    return int(query(home, "SELECT count(*) FROM devices")[0][0])  # type: ignore[call-overload]


def test_kill_9_the_factory_midway_then_rerun_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE).path
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"
    # First kill: the first chunk is done, the next is being prepared (keys, CSRs, folders).
    _kill_when(home, out, lambda: manifest.exists() and len(manifest.read_text().splitlines()) >= 200)
    first = _devices(home)
    # Second kill, on the rerun: right after a chunk's IDevIDs commit, before they are installed.
    _kill_when(home, out, lambda: _devices(home) >= 400)
    second = _devices(home)
    assert 200 <= first < second < COUNT, (first, second)  # killed midway, twice

    rerun = subprocess.run(
        _line(home, out), env=devid_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    serials = [row[0] for row in query(home, "SELECT serial FROM devices ORDER BY serial")]
    assert serials == [f"K{n:08d}" for n in range(1, COUNT + 1)]  # no gap, none twice
    idevids = query(
        home, "SELECT count(*), count(DISTINCT device_id) FROM certificates WHERE profile = 'idevid'"
    )
    assert idevids == [(COUNT, COUNT)]
    unfinished = [s for s in serials if not all((out / s / name).exists() for name in FINISHED)]
    assert unfinished == []
    for serial in (serials[0], serials[-1]):
        assert json.loads((out / serial / "device.json").read_text())["serial"] == serial
    assert "audit chain intact" in ok(devid("audit", "verify", "--home", home)).stdout
    print(f"factory: killed with {first}, then {second} of {COUNT} devices in the store; the rerun finished")
