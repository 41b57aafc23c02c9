"""The device agent end to end: factory-made device folders (software secure element), devid's EST
server over real TLS on loopback, and one injected FixedClock shared by the authority and the agent,
so renewal, expiry, 90 days offline and backoff are tested by moving time, not by sleeping.
Crashes are simulated where they can happen: an answer lost in transit, a process that dies between
writing the certificate and the state. The CLI (`devid agent ...`) runs as a subprocess."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from e2e import devid, devid_env, flat, ok, openssl
from est_helpers import EstServer, running_server
from softhsm import SoftToken

from devid.authority.core import Authority
from devid.authority.devices import set_state
from devid.authority.requests import IssueRequest
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.device import agent as agent_module
from devid.device.agent import LDEVID_FILE, SESSION_FILE, STATE_FILE, DeviceAgent
from devid.device.decisions import BACKOFF_BASE, BACKOFF_CAP
from devid.errors import ConfigError
from devid.factory.secure_elements import SecureElementMaker, SecureElementSpec
from devid.factory.station import LineInfo, Station
from devid.keys.p11tls import provider_module
from devid.pki.encoding import load_certificates
from devid.pki.profiles import CLOCK_SKEW, ProfileName
from devid.server.app import make_app, start_server
from devid.server.tls import client_trust, ensure_server_certificate, server_context, server_names_for
from devid.store import repo

PASSPHRASE = b"correct horse battery staple"
T = TypeVar("T")


def go(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def station(auth: Authority, sqlite_home: Home, tmp_path: Path) -> Station:
    """The factory line of the test's home: devices get their IDevID by the authority's clock."""
    maker = SecureElementMaker(SecureElementSpec("software"))
    return Station(auth, maker, tmp_path / "devices", LineInfo("test-line", "sensor", "lot-1"))


def make_device(station: Station, serial: str) -> Path:
    [result] = station.provision([serial])
    assert result.ok, result.error
    return Path(result.directory)


def open_agent(directory: Path, clock: FixedClock, seed: int | str = 0) -> DeviceAgent:
    return DeviceAgent.open(directory, clock=clock, rng=random.Random(seed))


def enrolled_agent(
    station: Station, server: EstServer, clock: FixedClock, serial: str, label: str = ""
) -> DeviceAgent:
    agent = open_agent(make_device(station, serial), clock)
    go(agent.enroll(server.url, server.root_pem.read_bytes(), label))
    return agent


def leaf(agent: DeviceAgent) -> x509.Certificate:
    chain = agent.ldevid()
    assert chain is not None
    return chain[0]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def store_status(auth: Authority, cert: x509.Certificate) -> tuple[str, str]:
    """(status, profile) of a certificate in the authority's store."""
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, fingerprint(cert))
    assert row is not None
    return row.status, row.profile


def when(value: str | datetime | None) -> datetime:
    """A moment of the agent's state (a datetime) or of its status (ISO text)."""
    assert value is not None
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def current_for(auth: Authority, cert: x509.Certificate, now: datetime) -> None:
    """The certificate is valid now, recorded as valid, and its key is the device's."""
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert store_status(auth, cert)[0] == "valid"


def pem_file(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def verify_operational(auth: Authority, root: Path, cert: x509.Certificate, work: Path) -> None:
    """`openssl verify` at the authority's time: the certificate chains to the root through the
    operational CA."""
    operational = auth.cas["operational"].certificate
    cert.verify_directly_issued_by(operational)
    name = uuid.uuid4().hex[:8]
    leaf_file = pem_file(work / f"{name}.pem", cert)
    ca_file = pem_file(work / f"{name}-ca.pem", operational)
    at = str(int(auth.clock.now().timestamp()))
    out = openssl("verify", "-attime", at, "-CAfile", root, "-untrusted", ca_file, leaf_file)
    assert out.strip() == f"{leaf_file}: OK", out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving_on(authority: Authority, work_dir: Path, port: int) -> Iterator[str]:
    """devid's server on a fixed loopback port (so it can go away and come back at the same URL)."""
    dns, ips = server_names_for("127.0.0.1")
    cert = ensure_server_certificate(authority, work_dir / "tls", PASSPHRASE, dns, ips)
    ctx = server_context(cert.cert_file, cert.key_file, client_trust(authority), password=PASSPHRASE)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="est-server", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(
        start_server(make_app(authority), ctx, host="127.0.0.1", port=port, shutdown_timeout=5), loop
    ).result(timeout=30)
    try:
        yield running.url
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(), loop).result(timeout=60)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


