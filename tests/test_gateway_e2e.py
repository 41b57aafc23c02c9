"""The whole path, every part a real process: `devid revoke` → the outbox → Mosquitto (an MQTT
event sink) → `devid gateway --status filter|allowlist` (a hint) → the signed filter delta or
allowlist from `devid serve --http-port` → the live MQTT session of the revoked device is cut."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import DEVID, devid, devid_env, ok
from sqlalchemy import select, update
from test_gateway import Client, Pki
from test_serve import start_serve

from devid.authority.setup import init_home, open_authority
from devid.bench.gateway import Credential, device, free_port, gateway_server, mosquitto, pem_certs
from devid.registry import hubs
from devid.store.engine import writing
from devid.store.models import devices as device_table
from devid.store.models import hubs as hub_table

PASSPHRASE = b"correct horse battery staple"


class Gateway:
    """`devid gateway ...` as a process, started and waited for."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [*DEVID, "gateway", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=devid_env(),
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout or []], daemon=True).start()
        line = lines.get(timeout=60)
        assert "devid gateway on" in line, line + (self.proc.stderr.read() if self.proc.stderr else "")
        self.port = int(line.split()[3].rsplit(":", 1)[1])
        self.metrics = lines.get(timeout=10).split()[-1] if "--metrics-port" in map(str, args) else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Pki, int, int, dict[str, Credential]]]:
    http_port = free_port()
    home = init_home(
        tmp_path / "H", org="Acme", passphrase=PASSPHRASE, public_url=f"http://127.0.0.1:{http_port}"
    )
    with mosquitto(tmp_path / "mosquitto") as broker, open_authority(home, PASSPHRASE) as auth:
        creds = {name: device(auth, tmp_path / "dev", name) for name in ("GW-1", "GW-2", "GW-3")}
        hubs.create(auth, "hub-a", "mqtts://hub-a.example", "eu", actor="t")
        with writing(auth.engine) as conn:
            hub_id = conn.execute(select(hub_table.c.id)).scalar_one()
            conn.execute(update(device_table).values(hub_id=hub_id))
        anchors = [auth.root, auth.cas["operational"].certificate, auth.cas["manufacturing"].certificate]
        (tmp_path / "bundle.pem").write_bytes(pem_certs(*anchors))
        (tmp_path / "root.pem").write_bytes(pem_certs(auth.root))
        pki = Pki(
            auth,
            tmp_path,
            tmp_path / "root.pem",
            anchors,
            gateway_server(auth, tmp_path / "gw"),
            creds["GW-1"],
        )
        ok(
            devid(
                "events",
                "sink",
                "add",
                "gw",
                "--mqtt",
                f"mqtt://127.0.0.1:{broker}",
                "--topic",
                "devid/events",
                "--home",
                home.path,
            )
        )
        served = start_serve(home.path, "--http-port", str(http_port))
        try:
            yield pki, broker, http_port, creds
        finally:
            served.stop()


MODES = {"filter": ["--status-ca", "operational"], "allowlist": ["--allowlist", "hub-a"], "ocsp": []}


def _flows(sub: Client, pub: Client, topic: str, payload: bytes) -> None:
    pub.publish(topic, payload)
    assert sub.messages.get(timeout=5) == (topic, payload)


def test_revoke_cuts_live_sessions_through_the_real_path(
    world: tuple[Pki, int, int, dict[str, Credential]],
) -> None:
    """One revocation, three gateways (filter, allowlist, OCSP) in front of one broker: each cuts."""
    pki, broker, http_port, creds = world
    base = f"http://127.0.0.1:{http_port}"
    gateways = {
        mode: Gateway(
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{broker}",
            "--ca-bundle",
            pki.dir / "bundle.pem",
            "--cert",
            pki.server.cert_file,
            "--key",
            pki.server.key_file,
            "--server",
            base + ("/ocsp" if mode == "ocsp" else ""),
            "--status",
            mode,
            *which,
            "--refresh",
            "60s",
            "--metrics-port",
            "0",
        )
        for mode, which in MODES.items()
    }
    try:
        sessions = {}
        for mode, gateway in gateways.items():
            first = Client(gateway.port, pki, creds["GW-1"], f"{mode}-1")
            second = Client(gateway.port, pki, creds["GW-2"], f"{mode}-2")
            first.subscribe(f"fleet/{mode}/#")
            _flows(first, second, f"fleet/{mode}/t", b"before")
            sessions[mode] = (first, second)
        started = time.monotonic()
        ok(devid("revoke", "--device", "GW-2", "--reason", "keyCompromise", "--home", pki.dir / "H"))
        for mode, (_, second) in sessions.items():
            assert second.gone.wait(10), f"{mode}: the revoked device's session was not cut"
        assert time.monotonic() - started < 5  # every gateway cut it within five seconds
        for mode, (first, _) in sessions.items():
            # The others stay connected, new good devices get in, the revoked one does not.
            third = Client(gateways[mode].port, pki, creds["GW-3"], f"{mode}-3")
            _flows(first, third, f"fleet/{mode}/t", b"after")
            with pytest.raises(AssertionError):
                Client(gateways[mode].port, pki, creds["GW-2"], f"{mode}-2-again")
            first.close()
            third.close()
            # Its metrics: GW-1, GW-2, GW-3 admitted; GW-2 refused once revoked, for that reason.
            assert gateways[mode].metrics is not None
            with urllib.request.urlopen(gateways[mode].metrics) as answer:
                scraped = answer.read().decode()
            assert (
                "devid_gateway_admissions_total 3.0" in scraped
                and "devid_gateway_sessions_cut_total 1.0" in scraped
            )
            assert re.search(r'devid_gateway_refusals_total\{reason="[a-z-]+"\} 1\.0', scraped), scraped
    finally:
        for gateway in gateways.values():
            gateway.stop()
