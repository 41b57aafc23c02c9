"""The whole path, every part a real process: `devid revoke` → the outbox → Mosquitto (an MQTT
event sink) → `devid gateway --status filter|allowlist` (a hint) → the signed filter delta or
allowlist from `devid serve --http-port` → the live MQTT session of the revoked device is cut."""

from __future__ import annotations

import hashlib
import json
import queue
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from e2e import DEVID, devid, devid_env, ok
from sqlalchemy import select, update
from test_gateway import Client, Pki
from test_serve import Served, start_serve

from devid.authority.setup import init_home, open_authority
from devid.bench.gateway import Credential, device, free_port, gateway_server, mosquitto, pem_certs
from devid.registry import hubs
from devid.store.engine import reading, writing
from devid.store.models import certificates, sightings
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
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"devid gateway did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        assert "devid gateway on" in line, line + (self.proc.stderr.read() if self.proc.stderr else "")
        self.port = int(line.split()[3].rsplit(":", 1)[1])
        self.metrics = lines.get(timeout=10).split()[-1] if "--metrics-port" in map(str, args) else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Pki, int, int, dict[str, Credential], Served]]:
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
            yield pki, broker, http_port, creds, served
        finally:
            served.stop()


def _edge(pki: Pki, broker: int) -> list[str | Path]:
    """A gateway's listening, upstream and TLS options in front of `broker`."""
    return [
        *(
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"127.0.0.1:{broker}",
            "--ca-bundle",
            pki.dir / "bundle.pem",
        ),
        *("--cert", pki.server.cert_file, "--key", pki.server.key_file),
    ]


MODES = {"filter": ["--status-ca", "operational"], "allowlist": ["--allowlist", "hub-a"], "ocsp": []}


def _flows(sub: Client, pub: Client, topic: str, payload: bytes) -> None:
    pub.publish(topic, payload)
    assert sub.messages.get(timeout=5) == (topic, payload)


def test_revoke_cuts_live_sessions_through_the_real_path(
    world: tuple[Pki, int, int, dict[str, Credential], Served],
) -> None:
    """One revocation, three gateways (filter, allowlist, OCSP) in front of one broker: each cuts."""
    pki, broker, http_port, creds, _ = world
    base = f"http://127.0.0.1:{http_port}"
    gateways = {
        mode: Gateway(
            *_edge(pki, broker),
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


def _poll(what: str, probe: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.2)


def test_gateways_report_sessions_and_health_names_a_revoked_device_still_connected(
    world: tuple[Pki, int, int, dict[str, Credential], Served],
) -> None:
    """Two gateways report their sessions to `devid serve` (TLS, a gateway-role token): one
    enforces and cuts the revoked device; the other fails open on status it never got and keeps
    it. `devid health` names the device, the certificate and the gateway that still carries it."""
    pki, broker, http_port, creds, served = world
    home = pki.dir / "H"
    made = devid("api-token", "create", "edge", "--role", "gateway", "--home", home)
    ok(made)
    token_file = pki.dir / "gateway.token"
    token_file.write_text(made.stdout.strip().splitlines()[-1] + "\n")
    token_file.chmod(0o600)
    common = [
        *_edge(pki, broker),
        "--status",
        "ocsp",
        *(
            "--report",
            served.url,  # EST's URL: the reporter takes its scheme, host and port
            "--report-token-file",
            token_file,
            "--report-cacert",
            pki.root_file,
        ),
        *("--report-every", "1s", "--refresh", "60s"),
    ]
    enforcing = Gateway(*common, "--server", f"http://127.0.0.1:{http_port}/ocsp", "--name", "edge-enforcing")
    # Its status server never answers: under --fail open it admits (and keeps) on no data at all.
    lax = Gateway(
        *common,
        *("--server", f"http://127.0.0.1:{free_port()}/ocsp", "--fail", "open", "--name", "edge-open"),
        *("--metrics-port", "0"),
    )
    fingerprint = hashlib.sha256(creds["GW-2"].cert.public_bytes(Encoding.DER)).hexdigest()

    def seen(gateway: str) -> Any:
        with reading(pki.auth.engine) as conn:
            return conn.execute(
                select(sightings, certificates.c.revoked_at)
                .join(certificates, certificates.c.id == sightings.c.certificate_id)
                .where(certificates.c.fingerprint == fingerprint, sightings.c.gateway == gateway)
            ).first()

    try:
        cut = Client(enforcing.port, pki, creds["GW-2"], "enforced")
        kept = Client(lax.port, pki, creds["GW-2"], "kept")
        _poll(
            "both gateways report GW-2",
            lambda: seen("edge-enforcing") is not None and seen("edge-open") is not None,
        )
        healthy = devid("health", "--json", "--home", home)
        rows = {row["check"]: row for row in map(json.loads, healthy.stdout.splitlines())}
        assert (rows["revoked-still-connected"]["severity"], rows["revoked-still-connected"]["count"]) == (
            "critical",
            0,
        )

        ok(devid("revoke", "--device", "GW-2", "--reason", "keyCompromise", "--home", home))
        assert cut.gone.wait(10), "the enforcing gateway did not cut the revoked device"
        assert not kept.gone.is_set()
        # The cut reaches the store as the session's last sighting, seconds after the revocation.
        _poll(
            "the cut is reported",
            lambda: seen("edge-enforcing").last_seen >= seen("edge-enforcing").revoked_at,
        )
        # The grace is minutes and this test seconds: make the revocation ten minutes old.
        revoked_at = seen("edge-enforcing").revoked_at
        with writing(pki.auth.engine) as conn:
            conn.execute(
                update(certificates)
                .where(certificates.c.fingerprint == fingerprint)
                .values(revoked_at=revoked_at - timedelta(minutes=10))
            )
        _poll(
            "the lax gateway's next report marks GW-2", lambda: seen("edge-open").revoked_seen_at is not None
        )
        assert seen("edge-enforcing").revoked_seen_at is None  # cut in time: never seen past the grace

        result = devid("health", "--json", "--home", home)
        assert result.returncode == 1, result.stderr
        finding = {row["check"]: row for row in map(json.loads, result.stdout.splitlines())}[
            "revoked-still-connected"
        ]
        assert (finding["severity"], finding["count"]) == ("critical", 1)
        assert finding["examples"][0].startswith("GW-2 (certificate ")
        assert "at gateway edge-open, 10 min after its revocation" in finding["examples"][0]
        assert lax.metrics is not None
        with urllib.request.urlopen(lax.metrics) as answer:
            scraped = answer.read().decode()
        reported = re.search(r"^devid_gateway_sightings_reported_total (\d+)\.0$", scraped, re.M)
        assert reported is not None and int(reported.group(1)) >= 3, scraped  # a report a second
        assert "devid_gateway_report_failures_total 0.0" in scraped
        kept.close()
    finally:
        enforcing.stop()
        lax.stop()
        for gateway in (enforcing, lax):
            print(gateway.proc.stderr.read() if gateway.proc.stderr else "")  # shown if the test failed
