"""Fleet onboarding end to end: a manufacturer CA made with openssl is registered with proof of
possession, its devices register just in time over real EST/mTLS (curl as the device), enrollment
groups admit and allocate them to hubs, and every refusal changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from est_helpers import EstServer, certs_from_b64_pkcs7, csr_b64, provision, renewal_csr_b64, run, write_key
from manufacturer import Manufacturer
from sqlalchemy import func, select

from devid.authority.core import Authority
from devid.authority.devices import set_state
from devid.clock import FixedClock
from devid.errors import ConflictError, DevidError, PolicyError
from devid.registry import enrollments, hubs, manufacturers
from devid.registry.allocation import Allocation
from devid.registry.enrollments import Kind, Reprovision, Settings, make_policy
from devid.registry.onboarding import Registry
from devid.store import repo
from devid.store.engine import reading
from devid.store.models import events as events_table
from devid.store.models import manufacturers as manufacturers_table


@pytest.fixture
def acme(tmp_path: Path, clock: FixedClock) -> Manufacturer:
    made = Manufacturer(tmp_path / "acme")
    clock.advance(timedelta(minutes=1))  # openssl's notBefore is "now": step past it
    return made


def register(
    auth: Authority, maker: Manufacturer, name: str = "acme", **kw: Any
) -> manufacturers.ManufacturerInfo:
    code = manufacturers.create_registration_code(auth, "test")
    maker.verification(code)
    return manufacturers.register(auth, name, maker.pem("root"), maker.pem("verify-root"), actor="test", **kw)


def counts(auth: Authority) -> dict[str, int]:
    with reading(auth.engine) as conn:
        return {
            "manufacturers": repo.count(conn, manufacturers_table),
            "devices": repo.count(conn, repo.devices),
            "certificates": repo.count(conn, repo.certificates),
            "events": repo.count(conn, events_table),
        }


def curl_enroll(
    server: EstServer, cert: Path, key: Path, op: str = "simpleenroll", headers: dict[str, str] | None = None,
    csr_key: ec.EllipticCurvePrivateKey | None = None, body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One EST request with curl as the device; (status, headers, body)."""
    csr = server.root_pem.parent / "req.b64"
    csr.write_bytes(body if body is not None else csr_b64(csr_key or ec.generate_private_key(ec.SECP256R1())))
    args: list[str | Path] = [
        "curl", "-sS", "--cacert", server.root_pem, "--cert", cert, "--key", key,
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{csr}", "-D", "-",
    ]  # fmt: skip
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    out = run([*args, server.est(op)]).stdout
    head, _, payload = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, parsed, payload


# --- registration with proof of possession --------------------------------------------------------


def test_register_manufacturer_ca_made_with_openssl(auth: Authority, acme: Manufacturer) -> None:
    info = register(auth, acme, auto_register=True)
    assert info.state == "ACTIVE" and info.auto_register and not info.auto_activate
    assert "Acme Root CA" in info.subject
    with reading(auth.engine) as conn:
        assert [m.name for m in manufacturers.list_all(conn)] == ["acme"]


def _refusal_case(auth: Authority, maker: Manufacturer, case: str) -> tuple[bytes, bytes]:
    code = manufacturers.create_registration_code(auth, "test")
    if case == "wrong-code":
        return maker.pem("root"), maker.verification("0" * 64).read_bytes()
    if case == "other-key":
        maker.sign("impostor", "/O=Acme/CN=Acme Root CA", "signing", ca=True)  # same name, other key
        return maker.pem("root"), maker.verification(code, "impostor").read_bytes()
    if case == "not-a-ca":
        _leaf, _, _ = maker.device("leafy", "root")
        maker.directory.joinpath("dev-leafy.pem").rename(maker.directory / "leafy.pem")
        maker.directory.joinpath("dev-leafy.key").rename(maker.directory / "leafy.key")
        return maker.pem("leafy"), maker.verification(code, "leafy").read_bytes()
    if case == "rsa":
        maker.sign("rsaca", "/O=Acme/CN=RSA CA", "root", ca=True, rsa=True)
        return maker.pem("rsaca"), maker.verification(code, "rsaca").read_bytes()
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong-code", "registration-code-unknown"),
        ("other-key", "verification-signature"),
        ("not-a-ca", "not-a-ca"),
        ("rsa", "key-type"),
    ],
)
def test_registration_refusals_change_nothing(
    auth: Authority, acme: Manufacturer, case: str, code: str
) -> None:
    ca, verification = _refusal_case(auth, acme, case)
    before = counts(auth)
    with pytest.raises(PolicyError) as err:
        manufacturers.register(auth, "acme", ca, verification, actor="test")
    assert err.value.code == code, err.value.message
    assert counts(auth) == before


