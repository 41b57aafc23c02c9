"""The dashboard's counters stay exact whatever changes the rows: after issuance, renewal
(superseding), revocation of a lot, a hold lifted, a device state change and a hub allocation, the
counter-based overview equals a direct scan of the tables (SQLite and PostgreSQL), and a key
certified for two devices is noted for `devid health`. And
`devid bench ui` fills a small store, serves the real app and reports every page's figures."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, ok
from sqlalchemy import func, select, update

from devid.authority.core import Authority
from devid.authority.devices import set_state
from devid.authority.health import Windows, shared_public_key
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke, unrevoke
from devid.bench.ui import scan_overview
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.registry import hubs as hub_registry
from devid.store import counters
from devid.store.counters import Dimension
from devid.store.engine import reading, writing
from devid.store.models import (
    cas,
    certificate_counts,
    certificates,
    device_counts,
    devices,
    hubs,
    shared_public_keys,
)
from devid.store.states import DeviceState
from devid.ui import queries


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _lot(authority: Authority, lot: str, n: int) -> list[str]:
    serials = [f"{lot}-{i}" for i in range(n)]
    authority.issue_many(
        [IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(s, "m1", lot=lot)) for s in serials]
    )
    authority.issue_many(
        [
            IssueRequest(ProfileName.LDEVID, _key(), device_serial=s, lifetime=timedelta(days=10 + 50 * i))
            for i, s in enumerate(serials)
        ]
    )
    return serials


def _assert_exact(authority: Authority) -> None:
    now = authority.clock.now()
    # Within the chart's 52 weeks whatever the time of day (it counts whole days from today).
    horizon = now + timedelta(weeks=queries.WEEKS) - timedelta(days=1)
    with reading(authority.engine) as conn:
        counted = queries.overview(conn, now)
        states, buckets = scan_overview(conn, now)
        by_hub = dict(
            conn.execute(
                select(func.coalesce(devices.c.hub_id, 0), func.count()).group_by(devices.c.hub_id)
            ).all()
        )
        counted_hubs = dict(
            conn.execute(
                select(device_counts.c.ref, func.sum(device_counts.c.n))
                .where(device_counts.c.dimension == Dimension.HUB.value, device_counts.c.n != 0)
                .group_by(device_counts.c.ref)
            ).all()
        )
        weeks = queries.expiry_weeks(conn, now)
        valid_ahead = conn.execute(
            select(certificates.c.profile, func.count())
            .where(
                certificates.c.status == "valid",
                certificates.c.not_after >= now.replace(hour=0, minute=0, second=0, microsecond=0),
                certificates.c.not_after < horizon,
            )
            .group_by(certificates.c.profile)
        ).all()
        ca_ahead = conn.execute(
            select(func.count()).where(
                cas.c.not_after < now + timedelta(weeks=queries.WEEKS) - timedelta(days=1)
            )
        ).scalar_one()
    assert counted.device_states == states
    assert counted.certificates == {k: v for k, v in buckets.items() if v}
    assert counted_hubs == by_hub
    charted: dict[str, int] = {}
    for week in weeks:
        for profile, n in week.items():
            charted[profile] = charted.get(profile, 0) + n
    assert {p: charted.get(p, 0) for p, _ in valid_ahead} == dict(valid_ahead)
    assert charted.get(queries.CA_PROFILE, 0) == ca_ahead


def test_counters_equal_a_scan_after_every_kind_of_change(authority: Authority) -> None:
    _assert_exact(authority)  # a fresh store (the migration's backfill)
    lot_a = _lot(authority, "LOT-A", 5)
    lot_b = _lot(authority, "LOT-B", 4)
    _assert_exact(authority)
    # Renewal: the LDevIDs of two devices are superseded by new ones.
    authority.issue_many(
        [IssueRequest(ProfileName.LDEVID, _key(), device_serial=s, supersedes_held=True) for s in lot_a[:2]]
    )
    _assert_exact(authority)
    revoke(authority, RevokeRequest(Selector.LOT, "LOT-A", Reason.KEY_COMPROMISE), "t")
    revoke(authority, RevokeRequest(Selector.LOT, "LOT-B", Reason.CERTIFICATE_HOLD), "t")
    _assert_exact(authority)
    unrevoke(authority, Selector.LOT, "LOT-B", "t")
    set_state(authority, lot_b[0], DeviceState.INACTIVE, "t")
    hub_registry.create(authority, "hub-1", "mqtts://hub-1.example")
    with writing(authority.engine) as conn:  # as the registry's allocation writes it
        hub = select(hubs.c.id).where(hubs.c.name == "hub-1").scalar_subquery()
        conn.execute(update(devices).where(devices.c.serial.in_(lot_b[1:])).values(hub_id=hub))
    _assert_exact(authority)
    with reading(authority.engine) as conn:
        assert (
            conn.execute(select(func.sum(certificate_counts.c.n))).scalar_one()
            == conn.execute(select(func.count()).select_from(certificates)).scalar_one()
        )
    # A key certified for a second device (by a write issuance would refuse) is noted as shared,
    # and `devid health` finds it from that note.
    with writing(authority.engine) as conn:
        key = select(certificates.c.public_key_fingerprint).where(certificates.c.id == 1).scalar_subquery()
        conn.execute(update(certificates).where(certificates.c.id == 2).values(public_key_fingerprint=key))
    with reading(authority.engine) as conn:
        shared = shared_public_key(conn, authority.clock.now(), Windows(), 5, None)
    assert shared.count == 1 and shared.examples[0].endswith(f": {lot_a[0]}, {lot_a[1]}")
    # A rebuild (the migration's backfill) finds what the triggers kept.
    with reading(authority.engine) as conn:
        kept = sorted(map(tuple, conn.execute(select(device_counts).where(device_counts.c.n != 0)).all()))
    with writing(authority.engine) as conn:
        counters.rebuild(conn)
    with reading(authority.engine) as conn:
        assert sorted(map(tuple, conn.execute(select(device_counts)).all())) == kept
        assert conn.execute(select(func.count()).select_from(shared_public_keys)).scalar_one() == 1


def test_concurrent_issuance_and_revocation_keep_counters_exact(authority: Authority) -> None:
    """Issuance writes devices then certificates, revocation the reverse: on PostgreSQL the two
    must neither deadlock on the counter rows nor lose a count."""
    lots = [f"LOT-R{i}" for i in range(4)]
    for lot in lots:
        _lot(authority, lot, 3)

    def issue() -> None:
        for i in range(4):
            _lot(authority, f"LOT-N{i}", 3)

    def revoke_lots() -> None:
        for lot in lots:
            revoke(authority, RevokeRequest(Selector.LOT, lot, Reason.KEY_COMPROMISE), "t")

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(issue), pool.submit(revoke_lots)]:
            done.result()
    _assert_exact(authority)


def test_bench_ui_reports_every_page() -> None:
    out = ok(devid("bench", "ui", "--devices", "2000", "--json")).stdout
    figures = {line["name"]: line for line in map(json.loads, out.splitlines()) if line}
    assert figures["ui.fill_s"]["unit"] == "s"
    counts = figures["ui.overview_counts_ms"]
    assert counts["value"] > 0 and counts["baseline"] > 0 and counts["baseline_name"]
    pages = ("/ui", "/ui/health", "/ui/devices", "/ui/devices/{serial}", "/ui/renewals", "/ui/revocations")
    for route in (*pages, "/ui/audit"):
        assert figures[f"ui.median_ms {route}"]["value"] > 0
        assert figures[f"ui.p95_ms {route}"]["unit"] == "ms"
        assert "answered" not in figures[f"ui.median_ms {route}"]["note"], route  # a 200, not an error
