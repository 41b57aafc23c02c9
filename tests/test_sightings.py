"""Gateways' sightings and the revoked-still-connected check: what a report keeps, what it marks
(a revoked certificate connected past the cut's grace), and the finding `devid health` and the
dashboard show, naming the device and the gateway."""

from __future__ import annotations

from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update

from devid.authority.core import Authority
from devid.authority.health import Finding, Severity, Windows, run_checks
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke, unrevoke
from devid.authority.sightings import CUT_GRACE, Recorded, Sighting, record
from devid.clock import FixedClock
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.store.engine import reading, writing
from devid.store.models import certificates, devices, sightings

MINUTE = timedelta(minutes=1)


def _ldevids(auth: Authority, *serials: str) -> dict[str, str]:
    """Devices with an LDevID each; their LDevIDs' fingerprints by device."""
    key = lambda: ec.generate_private_key(ec.SECP256R1()).public_key()  # noqa: E731
    auth.issue_many([IssueRequest(ProfileName.IDEVID, key(), new_device=NewDevice(s)) for s in serials])
    for serial in serials:
        auth.issue(IssueRequest(ProfileName.LDEVID, key(), device_serial=serial))
    with reading(auth.engine) as conn:
        rows = conn.execute(
            select(devices.c.serial, certificates.c.fingerprint)
            .join(certificates, certificates.c.device_id == devices.c.id)
            .where(certificates.c.profile == ProfileName.LDEVID)
        )
        return {r.serial: r.fingerprint for r in rows}


def _finding(auth: Authority, windows: Windows | None = None) -> Finding:
    with reading(auth.engine) as conn:
        found = {f.check: f for f in run_checks(conn, auth.clock.now(), windows or Windows())}
    return found["revoked-still-connected"]


def test_no_gateway_reporting_is_said_not_read_as_healthy(auth: Authority) -> None:
    _ldevids(auth, "quiet")
    finding = _finding(auth)
    assert (finding.count, finding.severity) == (0, Severity.INFO)
    assert "no gateway reports" in finding.note


def test_a_revoked_certificate_seen_past_the_grace_is_critical_and_named(
    auth: Authority, clock: FixedClock
) -> None:
    fp = _ldevids(auth, "good", "cut-fast", "still-on", "cut-before")
    start = clock.now()
    first = record(auth, "gw-1", [Sighting(f, start, start) for f in fp.values()])
    assert first == Recorded(4, 0, 0)
    assert _finding(auth).count == 0 and _finding(auth).severity is Severity.CRITICAL  # now it can look

    clock.advance(MINUTE)
    revoked_at = clock.now()
    for serial in ("cut-fast", "still-on", "cut-before"):
        revoke(auth, RevokeRequest(Selector.DEVICE, serial, Reason.KEY_COMPROMISE), "op")
    clock.advance(10 * MINUTE)
    now = clock.now()
    report = [
        Sighting(fp["good"], start, now),
        # Cut a few seconds after its revocation: an enforcing gateway's normal delay.
        Sighting(fp["cut-fast"], start, revoked_at + timedelta(seconds=3)),
        Sighting(fp["still-on"], start, now),
        Sighting(fp["cut-before"], start, revoked_at - timedelta(seconds=1)),
        Sighting("ab" * 32, start, now),  # not a certificate this store issued
    ]
    assert record(auth, "gw-1", report) == Recorded(4, 1, 1)
    # The same certificate at a second gateway whose clock runs an hour ahead: clamped to now.
    assert record(auth, "gw-2", [Sighting(fp["still-on"], now, now + 60 * MINUTE)]) == Recorded(1, 0, 1)

    finding = _finding(auth)
    assert (finding.count, finding.severity, finding.failing) == (2, Severity.CRITICAL, True)
    assert all(e.startswith("still-on (certificate ") for e in finding.examples)
    assert {e.split(" at gateway ")[1].split(",")[0] for e in finding.examples} == {"gw-1", "gw-2"}
    assert "10 min after its revocation" in finding.examples[0]
    with reading(auth.engine) as conn:
        rows = {(r.gateway, r.first_seen, r.last_seen) for r in conn.execute(select(sightings))}
    assert ("gw-2", now, now) in rows  # nothing dated in the future
    assert ("gw-1", start, now) in rows  # a row keeps its first sighting and moves its last on


