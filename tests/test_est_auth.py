"""EST authentication under attack: no body is read for an anonymous request, and failed
authentication is limited per peer address and per claimed identity, audited in aggregate."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from est_helpers import (
    Device,
    EstServer,
    Response,
    csr_b64,
    https,
    path,
    provision,
    renewal_csr_b64,
    save_identity,
)
from sqlalchemy import func, select, update

from devid.authority.auth_failures import ACTION, ANY, PER_IDENTITY, PER_PEER, FailedAuthentications
from devid.authority.core import Authority
from devid.authority.devices import create_enrollment_secret, set_state
from devid.clock import FixedClock
from devid.store import repo
from devid.store.models import audit_events

EVENTS = audit_events


@pytest.fixture
def device(auth: Authority, tmp_path: Path) -> Device:
    return provision(auth, "SN-0001", tmp_path / "devices")


def audit_count(auth: Authority) -> int:
    with auth.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(EVENTS)).scalar_one())


def aggregates(auth: Authority) -> list[dict[str, Any]]:
    with auth.engine.connect() as conn:
        rows = conn.execute(select(EVENTS.c.detail).where(EVENTS.c.action == ACTION).order_by(EVENTS.c.seq))
        return [json.loads(r.detail) for r in rows]


def basic(server: EstServer, user: str, password: str, source: str = "127.0.0.1") -> Response:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return https(
        server,
        "POST",
        path("simpleenroll"),
        csr_b64(ec.generate_private_key(ec.SECP256R1())),
        headers={"Authorization": f"Basic {token}"},
        source_address=source,
    )


def test_anonymous_enrollment_is_refused_before_its_body(server: EstServer) -> None:
    """Headers announcing a body that never comes: the 401 arrives at once, the body is not awaited."""
    ctx = ssl.create_default_context(cafile=str(server.root_pem))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/pkcs10\r\nContent-Length: 60000\r\n\r\n"
        )
        tls.settimeout(3)
        started = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = tls.recv(4096)
            assert chunk, head
            head += chunk
        elapsed = time.monotonic() - started
    status_line, *header_lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 401"), head
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert headers["Devid-Error"] == "auth-required"
    assert elapsed < 2, elapsed


def test_failed_basic_authentication_is_limited_and_audited_once(
    server: EstServer, device: Device, clock: FixedClock, tmp_path: Path
) -> None:
    auth = server.authority
    secret = create_enrollment_secret(auth, device.serial, "test")
    other = provision(auth, "SN-0002", tmp_path / "devices")
    other_secret = create_enrollment_secret(auth, other.serial, "test")
    before = audit_count(auth)

    answers = [basic(server, device.serial, f"guess-{i}") for i in range(PER_IDENTITY + 7)]
    assert [a.status for a in answers] == [401] * PER_IDENTITY + [429] * 7
    limited = answers[-1]
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["Devid-Error"] == "rate-limited"
    # The right secret from the same address is refused too while the limit holds ...
    assert basic(server, device.serial, secret).status == 429
    # ... and one row in the audit log stands for all of them so far.
    assert audit_count(auth) - before == 1

    # Another device, from another address, is not affected.
    assert basic(server, other.serial, other_secret, source="127.0.0.2").status == 200

    # Spraying serials from one address: limited per address.
    sprayed = [basic(server, f"SN-9{i:03d}", "x", source="127.0.0.3") for i in range(PER_PEER + 3)]
    assert [a.status for a in sprayed] == [401] * PER_PEER + [429] * 3

    # Once the window has passed, the next request writes the aggregate events, and the device's
    # right secret works again.
    clock.advance(timedelta(minutes=1, seconds=1))
    rows_before_window_close = audit_count(auth)
    assert basic(server, device.serial, secret).status == 200
    found = {(a["peer"], a["identity"]): a for a in aggregates(auth)}
    mine = found[("127.0.0.1", device.serial)]
    assert (mine["failures"], mine["limited"], mine["codes"]) == (PER_IDENTITY, 8, ["enroll-secret"])
    assert mine["first"] <= mine["last"]
    assert found[("127.0.0.3", ANY)]["limited"] == 3
    # Per window: one aggregate per (address, identity) that failed more than once, plus the
    # issuance of the good enrollment (certificate.issue, secret spent).
    assert audit_count(auth) - rows_before_window_close <= len(found) + 3


def test_failed_certificate_authentication_is_limited(
    server: EstServer, device: Device, tmp_path: Path
) -> None:
    """A revoked LDevID presented again and again: 403 with the reason, then 429."""
    auth = server.authority
    key = ec.generate_private_key(ec.SECP256R1())
    resp = https(server, "POST", path("simpleenroll"), csr_b64(key), cert=device.idevid_files)
    assert resp.status == 200, resp.text
    ldevid = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(resp.body.split())))[0]
    with auth.engine.begin() as conn:
        conn.execute(
            update(repo.certificates)
            .where(repo.certificates.c.fingerprint == ldevid.fingerprint(hashes.SHA256()).hex())
            .values(status="revoked")
        )
    files = save_identity(tmp_path, "ldevid", ldevid, key)
    before = audit_count(auth)
    answers = [
        https(server, "POST", path("simplereenroll"), renewal_csr_b64(key, ldevid), cert=files)
        for _ in range(PER_IDENTITY + 2)
    ]
    assert [a.status for a in answers] == [403] * PER_IDENTITY + [429] * 2
    assert answers[0].headers["Devid-Error"] == "client-cert-revoked"
    assert audit_count(auth) - before == 1
    # The device's IDevID is another identity: it still enrolls.
    again = https(server, "POST", path("simpleenroll"), csr_b64(key), cert=device.idevid_files)
    assert again.status != 429 and again.headers.get("Devid-Error") != "rate-limited", again.text


def test_a_disabled_device_is_refused_not_limited(server: EstServer, device: Device) -> None:
    """Its IDevID authenticates it: a refusal for the device's state is audited under the device,
    and is not a failed authentication (no 429, however often it retries)."""
    auth = server.authority
    set_state(auth, device.serial, "INACTIVE", "test")
    key = ec.generate_private_key(ec.SECP256R1())
    answers = [
        https(server, "POST", path("simpleenroll"), csr_b64(key), cert=device.idevid_files)
        for _ in range(PER_IDENTITY + 1)
    ]
    assert {(a.status, a.headers["Devid-Error"]) for a in answers} == {(403, "device-not-active")}
    with auth.engine.connect() as conn:
        last = conn.execute(
            select(EVENTS.c.action, EVENTS.c.subject, EVENTS.c.detail).order_by(EVENTS.c.seq.desc())
        ).first()
    assert last is not None
    assert (last.action, last.subject) == ("est.simpleenroll", device.serial)
    assert json.loads(last.detail)["credential"] == "idevid"


def test_failure_counters_stay_bounded() -> None:
    """Identities sprayed from many addresses cannot grow the counters past `max_tracked`: the
    oldest windows are dropped (counters) or closed early (aggregates)."""
    failures = FailedAuthentications(max_tracked=3)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(10):
        for _ in range(2):
            failures.failed(f"10.0.0.{i}", f"SN-{i}", "enroll-secret", now)
    written = failures.closed(now)
    assert len(written) == 7  # each pair failed twice: one aggregate each, the 7 oldest closed early
    assert {e.subject for e in written} == {f"SN-{i}" for i in range(7)}
    assert len(failures.drain()) == 3
    assert failures.drain() == []
