"""`devid revocation report`: sizes measured from what was really signed, and the link arithmetic."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid
from sqlalchemy import select, update

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.cli.revocation_cmd import report_rows
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.registry import hubs
from devid.revocation import crl, records
from devid.revocation.publisher import Publisher
from devid.revocation.report import FRAME_AIRTIME_S, Row, lora_airtime
from devid.store.engine import reading, writing
from devid.store.models import devices
from devid.store.models import hubs as hub_table

PASSPHRASE = b"correct horse battery staple"


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.fixture
def store(tmp_path: Path, clock: FixedClock) -> Iterator[tuple[Home, Authority]]:
    """A home with a public URL (so shard CRLs exist): 40 devices in two lots with IDevIDs, LDevIDs
    and short-lived certificates, 30 of them on one hub; lot A revoked between two publications."""
    home = init_home(
        tmp_path / "home", org="Report Org", passphrase=PASSPHRASE, public_url="http://127.0.0.1:9"
    )
    auth = open_authority(home, PASSPHRASE, clock=clock)
    serials = [f"{lot}-{i}" for lot in ("A", "B") for i in range(20)]
    auth.issue_many(
        [IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(s, "m", lot=s[0])) for s in serials]
    )
    auth.issue_many([IssueRequest(ProfileName.LDEVID, _key(), device_serial=s) for s in serials])
    auth.issue_many(
        [IssueRequest(ProfileName.LDEVID, _key(), device_serial=s, short_lived=True) for s in serials]
    )
    hubs.create(auth, "hub-eu", "mqtts://hub.example:8883")
    hub_id = select(hub_table.c.id).where(hub_table.c.name == "hub-eu").scalar_subquery()
    with writing(auth.engine) as conn:  # as allocation would have placed them
        conn.execute(update(devices).where(devices.c.serial.in_(serials[10:])).values(hub_id=hub_id))
    Publisher(auth).publish()
    revoke(auth, RevokeRequest(Selector.LOT, "A", Reason.KEY_COMPROMISE), "test")
    Publisher(auth).publish()
    try:
        yield home, auth
    finally:
        auth.close()


def test_lora_airtime_matches_the_semtech_calculator() -> None:
    # The LoRa airtime formula (125 kHz, CR 4/5, 8 preamble symbols, explicit header, no CRC) for a
    # LoRaWAN frame of 51 and of 0 application bytes (13 bytes of header and MIC around them).
    assert FRAME_AIRTIME_S == lora_airtime(51) == pytest.approx(2.7935, abs=0.0001)
    assert lora_airtime(0, sf=7) == pytest.approx(0.0412, abs=0.0001)
    per_hour = 3600 * 0.01 / FRAME_AIRTIME_S * 51
    assert 600 < per_hour < 700  # "about 650 B per hour"


def test_rows_are_what_was_signed_and_consistent(store: tuple[Home, Authority]) -> None:
    _, auth = store
    rows = {row.name: row for row in report_rows(auth)}
    for ca in ("manufacturing", "operational"):
        for name in (f"crl {ca}", f"delta-crl {ca}", f"filter {ca}", f"filter-delta {ca}", f"ocsp {ca}"):
            assert name in rows, (name, sorted(rows))
    with reading(auth.engine) as conn:
        full = records.latest(conn, crl.FULL, "operational")
        delta = records.latest(conn, crl.DELTA, "operational")
        shards = [records.latest(conn, crl.FULL, crl.scope("operational", n)) for n in range(16)]
    assert full is not None and delta is not None
    assert rows["crl operational"].bytes == len(full.data)
    # The full CRL was built before lot A was revoked: the delta carries its 20 LDevIDs.
    assert len(x509.load_der_x509_crl(delta.data)) == 20 and rows["delta-crl operational"].bytes == len(
        delta.data
    )
    shard = next(r for name, r in rows.items() if name.startswith("crl operational/"))
    assert shard.bytes == max(len(found.data) for found in shards if found is not None)
    assert shard.detail.startswith("largest of 16 shards, 2 entries")  # lot A's 20 LDevIDs over 16 shards
    assert rows["allowlist hub-eu"].detail == "20 active devices"  # 30 on the hub, 10 of them in lot A
    # 20 short-lived certificates of lot A were revoked and never enter a CRL.
    saved = rows["crl-saved operational"]
    assert saved.detail.startswith("20 revoked short-lived x ") and 20 * 30 < saved.bytes < 20 * 60
    assert rows["crl-saved manufacturing"].bytes == 0
    for row in rows.values():
        assert row.lorawan_frames == math.ceil(row.bytes / 51)
        assert row.nbiot_s == pytest.approx(row.bytes * 8 / 26_000)
        assert row.lorawan_hours == pytest.approx(row.lorawan_frames * FRAME_AIRTIME_S / 0.01 / 3600)
    assert rows["filter-delta operational"].bytes < rows["filter operational"].bytes + 16
    # The compact answer about the same revoked certificate as the OCSP rows: a COSE_Sign1 of 119
    # bytes (3 LoRaWAN frames) where the OCSP response needs 16 (7 without its responder certificate).
    for ca in ("manufacturing", "operational"):
        compact, full, bare = rows[f"cose-status {ca}"], rows[f"ocsp {ca}"], rows[f"ocsp-nocert {ca}"]
        assert compact.detail.startswith("revoked certificate, COSE_Sign1")
        assert compact.bytes == 119 and compact.lorawan_frames == 3
        assert 2 * compact.bytes < bare.bytes < full.bytes - 400


def test_an_unpublished_store_is_published_first(tmp_path: Path) -> None:
    home = init_home(tmp_path / "home", org="Fresh Org", passphrase=PASSPHRASE)
    auth = open_authority(home, PASSPHRASE)
    try:
        auth.issue(IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("D-1", "m")))
        names = [row.name for row in report_rows(auth)]
        assert "crl manufacturing" in names and "ocsp manufacturing" in names
        assert not any(name.startswith("crl manufacturing/") for name in names)  # no public URL: no shards
    finally:
        auth.close()


def test_cli_json_and_table(store: tuple[Home, Authority]) -> None:
    home, auth = store
    auth.close()
    done = devid("revocation", "report", "--json", "--home", home.path)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"name", "bytes", "nbiot_s", "lorawan_frames", "lorawan_hours"} <= set(rows[0])
    for row in rows:
        assert row["lorawan_frames"] == math.ceil(row["bytes"] / 51)
        expected = Row(row["name"], row["bytes"])
        assert row["nbiot_s"] == round(expected.nbiot_s, 3)
        assert row["lorawan_hours"] == round(expected.lorawan_hours, 3)
    table = devid("revocation", "report", "--home", home.path)
    assert table.returncode == 0, table.stderr
    assert "crl operational" in table.stdout and "about 6" in table.stdout and "B per hour" in table.stdout