def test_the_grace_is_the_boundary_and_a_later_report_does_not_unmark(
    auth: Authority, clock: FixedClock
) -> None:
    fp = _ldevids(auth, "edge")
    revoke(auth, RevokeRequest(Selector.DEVICE, "edge", Reason.KEY_COMPROMISE), "op")
    revoked_at = clock.now()
    clock.advance(CUT_GRACE * 2)
    assert record(auth, "gw", [Sighting(fp["edge"], revoked_at, revoked_at + CUT_GRACE)]).revoked == 0
    assert _finding(auth).count == 0
    late = revoked_at + CUT_GRACE + timedelta(seconds=1)
    assert record(auth, "gw", [Sighting(fp["edge"], revoked_at, late)]).revoked == 1
    # An older report arriving late neither moves the last sighting back nor clears the mark, nor
    # moves the mark back.
    assert record(auth, "gw", [Sighting(fp["edge"], revoked_at, revoked_at)]).revoked == 0
    earlier_mark = revoked_at + CUT_GRACE + timedelta(microseconds=500)
    assert record(auth, "gw", [Sighting(fp["edge"], revoked_at, earlier_mark)]).revoked == 1
    with reading(auth.engine) as conn:
        row = conn.execute(select(sightings)).one()
    assert (row.last_seen, row.revoked_seen_at) == (late, late)
    assert _finding(auth).count == 1


def test_a_lifted_hold_is_no_longer_reported(auth: Authority, clock: FixedClock) -> None:
    fp = _ldevids(auth, "held")
    revoke(auth, RevokeRequest(Selector.DEVICE, "held", Reason.CERTIFICATE_HOLD), "op")
    clock.advance(10 * MINUTE)
    record(auth, "gw", [Sighting(fp["held"], clock.now(), clock.now())])
    assert _finding(auth).count == 1
    unrevoke(auth, Selector.DEVICE, "held", "op")
    assert _finding(auth).count == 0


def test_an_old_mark_stops_counting_and_old_rows_go_with_their_gateways_next_report(
    auth: Authority, clock: FixedClock
) -> None:
    fp = _ldevids(auth, "gone", "here")
    revoke(auth, RevokeRequest(Selector.DEVICE, "gone", Reason.KEY_COMPROMISE), "op")
    clock.advance(10 * MINUTE)
    now = clock.now()
    record(auth, "gw-a", [Sighting(fp["gone"], now, now)])
    record(auth, "gw-b", [Sighting(fp["gone"], now, now)])
    assert _finding(auth).count == 2
    clock.advance(timedelta(days=8))  # "still connected" means within the window (7 days by default)
    assert _finding(auth).count == 0 and _finding(auth, Windows(connected_days=10)).count == 2
    clock.advance(timedelta(days=23))  # 31 days unseen: past retention
    later = clock.now()
    record(auth, "gw-a", [Sighting(fp["here"], later, later)])  # gw-a's report drops its own old rows
    with reading(auth.engine) as conn:
        rows = sorted((r.gateway, r.certificate_id) for r in conn.execute(select(sightings)))
        ids = dict(conn.execute(select(certificates.c.fingerprint, certificates.c.id)).all())
    assert rows == sorted([("gw-a", ids[fp["here"]]), ("gw-b", ids[fp["gone"]])])


def test_upsert_on_sqlite_and_postgresql(authority: Authority) -> None:
    """The ON CONFLICT spelling of each store: the last sighting and the mark only move on."""
    fp = _ldevids(authority, "both")["both"]
    revoke(authority, RevokeRequest(Selector.DEVICE, "both", Reason.KEY_COMPROMISE), "op")
    now = authority.clock.now()
    before = now - 30 * MINUTE
    assert record(authority, "gw", [Sighting(fp, before, now + 60 * MINUTE)]).revoked == 0  # clamped to now
    with writing(authority.engine) as conn:  # as if revoked 20 minutes ago
        conn.execute(
            update(certificates).where(certificates.c.fingerprint == fp).values(revoked_at=now - 20 * MINUTE)
        )
    assert record(authority, "gw", [Sighting(fp, before, now)]) == Recorded(1, 0, 1)
    assert record(authority, "gw", [Sighting(fp, before, now - 10 * MINUTE)]) == Recorded(1, 0, 1)
    assert record(authority, "gw", [Sighting(fp, before - MINUTE, before)]) == Recorded(1, 0, 0)
    with reading(authority.engine) as conn:
        row = conn.execute(select(sightings)).one()
    # The last sighting is the clamped first report's (the store's clock then, just after `now`).
    assert (row.first_seen, row.revoked_seen_at) == (before, now) and now <= row.last_seen < now + MINUTE