def test_code_is_single_use_and_expires(auth: Authority, acme: Manufacturer, clock: FixedClock) -> None:
    code = manufacturers.create_registration_code(auth, "test")
    verification = acme.verification(code).read_bytes()
    manufacturers.register(auth, "acme", acme.pem("root"), verification, actor="test")
    other = Manufacturer(acme.directory.parent / "other", "Other")
    other.verification(code)
    clock.advance(timedelta(minutes=1))
    with pytest.raises(PolicyError, match="already used"):
        manufacturers.register(auth, "other", other.pem("root"), other.pem("verify-root"), actor="test")
    late = manufacturers.create_registration_code(auth, "test")
    other.verification(late)
    clock.advance(manufacturers.CODE_TTL + timedelta(minutes=1))
    with pytest.raises(PolicyError) as err:
        manufacturers.register(auth, "other", other.pem("root"), other.pem("verify-root"), actor="test")
    assert err.value.code == "registration-code-expired"


def test_duplicate_manufacturer_refused(auth: Authority, acme: Manufacturer) -> None:
    register(auth, acme)
    with pytest.raises(ConflictError, match="already registered"):
        register(auth, acme, name="acme-again")


# --- just-in-time registration over EST --------------------------------------------------------


def test_jitr_device_enrolls_with_curl_and_is_recorded(
    server: EstServer, acme: Manufacturer, tmp_path: Path
) -> None:
    auth = server.authority
    register(auth, acme, auto_register=True, auto_activate=True)
    _sync(server, acme)
    _cert, key, chain = acme.device("ACME-0001")
    status, _headers, body = curl_enroll(server, chain, key)
    assert status == 200, body
    [ldevid] = certs_from_b64_pkcs7(body)
    assert ldevid.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "ACME-0001"
    (tmp_path / "ldevid.pem").write_bytes(ldevid.public_bytes(_PEM))
    chain_file = tmp_path / "devid-chain.pem"
    chain_file.write_bytes(b"".join(c.public_bytes(_PEM) for c in auth.chain("operational")))
    run(["openssl", "verify", "-CAfile", server.root_pem, "-untrusted", chain_file, tmp_path / "ldevid.pem"])
    with reading(auth.engine) as conn:
        device = repo.device_by_serial(conn, "ACME-0001")
        events = conn.execute(select(events_table.c.type)).scalars().all()
    assert device is not None and device.state == "ACTIVE" and device.manufacturer_id is not None
    assert "device.registered" in events
    # The same device again (the base label's `renew` policy allows IDevID re-enrollment): it is
    # known now, so no second registration.
    status, _, _ = curl_enroll(server, chain, key)
    assert status == 200
    with reading(auth.engine) as conn:
        assert repo.count(conn, repo.devices) == 1


def _sync(server: EstServer, maker: Manufacturer) -> None:
    """Wait until the server's TLS trust has the manufacturer's CA (it follows the registry about
    once a second): until a probe device of that manufacturer completes a TLS handshake."""
    _, key, chain = maker.device("TLS-PROBE")
    deadline = time.monotonic() + 10
    while not _handshakes(server, chain, key):
        assert time.monotonic() < deadline, "the server never trusted the registered manufacturer CA"
        time.sleep(0.2)