# --- enrollment --------------------------------------------------------------------------------------


def test_enroll_gives_an_ldevid_from_the_operational_ca(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock, tmp_path: Path
) -> None:
    directory = make_device(station, "SN-ENROLL")
    agent = open_agent(directory, clock)
    assert agent.state is None
    assert agent.status()["enrolled"] is False
    with pytest.raises(ConfigError) as refused:
        go(agent.check_in())
    assert refused.value.code == "agent-not-enrolled"

    enrolled = go(agent.enroll(server.url, server.root_pem.read_bytes()))
    cert = enrolled.certificate
    assert enrolled.policy == "renew"
    assert (directory / LDEVID_FILE).exists() and (directory / STATE_FILE).exists()
    chain = load_certificates((directory / LDEVID_FILE).read_bytes())
    assert chain[0] == cert
    # RFC 7030 4.2.3: the answer holds the issued certificate only (the chain comes from /cacerts).
    assert chain[1:] == [auth.cas["operational"].certificate], "ldevid.pem carries the chain to the root"
    verify_operational(auth, server.root_pem, cert, tmp_path)

    # Identity from the IDevID; the key never changed hands: the LDevID certifies the element's key.
    idevid = agent.idevid_chain[0]
    serial_of = x509.NameOID.SERIAL_NUMBER
    assert [a.value for a in cert.subject.get_attributes_for_oid(serial_of)] == ["SN-ENROLL"]
    assert [a.value for a in idevid.subject.get_attributes_for_oid(serial_of)] == ["SN-ENROLL"]
    assert cert.public_key() == agent.se.public_key() == idevid.public_key()
    assert store_status(auth, cert) == ("valid", ProfileName.LDEVID.value)
    assert cert.not_valid_before_utc == clock.now() - CLOCK_SKEW
    assert agent.se.read_slot("ldevid") == cert.public_bytes(serialization.Encoding.DER)
    # No private key in the clear anywhere in the folder (the element's state is sealed).
    for file in directory.iterdir():
        assert b"PRIVATE KEY" not in file.read_bytes(), file

    status = agent.status()
    assert status["serial"] == "SN-ENROLL"
    assert status["ldevid_serial"] == format(cert.serial_number, "x")
    assert status["ldevid_fingerprint"] == fingerprint(cert)
    assert when(status["ldevid_not_after"]) == cert.not_valid_after_utc
    assert status["server"] == server.url and status["label"] == ""
    assert status["policy"] == "renew"
    assert when(status["renew_at"]) == enrolled.renew_at
    assert status["failures"] == 0 and status["next_attempt"] is None and status["last_error"] is None
    assert "enroll with IDevID" in status["events"][-1]

    # The state on disk is the state in memory.
    again = open_agent(directory, clock)
    assert again.status() == status
    assert go(again.check_in()) == "idle"


def test_check_in_idle_until_renew_at_then_renews(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock, tmp_path: Path
) -> None:
    agent = enrolled_agent(station, server, clock, "SN-RENEW")
    old = leaf(agent)
    assert agent.state is not None
    renew_at = when(agent.state.renew_at)
    life = old.not_valid_after_utc - old.not_valid_before_utc
    fraction = (renew_at - old.not_valid_before_utc) / life
    assert 2 / 3 - 0.05 <= fraction <= 2 / 3 + 0.05  # about 2/3 of the lifetime, jittered per device
    other = enrolled_agent(station, server, clock, "SN-RENEW-2")
    assert other.state is not None and other.state.renew_at != agent.state.renew_at

    assert go(agent.check_in()) == "idle"
    clock.advance(renew_at - clock.now() - timedelta(seconds=1))
    assert go(agent.check_in()) == "idle"
    assert leaf(agent) == old

    clock.advance(timedelta(seconds=2))
    assert go(agent.check_in()) == "renew"
    new = leaf(agent)
    assert new != old
    assert store_status(auth, old)[0] == "superseded"
    current_for(auth, new, clock.now())
    assert new.not_valid_before_utc == clock.now() - CLOCK_SKEW
    assert new.subject == old.subject
    assert new.public_key() == agent.se.public_key()
    verify_operational(auth, server.root_pem, new, tmp_path)
    assert agent.state.ldevid_fingerprint == fingerprint(new)
    assert when(agent.state.renew_at) > clock.now()
    assert "renewed with LDevID" in agent.status()["events"][-1]
    assert go(agent.check_in()) == "idle"
    # What the next process start reads back.
    assert open_agent(agent.directory, clock).status() == agent.status()


