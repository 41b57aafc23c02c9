"""Credentials at rest: what lies in the home and the store is useless to someone who can only read
or write them (issue 8, hardening)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, devid_many, flat
from est_helpers import EstServer, csr_b64, https, path, provision
from event_peers import Broker, Receiver, free_port, listening, receiver
from manufacturer import Manufacturer
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken
from sqlalchemy import insert, select

from devid.api import tokens as api_tokens
from devid.authority import api_tokens as token_check
from devid.authority.core import Authority
from devid.authority.credential_key import CredentialKey, Purpose
from devid.authority.devices import create_enrollment_secret
from devid.authority.enroll import AuthenticationRequired
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.config import MIN_PASSPHRASE_LENGTH, Home, Pkcs11Settings
from devid.errors import KeyAccessError, PolicyError
from devid.keys.pkcs11 import open_token
from devid.keys.software import SoftwareSecretKey, decrypt_private_key, encrypt_private_key
from devid.registry import manufacturers, sinks
from devid.registry.delivery import Dispatcher, Settings
from devid.registry.transports import SIGNATURE_HEADER, sign
from devid.store import repo
from devid.store.engine import make_engine
from devid.store.models import event_sinks
from devid.store.outbox import emit
from devid.store.schema import alembic_config

__all__ = ["receiver"]  # a fixture, imported for pytest

PASSPHRASE = b"correct horse battery staple"
#: A credential key that is not the home's: what someone without the CA secret could use.
WRONG_KEY = CredentialKey(lambda: SoftwareSecretKey(os.urandom(32)))


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_home_is_0700_and_database_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        home = init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        try:
            with authority.engine.begin() as conn:  # a write, so SQLite's -wal and -shm exist
                conn.exec_driver_sql("CREATE TABLE umask_probe (x INTEGER)")
            assert mode(home.path) == 0o700
            db_files = [p for p in home.path.iterdir() if p.name.startswith("devid.db")]
            assert {p.name for p in db_files} >= {"devid.db", "devid.db-wal"}
            assert {p.name: mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}
        finally:
            authority.engine.dispose()


def test_a_new_passphrase_has_a_minimum_length(tmp_path: Path) -> None:
    short = b"x" * (MIN_PASSPHRASE_LENGTH - 1)
    with pytest.raises(PolicyError) as refused:
        init_home(tmp_path / "home", org="Test Org", passphrase=short)
    assert refused.value.code == "passphrase-too-short"
    assert f"at least {MIN_PASSPHRASE_LENGTH} characters" in refused.value.message
    assert not (tmp_path / "home").exists()

    result = devid("init", "--home", tmp_path / "cli", "--org", "Test Org", passphrase="short")
    assert result.returncode != 0
    assert "[passphrase-too-short]" in flat(result.stderr) and "12 characters" in flat(result.stderr)
    assert not (tmp_path / "cli" / "devid.toml").exists()


def test_an_existing_home_with_a_shorter_passphrase_still_opens(tmp_path: Path) -> None:
    """The minimum applies when a passphrase is set, not when an existing home is opened."""
    home = init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE)
    # A home made before the minimum: its keys under an 8-character passphrase.
    for pem in home.keys_dir.glob("*.key.pem"):
        key = decrypt_private_key(pem.read_bytes(), PASSPHRASE, pem.name)
        pem.write_bytes(encrypt_private_key(key, b"old-pass"))
    authority = open_authority(home, b"old-pass")
    try:
        assert authority.cas["root"].key.public_key() == authority.root.public_key()
    finally:
        authority.engine.dispose()


# --- credentials stored as MACs under the credential key ------------------------------------------


def api_status(server: EstServer, token: str) -> tuple[int, str | None]:
    resp = https(server, "GET", "/api/v1/devices", headers={"Authorization": f"Bearer {token}"})
    return resp.status, json.loads(resp.body)["error"]["code"] if resp.status != 200 else None


def test_api_tokens_written_into_the_database_are_not_honoured(server: EstServer) -> None:
    auth = server.authority
    genuine, _ = api_tokens.create(auth, "genuine", "admin", auth.clock.now())
    assert api_status(server, genuine) == (200, None)

    forged = {
        "plain-hash": api_tokens.PREFIX + secrets.token_urlsafe(32),
        "wrong-key": api_tokens.PREFIX + "x" * 43,
    }
    stored = {
        "plain-hash": hashlib.sha256(forged["plain-hash"].encode()).hexdigest(),
        "wrong-key": WRONG_KEY.mac(Purpose.API_TOKEN, forged["wrong-key"]),
    }
    with auth.engine.begin() as conn:
        for name, mac in stored.items():
            conn.execute(
                insert(api_tokens.tokens).values(
                    name=name, token_hash=mac, role="admin", rate_per_minute=600, created_at=auth.clock.now()
                )
            )
    assert api_status(server, forged["plain-hash"]) == (401, "api-token-legacy")
    assert api_status(server, forged["wrong-key"]) == (401, "api-token-invalid")
    # The genuine token's MAC under another purpose's subkey is not a token either.
    assert auth.credentials.mac(Purpose.ENROLLMENT_SECRET, genuine) != auth.credentials.mac(
        Purpose.API_TOKEN, genuine
    )


def basic(server: EstServer, serial: str, secret: str) -> int:
    token = base64.b64encode(f"{serial}:{secret}".encode()).decode()
    resp = https(
        server,
        "POST",
        path("simpleenroll"),
        csr_b64(ec.generate_private_key(ec.SECP256R1())),
        headers={"Authorization": f"Basic {token}"},
    )
    return resp.status


def test_enrollment_secrets_written_into_the_database_are_not_honoured(
    server: EstServer, tmp_path: Path
) -> None:
    auth = server.authority
    device = provision(auth, "SN-FORGE", tmp_path / "devices")
    plain, wrong = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    now = auth.clock.now()
    with auth.engine.begin() as conn:
        device_id = conn.execute(
            select(repo.devices.c.id).where(repo.devices.c.serial == device.serial)
        ).scalar_one()
        for mac in (
            hashlib.sha256(plain.encode()).hexdigest(),
            WRONG_KEY.mac(Purpose.ENROLLMENT_SECRET, wrong),
        ):
            conn.execute(
                insert(repo.enrollment_secrets).values(
                    device_id=device_id, secret_hash=mac, created_at=now, expires_at=now + timedelta(days=1)
                )
            )
    assert basic(server, device.serial, plain) == 401
    assert basic(server, device.serial, wrong) == 401
    genuine = create_enrollment_secret(auth, device.serial, "test")
    assert basic(server, device.serial, genuine) == 200


def test_registration_codes_written_into_the_database_are_not_honoured(
    auth: Authority, clock: FixedClock, tmp_path: Path
) -> None:
    acme = Manufacturer(tmp_path / "acme")
    clock.advance(timedelta(minutes=1))  # openssl's notBefore is "now"
    plain, wrong = secrets.token_hex(32), secrets.token_hex(32)
    now = clock.now()
    with auth.engine.begin() as conn:
        for mac in (
            hashlib.sha256(plain.encode()).hexdigest(),
            WRONG_KEY.mac(Purpose.REGISTRATION_CODE, wrong),
        ):
            conn.execute(
                insert(manufacturers.codes).values(
                    code=mac, created_at=now, expires_at=now + timedelta(hours=1)
                )
            )
    for code, reason in ((plain, "registration-code-legacy"), (wrong, "registration-code-unknown")):
        acme.verification(code)
        with pytest.raises(PolicyError) as refused:
            manufacturers.register(auth, "acme", acme.pem("root"), acme.pem("verify-root"), actor="test")
        assert refused.value.code == reason
    code = manufacturers.create_registration_code(auth, "test")
    acme.verification(code)
    assert (
        manufacturers.register(auth, "acme", acme.pem("root"), acme.pem("verify-root"), actor="test").name
        == "acme"
    )
    with auth.engine.connect() as conn:
        assert code not in {row.code for row in conn.execute(select(manufacturers.codes))}


def test_credentials_are_made_only_with_the_ca_secret(sqlite_home: Home, tmp_path: Path) -> None:
    """Without the passphrase nothing is made; with a wrong one neither (the key does not open)."""
    wrong = open_authority(sqlite_home, b"not the passphrase at all")
    try:
        with pytest.raises(KeyAccessError):
            api_tokens.create(wrong, "t", "admin", wrong.clock.now())
        with pytest.raises(KeyAccessError):
            manufacturers.create_registration_code(wrong, "test")
        with wrong.engine.connect() as conn:
            assert conn.execute(select(api_tokens.tokens)).first() is None
            assert conn.execute(select(manufacturers.codes)).first() is None
    finally:
        wrong.engine.dispose()
    calls = [
        ("api-token", "create", "t", "--role", "admin"),
        ("manufacturer", "register-code"),
        ("device", "enroll-secret", "SN-1"),
    ]
    results = devid_many([(*args, "--home", sqlite_home.path) for args in calls], passphrase=None)
    for args, result in zip(calls, results, strict=True):
        assert result.returncode != 0 and "[passphrase-missing]" in flat(result.stderr), (args, result.stderr)


# --- sink secrets and broker passwords sealed at rest ----------------------------------------------

MQTT_USER, MQTT_PASSWORD = "devid-events", "broker-password-5e1f"
HOOK_PASSWORD = "hook-password-77c2"
SIGNING_KEY = b"webhook-signing-key-0123456789"


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto that accepts one user with a password, and no anonymous client."""
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", passwords, MQTT_USER, MQTT_PASSWORD], check=True, capture_output=True
    )
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # `user`: run as root, Mosquitto would drop to its own user, who cannot read the test's folder.
    user = pwd.getpwuid(os.getuid()).pw_name
    conf.write_text(
        f"user {user}\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
    )
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    assert exe is not None, "mosquitto is not installed"
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not listening("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield Broker("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


def stored_bytes(home: Home) -> bytes:
    return b"".join(f.read_bytes() for f in home.path.glob("devid.db*"))


def test_sink_secrets_are_sealed_at_rest_and_delivery_still_works(
    sqlite_home: Home, auth: Authority, receiver: Receiver, password_broker: Broker
) -> None:
    engine, key = auth.engine, auth.credentials
    hook_url = receiver.url.replace("http://", f"http://hook-user:{HOOK_PASSWORD}@")
    broker_url = f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@{password_broker.host}:{password_broker.port}"
    base = "devid-test/sealed"
    now = auth.clock.now()
    sinks.add(engine, "hook", "webhook", hook_url, None, key=key, actor="test", now=now, secret=SIGNING_KEY)
    sinks.add(engine, "mq", "mqtt", broker_url, base, key=key, actor="test", now=now)

    # Neither the rows nor anything else in the database holds a password or the signing key.
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(select(event_sinks))}
    assert rows["hook"].url == receiver.url.replace("http://", "http://hook-user:***@")
    assert rows["mq"].url == f"mqtt://{MQTT_USER}:***@{password_broker.host}:{password_broker.port}"
    stored = stored_bytes(sqlite_home)
    for secret in (HOOK_PASSWORD.encode(), MQTT_PASSWORD.encode(), SIGNING_KEY):
        assert secret not in stored
        assert all(secret not in (r.secret or b"") for r in rows.values())

    async def deliver() -> list[aiomqtt.Message]:
        async with aiomqtt.Client(
            password_broker.host, password_broker.port, username=MQTT_USER, password=MQTT_PASSWORD
        ) as sub:
            await sub.subscribe(f"{base}/#", qos=1)
            with engine.begin() as conn:
                emit(conn, now, "device.state", "SN-SEALED", {"to": "ACTIVE"})
            results = await Dispatcher(engine, Settings(webhook_timeout=5.0), key=key).deliver_once()
            assert {n: (r.delivered, r.error) for n, r in results.items()} == {
                "hook": (1, None),
                "mq": (1, None),
            }
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    return [message]
            return []

    [message] = asyncio.run(deliver())
    assert json.loads(bytes(message.payload))["subject"] == "SN-SEALED"
    [request] = receiver.requests
    assert request.headers[SIGNATURE_HEADER] == sign(SIGNING_KEY, request.body)
    expected = base64.b64encode(f"hook-user:{HOOK_PASSWORD}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"

    # Another credential key (no CA secret) opens nothing.
    with engine.connect() as conn:
        sink = next(s for s in sinks.list_sinks(conn) if s.name == "hook")
    with pytest.raises(KeyAccessError):
        sink.connection(WRONG_KEY)


def test_sinks_written_into_the_database_are_not_delivered_to(
    sqlite_home: Home, auth: Authority, receiver: Receiver
) -> None:
    """Without the CA secret no usable sink can be added: one stored in clear (as an older devid
    did, or written directly) or sealed under another key gets nothing; a sealed one does."""
    engine, key, now = auth.engine, auth.credentials, auth.clock.now()
    sinks.add(engine, "genuine", "webhook", receiver.url, None, key=key, actor="test", now=now)
    with engine.begin() as conn:
        values = {
            "kind": "webhook",
            "topic": None,
            "enabled": True,
            "cursor": 0,
            "failures": 0,
            "created_at": now,
        }
        conn.execute(insert(sinks.sinks).values(name="clear", url=receiver.url, secret=SIGNING_KEY, **values))
        forged = WRONG_KEY.seal(
            Purpose.SINK_SECRET, json.dumps({"url": receiver.url, "signing_key": None}).encode(), b"forged"
        )
        conn.execute(insert(sinks.sinks).values(name="forged", url=receiver.url, secret=forged, **values))
        emit(conn, now, "device.state", "SN-1", {})
    results = asyncio.run(Dispatcher(engine, Settings(webhook_timeout=5.0), key=key).deliver_once())
    assert set(results) == {"genuine"} and results["genuine"].delivered == 1
    assert len(receiver.requests) == 1


def test_a_pkcs11_home_keeps_its_credential_key_in_the_token(
    tmp_path: Path, tokens: dict[str, SoftToken]
) -> None:
    token = tokens["home"]
    settings = Pkcs11Settings(token.module, token.label, str(token.pin_file))
    home = init_home(
        tmp_path / "home", org="HSM Org", passphrase=PASSPHRASE, key_backend="pkcs11", pkcs11=settings
    )
    label = home.config.key_prefix + "credential-key"
    session = open_token(token.module, token.label, token.pin)
    [secret] = session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
    assert secret[Attribute.SENSITIVE] and not secret[Attribute.EXTRACTABLE]
    assert not (home.keys_dir.exists() and list(home.keys_dir.iterdir()))  # nothing on disk

    authority = open_authority(home, PASSPHRASE)
    try:
        made, _ = api_tokens.create(authority, "hsm", "admin", authority.clock.now())
        with authority.engine.connect() as conn:
            assert token_check.verify(conn, authority.credentials, made, authority.clock.now()).name == "hsm"
            with pytest.raises(AuthenticationRequired):
                token_check.verify(conn, WRONG_KEY, made, authority.clock.now())
    finally:
        authority.engine.dispose()


def test_a_home_made_before_the_credential_key_gets_one_on_first_use(sqlite_home: Home) -> None:
    """Only once the passphrase is proven (the root CA key opens): a wrong one makes no key."""
    [key_file] = sqlite_home.keys_dir.glob("*credential-key.secret.json")
    key_file.unlink()
    wrong = open_authority(sqlite_home, b"not the passphrase at all")
    try:
        with pytest.raises(KeyAccessError) as refused:
            wrong.credentials.mac(Purpose.API_TOKEN, "x")
        assert refused.value.code == "wrong-passphrase" and not key_file.exists()
    finally:
        wrong.engine.dispose()
    right = open_authority(sqlite_home, PASSPHRASE)
    try:
        made, _ = api_tokens.create(right, "first", "admin", right.clock.now())
        assert key_file.exists() and mode(key_file) == 0o600
    finally:
        right.engine.dispose()
    again = open_authority(sqlite_home, PASSPHRASE)  # another process: the same key
    try:
        with again.engine.connect() as conn:
            assert token_check.verify(conn, again.credentials, made, again.clock.now()).name == "first"
    finally:
        again.engine.dispose()


def test_upgrading_a_store_leaves_no_usable_secret_in_clear(sqlite_home: Home) -> None:
    """Migration 0006 has no credential key: clear registration codes become (refused) hashes, and
    sinks lose their clear password and signing secret and wait, disabled, to be added again."""
    engine = make_engine(sqlite_home.config.db_url)
    try:
        command.downgrade(alembic_config(engine), "0004")
        code = secrets.token_hex(32)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(insert(manufacturers.codes).values(code=code, created_at=now, expires_at=now))
            conn.execute(
                insert(sinks.sinks).values(
                    name="old", kind="webhook", url=f"https://ops:{HOOK_PASSWORD}@hooks.example/x",
                    topic=None, enabled=True, cursor=0, failures=0, created_at=now, secret=SIGNING_KEY,
                )
            )  # fmt: skip
        command.upgrade(alembic_config(engine), "head")
        with engine.connect() as conn:
            assert (
                conn.execute(select(manufacturers.codes.c.code)).scalar_one()
                == hashlib.sha256(code.encode()).hexdigest()
            )
            sink = conn.execute(select(sinks.sinks)).one()
        assert (sink.url, sink.secret, sink.enabled) == ("https://ops:***@hooks.example/x", None, False)
        assert "add it again" in sink.last_error
    finally:
        engine.dispose()