def test_jitr_pending_activation_until_an_operator_activates(server: EstServer, acme: Manufacturer) -> None:
    auth = server.authority
    register(auth, acme, auto_register=True)
    _sync(server, acme)
    _, key, chain = acme.device("ACME-0002")
    status, _headers, body = curl_enroll(server, chain, key)
    assert status == 403 and b"device-pending-activation" in body
    with reading(auth.engine) as conn:
        device = repo.device_by_serial(conn, "ACME-0002")
        assert device is not None and device.state == "PENDING_ACTIVATION"
        assert repo.count(conn, repo.certificates) == _devid_certs(auth)
    set_state(auth, "ACME-0002", "ACTIVE", "operator")
    status, _, body = curl_enroll(server, chain, key)
    assert status == 200, body


def test_a_second_idevid_for_a_registered_serial_is_refused(server: EstServer, acme: Manufacturer) -> None:
    register(server.authority, acme, auto_register=True, auto_activate=True)
    _sync(server, acme)
    _, key, chain = acme.device("ACME-0006")
    assert curl_enroll(server, chain, key)[0] == 200
    _, key, chain = acme.device("ACME-0006")  # same serial, new key and certificate
    before = counts(server.authority)
    status, _, body = curl_enroll(server, chain, key)
    assert status == 403 and b"device-identity-conflict" in body, body
    assert counts(server.authority) == before


def test_an_individual_enrollment_pinned_to_another_idevid_refuses(
    server: EstServer, acme: Manufacturer
) -> None:
    auth = server.authority
    register(auth, acme, auto_register=True, auto_activate=True)
    pinned, _, _ = acme.device("ACME-0007")
    enrollments.create(
        auth, Kind.INDIVIDUAL, "ACME-0007", Settings(), device_cert=pinned.read_bytes(), actor="test"
    )
    _sync(server, acme)
    _, key, chain = acme.device("ACME-0007")  # not the IDevID the enrollment names
    before = counts(auth)
    status, _, body = curl_enroll(server, chain, key)
    assert status == 403 and b"enrollment-certificate-mismatch" in body, body
    assert counts(auth) == before


def _devid_certs(auth: Authority) -> int:
    """Certificates devid itself holds before any device enrolled (CA, OCSP and server certs)."""
    with reading(auth.engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(repo.certificates)
                .where(repo.certificates.c.device_id.is_(None))
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("auto_register", "state", "code"),
    [(False, "ACTIVE", b"device-not-registered"), (True, "INACTIVE", b"manufacturer-inactive")],
)
def test_jitr_refusals_register_nothing(
    server: EstServer, acme: Manufacturer, auto_register: bool, state: str, code: bytes
) -> None:
    auth = server.authority
    register(auth, acme, auto_register=auto_register, auto_activate=True)
    if state != "ACTIVE":
        manufacturers.update_settings(auth, "acme", state=state, actor="test")
    _sync(server, acme)
    _, key, chain = acme.device("ACME-0003")
    before = counts(auth)
    status, _, body = curl_enroll(server, chain, key)
    assert status == 403 and code in body, body
    assert counts(auth) == before


def test_unregistered_manufacturer_fails_the_handshake(server: EstServer, acme: Manufacturer) -> None:
    _, key, chain = acme.device("ACME-0004")
    result = run(
        ["curl", "-sS", "--cacert", server.root_pem, "--cert", chain, "--key", key, server.est("cacerts")],
        check=False,
    )
    assert result.returncode != 0
    with reading(server.authority.engine) as conn:
        assert repo.device_by_serial(conn, "ACME-0004") is None