# --- policies ------------------------------------------------------------------------------------------


def test_short_lived_expiry_while_offline_falls_back_to_the_idevid(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock
) -> None:
    agent = enrolled_agent(station, server, clock, "SN-SHORT", "short")
    assert agent.state is not None and agent.state.policy == "short-lived"
    first = leaf(agent)
    assert first.not_valid_after_utc - first.not_valid_before_utc == timedelta(days=30) + CLOCK_SKEW

    clock.advance(timedelta(days=90))  # offline past expiry
    assert agent.due(clock.now()) == "fallback"
    assert go(agent.check_in()) == "fallback"
    fresh = leaf(agent)
    current_for(auth, fresh, clock.now())
    assert fresh.subject == first.subject and fresh.public_key() == agent.se.public_key()
    assert agent.state.failures == 0 and agent.state.last_error is None
    assert go(agent.check_in()) == "idle"


def test_inactive_device_is_refused_and_backs_off_keeping_its_files(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock
) -> None:
    agent = enrolled_agent(station, server, clock, "SN-INACTIVE", "short")
    directory = agent.directory
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != STATE_FILE}
    set_state(auth, agent.serial, "INACTIVE", "test", "stolen")
    clock.advance(timedelta(days=90))

    outcome = go(agent.check_in())
    assert outcome.startswith("error:") and "INACTIVE" in outcome, outcome
    assert agent.state is not None
    s = agent.state
    assert s.failures == 1
    assert s.last_error is not None and "INACTIVE" in s.last_error
    first_wait = when(s.next_attempt) - clock.now()
    assert BACKOFF_BASE / 2 <= first_wait <= BACKOFF_BASE
    # Nothing the device holds was lost; the failure is on disk for the next start.
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.name != STATE_FILE} == files
    assert open_agent(directory, clock).status() == agent.status()

    assert go(agent.check_in()) == "idle"  # backing off: no connection before next_attempt
    clock.advance(first_wait)
    assert go(agent.check_in()).startswith("error:")
    assert s.failures == 2
    assert BACKOFF_BASE <= when(s.next_attempt) - clock.now() <= 2 * BACKOFF_BASE

    # Re-activated: the next attempt recovers with the IDevID.
    set_state(auth, agent.serial, "ACTIVE", "test")
    clock.advance(when(s.next_attempt) - clock.now())
    assert go(agent.check_in()) == "fallback"
    assert (s.failures, s.next_attempt, s.last_error) == (0, None, None)
    current_for(auth, leaf(agent), clock.now())


def test_long_lived_never_renews(server: EstServer, station: Station, clock: FixedClock) -> None:
    agent = enrolled_agent(station, server, clock, "SN-LONG", "long")
    assert agent.state is not None
    assert agent.state.policy == "long-lived" and agent.state.renew_at is None
    cert = leaf(agent)
    assert cert.not_valid_after_utc - clock.now() == timedelta(days=5 * 365)
    for _ in range(4):
        clock.advance(timedelta(days=365))
        assert go(agent.check_in()) == "idle"
    assert leaf(agent) == cert


