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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e import DEVID, devid, devid_env, ok, query
from est_helpers import EstServer
from sqlalchemy import select
from test_agent import fingerprint, make_device, station, store_status, verify_operational

from devid.authority.core import Authority
from devid.authority.setup import init_home
from devid.device.agent import LDEVID_FILE, STATE_FILE
from devid.factory.station import Station
from devid.pki.encoding import load_certificates
from devid.store.engine import reading
from devid.store.models import certificates, devices

__all__ = ["station"]  # the fixture, shared with test_agent

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


AGENT_KILLS = 5


def _renewal_due(directory: Path) -> None:
    """Move the agent's renewal time into the past (its own clock is the real one)."""
    state = json.loads((directory / STATE_FILE).read_text())
    state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    (directory / STATE_FILE).write_text(json.dumps(state))


def _newest_ldevid(auth: Authority, serial: str) -> str:
    with reading(auth.engine) as conn:
        return str(
            conn.execute(
                select(certificates.c.fingerprint)
                .join(devices, devices.c.id == certificates.c.device_id)
                .where(devices.c.serial == serial, certificates.c.profile == "ldevid")
                .order_by(certificates.c.id.desc())
            ).first()[0]  # type: ignore[index]
        )


def test_kill_9_the_agent_mid_renewal_leaves_a_usable_certificate(
    server: EstServer, auth: Authority, station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = make_device(station, "SN-KILL")
    idevid_key = load_certificates((directory / "idevid.pem").read_bytes())[0].public_key()
    enroll = (
        "agent",
        "enroll",
        "--device",
        directory,
        "--server",
        server.url,
        "--ca-bundle",
        server.root_pem,
    )
    ok(devid(*enroll, passphrase=None))
    run = [*DEVID, "agent", "run", "--device", str(directory), "--once"]
    _renewal_due(directory)
    start = time.monotonic()
    ok(devid(*run[1:], passphrase=None))
    whole = time.monotonic() - start
    landed = {"before the request": 0, "answer lost": 0, "after the certificate": 0, "finished": 0}

    def killed_agent(delay: float | None) -> bool:
        """Run a due renewal and SIGKILL it after `delay` (None: the server kills it when it has
        committed the new certificate, before answering); False if it finished first."""
        _renewal_due(directory)
        agent = subprocess.Popen(run, env=devid_env(None), start_new_session=True, stdout=subprocess.DEVNULL)
        if delay is None:
            issue_each = auth.issue_each

            def issue_then_kill(*args: Any, **kwargs: Any) -> Any:
                done = issue_each(*args, **kwargs)
                os.killpg(agent.pid, signal.SIGKILL)
                return done

            with monkeypatch.context() as m:
                m.setattr(auth, "issue_each", issue_then_kill)
                assert agent.wait(timeout=120) == -signal.SIGKILL
            return True
        time.sleep(delay)
        if agent.poll() is not None:
            return False
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        return True

    # From start-up to past the end of a whole run, then once exactly between commit and answer.
    for delay in [*(whole * (0.5 + 0.6 * i / (AGENT_KILLS - 1)) for i in range(AGENT_KILLS)), None]:
        before = _newest_ldevid(auth, "SN-KILL")
        finished = not killed_agent(delay)
        # On restart the agent holds a whole certificate for its own key, chaining to the root.
        held = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
        assert held.public_key() == idevid_key
        verify_operational(auth, server.root_pem, held, tmp_path)
        newest = _newest_ldevid(auth, "SN-KILL")
        if finished:
            landed["finished"] += 1
        elif newest == before:
            landed["before the request"] += 1
        elif newest != fingerprint(held):
            landed["answer lost"] += 1  # renewed in the store, not on the device: the IDevID steps in
        else:
            landed["after the certificate"] += 1
        # Its next check-in works, and then what it holds is the device's current certificate.
        ok(devid(*run[1:], passphrase=None))
        held = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
        assert store_status(auth, held)[0] == "valid" and fingerprint(held) == _newest_ldevid(auth, "SN-KILL")
        status = json.loads(ok(devid("agent", "status", "--device", directory, passphrase=None)).stdout)
        assert status["ldevid_fingerprint"] == fingerprint(held)
    assert landed["answer lost"] >= 1 and landed["finished"] < AGENT_KILLS
    print(f"agent: {AGENT_KILLS + 1} kills, one run {whole:.2f} s, landed {landed}")