def test_registration_in_another_process_reaches_the_running_server(
    server: EstServer, acme: Manufacturer, sqlite_home: Any
) -> None:
    """Config changes reach every server process from the store: no restart, no signal."""
    code = manufacturers.create_registration_code(server.authority, "test")
    acme.verification(code)
    script = (
        "import sys; from pathlib import Path; from devid.config import Home; "
        "from devid.authority.setup import open_authority; from devid.registry import manufacturers; "
        f"a = open_authority(Home.load(Path({str(sqlite_home.path)!r})), b'correct horse battery staple'); "
        f"manufacturers.register(a, 'acme', Path({str(acme.directory / 'root.pem')!r}).read_bytes(), "
        f"Path({str(acme.directory / 'verify-root.pem')!r}).read_bytes(), "
        "auto_register=True, auto_activate=True)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    _, key, chain = acme.device("ACME-0005")
    deadline = time.monotonic() + 10
    while True:
        status, _, body = curl_enroll(server, chain, key) if _handshakes(server, chain, key) else (0, {}, b"")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert status == 200, body


def _handshakes(server: EstServer, chain: Path, key: Path) -> bool:
    args = ["curl", "-sS", "--cacert", server.root_pem, "--cert", chain, "--key", key, server.est("cacerts")]
    return run(args, check=False).returncode == 0


# --- enrollment groups and allocation --------------------------------------------------------------


@pytest.fixture
def fleet(server: EstServer, acme: Manufacturer) -> Manufacturer:
    auth = server.authority
    register(auth, acme, auto_register=True, auto_activate=True)
    for region in ("eu", "us", "ap"):
        hubs.create(auth, f"hub-{region}", f"mqtts://{region}.hub.example:8883", region, actor="test")
    _sync(server, acme)
    return acme


def group(
    auth: Authority, maker: Manufacturer, name: str = "sensors", **settings: Any
) -> enrollments.EnrollmentInfo:
    return enrollments.create(
        auth, Kind.GROUP, name, Settings(**settings), signing_cert=maker.pem("signing"), actor="test"
    )


def test_group_allocates_hashed_stably_and_disabling_blocks_at_once(
    server: EstServer, fleet: Manufacturer
) -> None:
    auth = server.authority
    group(auth, fleet, policy=make_policy("sensors", "short-lived", timedelta(days=7)))
    _sync(server, fleet)
    _, key, chain = fleet.device("ACME-0100")
    operational_key = ec.generate_private_key(ec.SECP256R1())
    status, headers, body = curl_enroll(server, chain, key, csr_key=operational_key)
    assert status == 200, body
    assert headers["devid-hub"] in {"hub-eu", "hub-us", "hub-ap"}
    assert headers["devid-device-id"] == "ACME-0100" and headers["devid-policy"] == "short-lived"
    [ldevid] = certs_from_b64_pkcs7(body)
    assert ldevid.not_valid_after_utc - ldevid.not_valid_before_utc <= timedelta(days=7, minutes=10)
    with reading(auth.engine) as conn:
        device = repo.device_by_serial(conn, "ACME-0100")
    assert device is not None and device.hub_id is not None
    # Renewal with the LDevID: same hub, announced again.
    ldevid_files = _save(server, "ACME-0100", ldevid, operational_key)
    renew_key = ec.generate_private_key(ec.SECP256R1())
    status, headers2, body = curl_enroll(
        server, *ldevid_files, op="simplereenroll", body=renewal_csr_b64(renew_key, ldevid)
    )
    assert status == 200 and headers2["devid-hub"] == headers["devid-hub"], body
    [renewed] = certs_from_b64_pkcs7(body)
    renewed_files = _save(server, "ACME-0100", renewed, renew_key)
    # Disable the group: renewals and new registrations are refused at once, nothing changes.
    enrollments.update(auth, Kind.GROUP, "sensors", enabled=False, actor="test")
    before = counts(auth)
    again = renewal_csr_b64(ec.generate_private_key(ec.SECP256R1()), renewed)
    status, _, body = curl_enroll(server, *renewed_files, op="simplereenroll", body=again)
    assert status == 403 and b"enrollment-disabled" in body
    _, key2, chain2 = fleet.device("ACME-0101")
    status, _, body = curl_enroll(server, chain2, key2)
    assert status == 403 and b"enrollment-disabled" in body
    assert counts(auth) == before
    enrollments.update(auth, Kind.GROUP, "sensors", enabled=True, actor="test")
    assert curl_enroll(server, chain2, key2)[0] == 200


def _save(
    server: EstServer, serial: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    key_file = write_key(server.root_pem.parent / f"{serial}-ldevid.key", key)
    out = server.root_pem.parent / f"{serial}-ldevid.pem"
    out.write_bytes(
        cert.public_bytes(_PEM)
        + b"".join(c.public_bytes(_PEM) for c in server.authority.chain("operational"))
    )
    return out, key_file


def test_static_and_lowest_latency_allocation(server: EstServer, fleet: Manufacturer) -> None:
    auth = server.authority
    hubs.update(auth, "hub-us", latencies={"eu": 90.0, "sa": 40.0}, actor="test")
    hubs.update(auth, "hub-eu", latencies={"eu": 12.0, "sa": 120.0}, actor="test")
    enrollments.create(
        auth,
        Kind.INDIVIDUAL,
        "ACME-0200",
        Settings(allocation=Allocation.STATIC, hubs=("hub-ap",)),
        actor="test",
    )
    group(auth, fleet, allocation=Allocation.LOWEST_LATENCY)
    _sync(server, fleet)
    _, key, chain = fleet.device("ACME-0200")
    assert curl_enroll(server, chain, key)[1]["devid-hub"] == "hub-ap"
    for serial, region, hub in (
        ("ACME-0201", "sa", "hub-us"),
        ("ACME-0202", "eu", "hub-eu"),
        ("ACME-0203", "ap", "hub-ap"),
    ):
        _, key, chain = fleet.device(serial)
        status, headers, body = curl_enroll(server, chain, key, headers={"Devid-Region": region})
        assert status == 200 and headers["devid-hub"] == hub, (serial, body)


@contextmanager
def webhook(answer: Any, delay: float = 0.0) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A custom-allocation webhook on loopback (a real aiohttp server in its own thread)."""
    import asyncio

    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        await asyncio.sleep(delay)
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/json")
        return web.json_response(answer)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/allocate", handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/allocate", seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_custom_allocation_webhook(server: EstServer, fleet: Manufacturer) -> None:
    auth = server.authority
    with webhook({"hub": "hub-us", "properties": {"tier": "gold"}}) as (url, seen):
        group(auth, fleet, allocation=Allocation.CUSTOM, webhook_url=url, properties={"fw": "1.2"})
        _sync(server, fleet)
        _, key, chain = fleet.device("ACME-0300")
        status, headers, body = curl_enroll(server, chain, key)
    assert status == 200 and headers["devid-hub"] == "hub-us", body
    assert seen[0]["registration_id"] == "ACME-0300" and set(seen[0]["hubs"]) == {
        "hub-eu",
        "hub-us",
        "hub-ap",
    }
    with reading(auth.engine) as conn:
        device = repo.device_by_serial(conn, "ACME-0300")
    assert device is not None and json.loads(device.properties) == {"fw": "1.2", "tier": "gold"}


@pytest.mark.parametrize(
    ("answer", "delay", "code"),
    [
        (b"<html>not json</html>", 0.0, b"allocation-webhook-garbage"),
        ({"hub": "hub-mars"}, 0.0, b"allocation-webhook-garbage"),
        ({"hub": "hub-us"}, 4.0, b"allocation-webhook-timeout"),
    ],
)
def test_failing_custom_webhook_changes_nothing(
    server: EstServer, fleet: Manufacturer, answer: Any, delay: float, code: bytes
) -> None:
    auth = server.authority
    with webhook(answer, delay) as (url, _):
        group(auth, fleet, allocation=Allocation.CUSTOM, webhook_url=url)
        _sync(server, fleet)
        _, key, chain = fleet.device("ACME-0301")
        before = counts(auth)
        status, _, body = curl_enroll(server, chain, key)
    assert status == 502 and code in body, body
    assert counts(auth) == before


def test_unreachable_custom_webhook_and_no_enabled_hub_change_nothing(
    server: EstServer, fleet: Manufacturer
) -> None:
    auth = server.authority
    # Nothing listens on port 1: the webhook cannot be reached (502).
    group(auth, fleet, allocation=Allocation.CUSTOM, webhook_url="http://127.0.0.1:1/allocate")
    _sync(server, fleet)
    _, key, chain = fleet.device("ACME-0302")
    before = counts(auth)
    status, _, body = curl_enroll(server, chain, key)
    assert status == 502 and b"allocation-webhook-unreachable" in body, body
    assert counts(auth) == before
    # Every hub of a hashed group disabled: there is nowhere to allocate (503).
    enrollments.update(auth, Kind.GROUP, "sensors", settings=Settings(), actor="test")
    for hub in ("hub-eu", "hub-us", "hub-ap"):
        hubs.update(auth, hub, enabled=False, actor="test")
    before = counts(auth)
    status, _, body = curl_enroll(server, chain, key)
    assert status == 503 and b"no-hub" in body, body
    assert counts(auth) == before


def test_reprovision_reset_moves_device_to_its_individual_enrollment(
    server: EstServer, fleet: Manufacturer
) -> None:
    auth = server.authority
    group(auth, fleet, allocation=Allocation.STATIC, hubs=("hub-eu",), properties={"site": "berlin"})
    _sync(server, fleet)
    _, key, chain = fleet.device("ACME-0400")
    assert curl_enroll(server, chain, key)[1]["devid-hub"] == "hub-eu"
    enrollments.create(
        auth, Kind.INDIVIDUAL, "ACME-0400",
        Settings(
            allocation=Allocation.STATIC, hubs=("hub-us",), reprovision=Reprovision.RESET,
            properties={"site": "austin"},
        ),
        actor="test",
    )  # fmt: skip
    # IDevID re-enrollment (the base label's `renew` policy allows the fallback) re-registers it.
    status, headers, body = curl_enroll(server, chain, key)
    assert status == 200 and headers["devid-hub"] == "hub-us", body
    with reading(auth.engine) as conn:
        device = repo.device_by_serial(conn, "ACME-0400")
    assert device is not None and json.loads(device.properties) == {"site": "austin"}


def test_devid_factory_devices_join_a_group_by_devid_manufacturing_ca(
    server: EstServer, tmp_path: Path
) -> None:
    auth = server.authority
    hubs.create(auth, "hub-1", "mqtts://one.example:8883", actor="test")
    enrollments.create(
        auth, Kind.GROUP, "own", Settings(allocation=Allocation.HASHED),
        signing_cert=auth.cas["manufacturing"].certificate.public_bytes(_PEM), actor="test",
    )  # fmt: skip
    device = provision(auth, "OWN-1", tmp_path / "devices")
    status, headers, body = curl_enroll(server, *device.idevid_files)
    assert status == 200 and headers["devid-hub"] == "hub-1", body


def test_stale_version_conflicts_and_changes_nothing(server: EstServer, fleet: Manufacturer) -> None:
    auth = server.authority
    info = group(auth, fleet)
    enrollments.update(
        auth, Kind.GROUP, "sensors", settings=Settings(hubs=("hub-eu",)), version=info.version, actor="a"
    )
    with pytest.raises(ConflictError):
        enrollments.update(
            auth, Kind.GROUP, "sensors", settings=Settings(hubs=("hub-us",)), version=info.version, actor="b"
        )
    with reading(auth.engine) as conn:
        assert enrollments.get(conn, Kind.GROUP, "sensors").settings.hubs == ("hub-eu",)


def test_group_signing_cert_must_chain_to_a_registered_ca(server: EstServer, acme: Manufacturer) -> None:
    with pytest.raises(DevidError) as err:
        group(server.authority, acme)
    assert err.value.code == "signing-cert-untrusted"


def test_registry_snapshot_follows_generation(server: EstServer, fleet: Manufacturer) -> None:
    registry = Registry(server.authority)
    first = registry.snapshot()
    assert registry.snapshot() is first  # unchanged generation: cached
    hubs.create(server.authority, "hub-new", "mqtts://new.example:8883", actor="test")
    assert "hub-new" in registry.snapshot().hubs


_PEM = serialization.Encoding.PEM