def test_session_label_fetches_session_certificates_as_they_expire(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock
) -> None:
    agent = enrolled_agent(station, server, clock, "SN-SESSION", "session")
    directory = agent.directory
    assert agent.state is not None and agent.state.policy == "session"
    assert agent.ldevid() is None and not (directory / LDEVID_FILE).exists()

    def session_cert() -> x509.Certificate:
        return load_certificates((directory / SESSION_FILE).read_bytes())[0]

    first = session_cert()
    assert first.not_valid_after_utc - clock.now() == timedelta(hours=1)
    assert store_status(auth, first) == ("valid", ProfileName.SESSION.value)
    assert first.public_key() == agent.se.public_key()
    assert when(agent.state.session_not_after) == first.not_valid_after_utc

    clock.advance(timedelta(minutes=30))
    assert go(agent.check_in()) == "idle"
    clock.advance(timedelta(minutes=26))  # within 5 minutes of the end
    assert go(agent.check_in()) == "session"
    second = session_cert()
    assert second != first and second.not_valid_after_utc - clock.now() == timedelta(hours=1)
    assert when(agent.state.session_not_after) == second.not_valid_after_utc
    assert go(agent.check_in()) == "idle"

    clock.advance(timedelta(days=3))  # offline: the next connection gets a new one at once
    assert go(agent.check_in()) == "session"
    assert session_cert().not_valid_after_utc - clock.now() == timedelta(hours=1)
    assert agent.ldevid() is None


# --- crash safety ---------------------------------------------------------------------------------------


def test_lost_renewal_answer_recovers_with_the_idevid(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock
) -> None:
    """The server renewed (and superseded the device's certificate), the answer never arrived."""
    agent = enrolled_agent(station, server, clock, "SN-LOST")
    held = leaf(agent)
    assert agent.state is not None
    clock.advance(when(agent.state.renew_at) - clock.now() + timedelta(hours=1))
    auth.issue(
        IssueRequest(
            ProfileName.LDEVID,
            agent.se.public_key(),
            device_serial=agent.serial,
            lifetime=timedelta(days=365),
            supersedes=fingerprint(held),
        ),
        "lost-in-transit",
    )
    assert store_status(auth, held)[0] == "superseded"

    assert go(agent.check_in()) == "fallback"  # simplereenroll refused (403), IDevID accepted
    recovered = leaf(agent)
    current_for(auth, recovered, clock.now())
    assert "fallback after 403" in agent.status()["events"][-1]
    assert agent.state.failures == 0
    assert go(agent.check_in()) == "idle"


class Crash(BaseException):
    """The process dies here (not an error the agent could handle)."""


