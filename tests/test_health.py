"""Fleet health checks: a small real store that trips every check (and near misses that must not),
a healthy one that trips none, and `devid health --json` with its exit status."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from e2e import devid
from sqlalchemy import insert, select, update

from devid.authority.core import Authority
from devid.authority.devices import approval_pending, approve, set_state
from devid.authority.health import Finding, Severity, Windows, run_checks
from devid.authority.requests import IssueRequest, NewDevice
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import ProfileName
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates, devices, manufacturers
from devid.store.states import DeviceState

DAY = timedelta(days=1)


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _devices(auth: Authority, *serials: str) -> None:
    """Each with an IDevID (no expiry)."""
    auth.issue_many([IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(s)) for s in serials])


def _ldevid(auth: Authority, serial: str, days: float, profile: ProfileName = ProfileName.LDEVID) -> None:
    auth.issue(IssueRequest(profile, _key(), device_serial=serial, lifetime=timedelta(days=days)))


def _findings(auth: Authority, now: datetime) -> dict[str, Finding]:
    with reading(auth.engine) as conn:
        return {f.check: f for f in run_checks(conn, now, Windows())}


def _p384_maker(not_after: datetime) -> dict[str, object]:
    """A manufacturer CA row with a P-384 key (devid never issues for one; a maker's CA may have it)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Maker P-384 CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - 400 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    der = cert.public_bytes(Encoding.DER)
    now = not_after - 400 * DAY
    return {
        "name": "maker384",
        "state": "ACTIVE",
        "auto_register": False,
        "auto_activate": False,
        "subject": name.rfc4514_string(),
        "fingerprint": hashlib.sha256(der).hexdigest(),
        "der": der,
        "not_after": not_after,
        "created_at": now,
        "updated_at": now,
    }


def _troubled_fleet(auth: Authority, clock: FixedClock) -> datetime:
    """Devices tripping every check beside near misses; returns the time to check at (t0 + 9 days)."""
    t0 = clock.now()
    _devices(auth, "stuck", "stuck-inactive", "on-session", "renewing-late", "ok-1", "ok-2", "expiring")
    _devices(auth, "wait-long", "wait-approved", "wait-new")
    for serial in ("stuck", "stuck-inactive", "on-session", "renewing-late"):
        _ldevid(auth, serial, 1)  # all expire at t0 + 1 day
    approval_pending(auth, "wait-long")
    approval_pending(auth, "wait-approved")
    approve(auth, "wait-approved", "op")
    set_state(auth, "stuck-inactive", DeviceState.INACTIVE, "op")

    clock.advance(9 * DAY)
    now = clock.now()
    _ldevid(auth, "on-session", 1 / 24, ProfileName.SESSION)  # back in service without an LDevID
    _ldevid(auth, "renewing-late", 365)  # renewed, 8 days after its LDevID expired: fine now
    _ldevid(auth, "ok-1", 365)
    _ldevid(auth, "ok-2", 365)
    _ldevid(auth, "expiring", 10)
    approval_pending(auth, "wait-new")
    with writing(auth.engine) as conn:
        ok_1_id = select(devices.c.id).where(devices.c.serial == "ok-1").scalar_subquery()
        ok_2_id = select(devices.c.id).where(devices.c.serial == "ok-2").scalar_subquery()
        key_of_ok_1 = (
            select(certificates.c.public_key_fingerprint)
            .where(certificates.c.device_id == ok_1_id, certificates.c.profile == ProfileName.LDEVID)
            .scalar_subquery()
        )
        # Issuance refuses a key already certified for another device: a store that has one got
        # it some other way (an import, a bug), which is what the check is for.
        conn.execute(
            update(certificates)
            .where(certificates.c.device_id == ok_2_id, certificates.c.profile == ProfileName.LDEVID)
            .values(public_key_fingerprint=key_of_ok_1)
        )
        conn.execute(update(cas).where(cas.c.name == "operational").values(not_after=now - DAY))
        conn.execute(insert(manufacturers).values(**_p384_maker(t0 + 100 * DAY)))
    return now


def test_a_troubled_fleet_trips_every_check_and_names_its_devices(auth: Authority, clock: FixedClock) -> None:
    now = _troubled_fleet(auth, clock)
    found = _findings(auth, now)
    assert list(found) == [
        "ca-expiring",
        "device-cert-expiring-no-renewal",
        "revoked-still-connected",
        "shared-public-key",
        "idevid-fallback-stuck",
        "approval-pending-too-long",
        "weak-key",
    ]
    ca = found["ca-expiring"]
    assert (ca.count, ca.severity) == (2, Severity.CRITICAL)  # one expired: critical
    assert ca.examples[0].startswith("ca:operational (expired")
    assert ca.examples[1].startswith("manufacturer:maker384 (expires")

    expiring = found["device-cert-expiring-no-renewal"]
    assert expiring.count == 1 and expiring.examples[0].startswith("expiring (ldevid expires")

    assert (found["revoked-still-connected"].count, found["revoked-still-connected"].severity) == (
        0,
        Severity.INFO,
    )
    assert "data source missing" in found["revoked-still-connected"].note

    shared = found["shared-public-key"]
    assert (shared.count, shared.severity) == (1, Severity.CRITICAL)
    assert shared.examples[0].endswith(": ok-1, ok-2")

    stuck = found["idevid-fallback-stuck"]
    assert stuck.count == 1 and stuck.examples[0].startswith("stuck (LDevID expired")

    waiting = found["approval-pending-too-long"]
    assert waiting.count == 1 and waiting.examples[0].startswith("wait-long (requested")

    assert found["weak-key"].count == 1 and found["weak-key"].examples == ("manufacturer:maker384",)
    assert any(f.failing for f in found.values())


def test_windows_move_what_is_found(auth: Authority, clock: FixedClock) -> None:
    now = _troubled_fleet(auth, clock)
    with reading(auth.engine) as conn:
        found = {
            f.check: f
            for f in run_checks(conn, now, Windows(expiry_days=5, fallback_days=9, approval_days=10), limit=1)
        }
    assert found["device-cert-expiring-no-renewal"].count == 0  # 10 days left, 5-day window
    assert found["idevid-fallback-stuck"].count == 0  # 8 days without, 9 tolerated
    assert found["approval-pending-too-long"].count == 0
    assert found["ca-expiring"].count == 2 and len(found["ca-expiring"].examples) == 1  # capped


def test_a_healthy_fleet_trips_none(auth: Authority, clock: FixedClock) -> None:
    _devices(auth, "a", "b")
    _ldevid(auth, "a", 365)
    _ldevid(auth, "b", 365)
    clock.advance(30 * DAY)
    found = _findings(auth, clock.now())
    assert {f.check: f.count for f in found.values()} == dict.fromkeys(found, 0)
    assert not any(f.failing for f in found.values())


def test_cli_reports_every_check_as_json_and_exits_1_on_a_critical_finding(
    auth: Authority, clock: FixedClock, sqlite_home: Home
) -> None:
    home = sqlite_home.path
    healthy = devid("health", "--json", "--home", home)
    assert healthy.returncode == 0, healthy.stderr
    assert all(json.loads(line)["count"] == 0 for line in healthy.stdout.splitlines())

    _troubled_fleet(auth, clock)
    result = devid("health", "--json", "--home", home, "--fallback-days", "0")
    assert result.returncode == 1, result.stderr
    rows = {row["check"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == 7 and rows["revoked-still-connected"]["severity"] == "info"
    shared = rows["shared-public-key"]
    assert (shared["severity"], shared["count"]) == ("critical", 1)
    assert shared["examples"][0].endswith(": ok-1, ok-2")
    # The command reads the system clock, 9 days before the fleet's: the 1-day LDevIDs of t0 have
    # not expired yet, so they are expiring without renewal (all but the renewed one), not stuck.
    expiring = rows["device-cert-expiring-no-renewal"]
    assert expiring["count"] == 4
    assert rows["idevid-fallback-stuck"]["count"] == 0