def test_crash_between_certificate_and_state_leaves_a_usable_certificate(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = enrolled_agent(station, server, clock, "SN-CRASH1")
    directory = agent.directory
    old = leaf(agent)
    state_before = (directory / STATE_FILE).read_bytes()
    assert agent.state is not None
    clock.advance(when(agent.state.renew_at) - clock.now() + timedelta(minutes=1))

    def crash(self: DeviceAgent) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(DeviceAgent, "_save_state", crash)
        with pytest.raises(Crash):
            go(agent.check_in())
    # The new certificate is installed, the state file is the old one.
    assert (directory / STATE_FILE).read_bytes() == state_before
    assert store_status(auth, old)[0] == "superseded"

    restarted = open_agent(directory, clock)
    installed = leaf(restarted)
    assert installed != old
    current_for(auth, installed, clock.now())
    assert installed.public_key() == restarted.se.public_key()
    # The restarted agent knows which certificate it holds.
    status = restarted.status()
    assert status["ldevid_serial"] == format(installed.serial_number, "x")
    assert status["ldevid_fingerprint"] == fingerprint(installed)
    # Its next check-in works: the renewal time it kept is past, so it renews with what it holds.
    assert go(restarted.check_in()) == "renew"
    assert store_status(auth, installed)[0] == "superseded"
    current_for(auth, leaf(restarted), clock.now())
    assert go(restarted.check_in()) == "idle"
    assert open_agent(directory, clock).status() == restarted.status()


def test_crash_before_the_certificate_file_is_written_recovers(
    server: EstServer, auth: Authority, station: Station, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dies after the server answered, before ldevid.pem was replaced: the file still holds the old,
    now superseded certificate; the next check-in falls back to the IDevID."""
    agent = enrolled_agent(station, server, clock, "SN-CRASH2")
    directory = agent.directory
    old_pem = (directory / LDEVID_FILE).read_bytes()
    assert agent.state is not None
    clock.advance(when(agent.state.renew_at) - clock.now() + timedelta(minutes=1))
    real_write = agent_module.atomic_write

    def write(path: Path, data: bytes, **kw: Any) -> None:
        if path.name == LDEVID_FILE:
            raise Crash
        real_write(path, data, **kw)

    with monkeypatch.context() as m:
        m.setattr(agent_module, "atomic_write", write)
        with pytest.raises(Crash):
            go(agent.check_in())
    assert (directory / LDEVID_FILE).read_bytes() == old_pem

    restarted = open_agent(directory, clock)
    assert store_status(auth, leaf(restarted))[0] == "superseded"
    assert go(restarted.check_in()) == "fallback"
    current_for(auth, leaf(restarted), clock.now())


# --- server unreachable ----------------------------------------------------------------------------------


def test_unreachable_server_backs_off_with_jitter_then_recovers(
    auth: Authority, station: Station, clock: FixedClock, tmp_path: Path
) -> None:
    port = free_port()
    directory = make_device(station, "SN-OFFLINE")
    twin_dir = make_device(station, "SN-OFFLINE-2")
    with serving_on(auth, tmp_path / "server", port) as url:
        root = auth.root.public_bytes(serialization.Encoding.PEM)
        agent = open_agent(directory, clock, seed=1)
        twin = open_agent(twin_dir, clock, seed=2)
        go(agent.enroll(url, root, "short"))
        go(twin.enroll(url, root, "short"))
    assert agent.state is not None and twin.state is not None
    # Both devices due for renewal (30-day certificates, renewed at about 20 days), the server gone.
    clock.advance(timedelta(days=25))

    outcome = go(agent.check_in())
    assert outcome.startswith("error:") and "cannot reach the EST server" in outcome, outcome
    assert go(twin.check_in()).startswith("error:")
    assert agent.state.failures == twin.state.failures == 1
    assert agent.state.last_error is not None and f"127.0.0.1:{port}" in agent.state.last_error
    assert agent.state.next_attempt != twin.state.next_attempt  # jitter: not one wave
    old = leaf(agent)

    waits = []
    for failures in range(1, 16):
        assert agent.state.failures == failures
        wait = when(agent.state.next_attempt) - clock.now()
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))
        assert ceiling / 2 <= wait <= ceiling, (failures, wait)
        waits.append(wait)
        assert go(agent.check_in()) == "idle"  # before next_attempt: no connection at all
        clock.advance(wait)
        assert go(agent.check_in()).startswith("error:")
    assert max(waits) <= BACKOFF_CAP
    assert waits[-1] >= BACKOFF_CAP / 2  # grown to the cap
    assert waits[4] > waits[0] * 4  # and grown exponentially before that
    assert leaf(agent) == old  # nothing lost while failing
    assert open_agent(directory, clock).status()["failures"] == 16

    with serving_on(auth, tmp_path / "server", port):
        clock.advance(when(agent.state.next_attempt) - clock.now())
        assert go(agent.check_in()) == "renew"
        assert (agent.state.failures, agent.state.next_attempt, agent.state.last_error) == (0, None, None)
        assert store_status(auth, old)[0] == "superseded"
        current_for(auth, leaf(agent), clock.now())


# --- PKCS#11 secure element --------------------------------------------------------------------------------


def test_pkcs11_device_from_the_factory_cli_enrolls_with_its_token_key(
    tokens: dict[str, SoftToken], tmp_path: Path
) -> None:
    """A folder from `devid factory run --secure-element pkcs11` enrolls over mTLS with the key kept
    in the token (pkcs11-provider; test_pkcs11_tls.py has the details); refused with the reason and
    what to install only on a machine without the provider."""
    token = tokens["line"]
    home = tmp_path / "home"
    init_home(home, org="Agent Test", passphrase=PASSPHRASE)
    out = tmp_path / "devices"
    prefix = f"A{uuid.uuid4().hex[:6].upper()}"  # keys stay in the session's token: serials of our own
    ok(
        devid(
            *("factory", "run", "--count", "1", "--home", home, "--out", out, "--serial-prefix", prefix),
            *("--secure-element", "pkcs11", "--se-module", token.module, "--se-token", token.label),
            *("--se-pin-file", token.pin_file),
        )
    )
    directory = out / f"{prefix}00000001"
    assert json.loads((directory / "device.json").read_text())["secure_element"]["backend"] == "pkcs11"
    pin = ("--se-pin-file", token.pin_file)

    no_provider = devid_env(DEVID_PKCS11_PROVIDER=str(tmp_path / "absent.so"))
    result = devid(
        "agent", "enroll", "--device", directory, "--server", "https://127.0.0.1:9", *pin, env=no_provider
    )
    assert result.returncode == 2
    assert "[se-tls-unsupported]" in flat(result.stderr) and "pkcs11-provider" in flat(result.stderr)
    assert not (directory / STATE_FILE).exists()

    try:
        provider_module()
    except ConfigError as exc:
        pytest.skip(f"OpenSSL's pkcs11-provider package is not installed: {exc.message}")
    authority = open_authority(Home.load(home), PASSPHRASE)
    try:
        with running_server(authority, tmp_path / "server") as srv:
            ok(devid("agent", "enroll", "--device", directory, "--server", srv.url, *pin))
    finally:
        authority.engine.dispose()
    [ldevid, *_] = load_certificates((directory / LDEVID_FILE).read_bytes())
    assert ldevid.public_key() == load_certificates((directory / "idevid.pem").read_bytes())[0].public_key()


# --- CLI ---------------------------------------------------------------------------------------------------


def test_agent_cli_enroll_run_status(
    server: EstServer, auth: Authority, station: Station, tmp_path: Path
) -> None:
    """The device never needs the CA operator's passphrase: every agent command runs with
    DEVID_PASSPHRASE unset (the software element is sealed with the device's own key)."""
    directory = make_device(station, "SN-CLI")
    device = ("--device", directory)

    result = devid("agent", "run", *device, "--once", passphrase=None)
    assert result.returncode == 2 and "[agent-not-enrolled]" in flat(result.stderr), result.stderr
    assert json.loads(ok(devid("agent", "status", *device, passphrase=None)).stdout)["enrolled"] is False

    out = flat(
        ok(
            devid(
                "agent",
                "enroll",
                *device,
                "--server",
                server.url,
                "--ca-bundle",
                server.root_pem,
                "--label",
                "short",
                passphrase=None,
            )
        ).stdout
    )
    assert "enrolled SN-CLI: short-lived certificate serial" in out, out
    first = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
    verify_operational(auth, server.root_pem, first, tmp_path)
    assert f"serial {first.serial_number:x}" in out

    assert "SN-CLI: idle" in flat(ok(devid("agent", "run", *device, "--once", passphrase=None)).stdout)
    status = json.loads(ok(devid("agent", "status", *device, passphrase=None)).stdout)
    assert status["serial"] == "SN-CLI" and status["policy"] == "short-lived"
    assert status["ldevid_serial"] == format(first.serial_number, "x")
    assert status["server"] == server.url and status["label"] == "short"
    assert status["failures"] == 0

    # The device's own time reaches renew_at (the server's clock is frozen at its start).
    state = json.loads((directory / STATE_FILE).read_text())
    state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    (directory / STATE_FILE).write_text(json.dumps(state))
    assert "SN-CLI: renew" in flat(ok(devid("agent", "run", *device, "--once", passphrase=None)).stdout)
    renewed = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
    assert renewed != first and store_status(auth, first)[0] == "superseded"
    assert json.loads(ok(devid("agent", "status", *device, passphrase=None)).stdout)[
        "ldevid_serial"
    ] == format(renewed.serial_number, "x")

    # Without --ca-bundle the device trusts its own chain's root.
    other = make_device(station, "SN-CLI-2")
    ok(devid("agent", "enroll", "--device", other, "--server", server.url))
    assert (other / LDEVID_FILE).exists()


def test_agent_cli_run_reports_an_unreachable_server(
    auth: Authority, station: Station, tmp_path: Path
) -> None:
    directory = make_device(station, "SN-CLI-DOWN")
    port = free_port()
    with serving_on(auth, tmp_path / "server", port) as url:
        ok(devid("agent", "enroll", "--device", directory, "--server", url))
    state = json.loads((directory / STATE_FILE).read_text())
    state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    (directory / STATE_FILE).write_text(json.dumps(state))

    failed = devid("agent", "run", "--device", directory, "--once")
    assert failed.returncode == 1, "a failed check-in must show in the exit status"
    out = flat(failed.stdout)
    assert "SN-CLI-DOWN: error: cannot reach the EST server" in out, out
    status = json.loads(ok(devid("agent", "status", "--device", directory)).stdout)
    assert status["failures"] == 1 and "cannot reach" in status["last_error"]
    assert when(status["next_attempt"]) > datetime.now(UTC)
