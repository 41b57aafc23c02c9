"""Revocation: selectors, reasons, holds, what changes (and what a refusal leaves alone)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, ok
from sqlalchemy import select

from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, authenticate
from devid.authority.devices import set_state
from devid.authority.requests import Issued, IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke, unrevoke
from devid.config import Home
from devid.errors import ConflictError, CredentialRefused, NotFoundError, PolicyError
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex, serial_index
from devid.store.engine import reading
from devid.store.models import audit_events, cas, certificates, devices, events
from devid.store.states import CertificateStatus, DeviceState


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _fleet(auth: Authority, lot: str, n: int, model: str = "m1") -> list[tuple[Issued, Issued]]:
    """`n` devices of `lot`, each with an IDevID and an LDevID."""
    idevids = auth.issue_many(
        [
            IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(f"{lot}-{i}", model=model, lot=lot))
            for i in range(n)
        ]
    )
    ldevids = auth.issue_many(
        [IssueRequest(ProfileName.LDEVID, _key(), device_serial=f"{lot}-{i}") for i in range(n)]
    )
    return list(zip(idevids, ldevids, strict=True))


def _snapshot(auth: Authority) -> dict[str, Any]:
    with reading(auth.engine) as conn:
        return {
            "certs": conn.execute(select(certificates.c.serial, certificates.c.status)).all(),
            "devices": conn.execute(select(devices.c.serial, devices.c.state, devices.c.version)).all(),
            "events": conn.execute(select(events.c.id)).all(),
            "gens": conn.execute(select(cas.c.name, cas.c.revocation_gen)).all(),
        }


def _status(auth: Authority, issued: Issued) -> Any:
    with reading(auth.engine) as conn:
        return conn.execute(
            select(certificates).where(certificates.c.fingerprint == issued.fingerprint)
        ).one()


def _state(auth: Authority, serial: str) -> str:
    with reading(auth.engine) as conn:
        return str(conn.execute(select(devices.c.state).where(devices.c.serial == serial)).scalar_one())


def test_serials_carry_dense_indices_and_shards(auth: Authority) -> None:
    fleet = _fleet(auth, "L0", 5)
    indices = [serial_index(ldevid.serial) for _, ldevid in fleet]
    assert indices == sorted(indices) and len(set(indices)) == 5
    row = _status(auth, fleet[0][1])
    assert row.idx == indices[0] and row.shard == row.idx % 16


def test_revoking_a_lot_revokes_its_devices_and_all_their_certificates(auth: Authority) -> None:
    fleet = _fleet(auth, "LOT-A", 6)
    other = _fleet(auth, "LOT-B", 2)
    gens = dict(_snapshot(auth)["gens"])

    dry = revoke(auth, RevokeRequest(Selector.LOT, "LOT-A", Reason.KEY_COMPROMISE, dry_run=True), "t")
    assert (dry.certificates, dry.devices, dry.dry_run) == (12, 6, True)
    assert dict(_snapshot(auth)["gens"]) == gens  # a dry run changes nothing

    done = revoke(auth, RevokeRequest(Selector.LOT, "LOT-A", Reason.KEY_COMPROMISE, "stolen batch"), "op")
    assert (done.certificates, done.devices) == (12, 6) and set(done.cas) == {"manufacturing", "operational"}
    for idevid, ldevid in fleet:
        for cert in (idevid, ldevid):
            row = _status(auth, cert)
            assert row.status == CertificateStatus.REVOKED and row.reason == Reason.KEY_COMPROMISE
            assert row.revocation_id == done.id
        assert _state(auth, idevid.device_serial or "") == DeviceState.REVOKED
    assert all(_status(auth, c).status == CertificateStatus.VALID for pair in other for c in pair)
    new_gens = dict(_snapshot(auth)["gens"])
    assert new_gens["operational"] == gens["operational"] + 1
    assert _status(auth, fleet[0][1]).status_gen == new_gens["operational"]

    with reading(auth.engine) as conn:
        announced = conn.execute(select(events.c.type, events.c.subject, events.c.payload)).all()
        trail = conn.execute(select(audit_events).where(audit_events.c.action == "revocation")).one()
    revoked = [json.loads(p) for t, _, p in announced if t == "certificate.revoked"]
    assert len(revoked) == 12 and {r["reason"] for r in revoked} == {"keyCompromise"}
    assert {r["serial"] for r in revoked} == {serial_hex(c.serial) for pair in fleet for c in pair}
    assert revoked[0]["device"].startswith("LOT-A-") and revoked[0]["revocation"] == done.id
    devices_revoked = [json.loads(p) for t, _, p in announced if t == "device.revoked"]
    assert len(devices_revoked) == 6
    assert devices_revoked[0] | {"at": None, "subject": None} == {
        "at": None,
        "reason": "keyCompromise",
        "revocation": done.id,
        "state": "REVOKED",
        "subject": None,
        "type": "device.revoked",
    }
    assert json.loads(trail.detail)["note"] == "stolen batch" and trail.actor == "op"

    # A revoked LDevID no longer authenticates anyone.
    with pytest.raises(CredentialRefused) as refused:
        authenticate(auth, CertificateCredential(fleet[0][1].der))
    assert refused.value.code == "client-cert-revoked"


def test_refusals_change_nothing(auth: Authority) -> None:
    fleet = _fleet(auth, "LOT-R", 2)
    revoke(auth, RevokeRequest(Selector.DEVICE, "LOT-R-0", Reason.CESSATION_OF_OPERATION), "t")
    before = _snapshot(auth)
    cases: list[tuple[RevokeRequest, type[Exception], str]] = [
        (
            RevokeRequest(Selector.LOT, "NO-SUCH-LOT", Reason.UNSPECIFIED),
            NotFoundError,
            "revocation-no-match",
        ),
        (RevokeRequest(Selector.DEVICE, "LOT-R-0", Reason.UNSPECIFIED), ConflictError, "already-revoked"),
        (RevokeRequest(Selector.SERIAL, "abc123", Reason.UNSPECIFIED), NotFoundError, "unknown-certificate"),
        (
            RevokeRequest(Selector.SERIAL, serial_hex(fleet[0][1].serial), Reason.UNSPECIFIED),
            ConflictError,
            "already-revoked",
        ),
        (
            RevokeRequest(Selector.MANUFACTURER, "nobody", Reason.UNSPECIFIED),
            NotFoundError,
            "unknown-manufacturer",
        ),
        (RevokeRequest(Selector.LOT, "LOT-R", Reason.REMOVE_FROM_CRL), PolicyError, "revocation-reason"),
        (
            RevokeRequest(Selector.LOT, "LOT-R", Reason.UNSPECIFIED, "x" * 1001),
            PolicyError,
            "revocation-note",
        ),
    ]
    for request, error, code in cases:
        with pytest.raises(error) as refused:
            revoke(auth, request, "t")
        assert refused.value.code == code  # type: ignore[attr-defined]
    with pytest.raises(PolicyError) as lifted:
        unrevoke(auth, Selector.DEVICE, "LOT-R-0", "t")
    assert lifted.value.code == "not-on-hold"
    with pytest.raises(PolicyError) as lifted:
        unrevoke(auth, Selector.SERIAL, serial_hex(fleet[1][1].serial), "t")
    assert lifted.value.code == "not-on-hold"
    assert _snapshot(auth) == before


def test_one_certificate_and_key_compromise(auth: Authority) -> None:
    (idevid, ldevid), (idevid2, ldevid2) = _fleet(auth, "LOT-S", 2)
    one = revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(ldevid.serial), Reason.SUPERSEDED), "t")
    assert (one.certificates, one.devices) == (1, 0)
    assert _status(auth, ldevid).status == CertificateStatus.REVOKED
    assert _status(auth, idevid).status == CertificateStatus.VALID
    assert _state(auth, "LOT-S-0") == DeviceState.ACTIVE

    # keyCompromise of one certificate revokes its device: renewal and tokens end with it.
    key = revoke(auth, RevokeRequest(Selector.SERIAL, f"0x{ldevid2.serial:x}", Reason.KEY_COMPROMISE), "t")
    assert (key.certificates, key.devices) == (2, 1)
    assert _state(auth, "LOT-S-1") == DeviceState.REVOKED
    assert _status(auth, idevid2).reason == Reason.KEY_COMPROMISE


def test_hold_suspends_and_unrevoke_restores(auth: Authority) -> None:
    (idevid, ldevid), _ = _fleet(auth, "LOT-H", 2)
    revoke(auth, RevokeRequest(Selector.DEVICE, "LOT-H-0", Reason.CERTIFICATE_HOLD), "t")
    assert _state(auth, "LOT-H-0") == DeviceState.SUSPENDED
    assert _status(auth, ldevid).reason == Reason.CERTIFICATE_HOLD
    with pytest.raises(PolicyError) as refused:
        set_state(auth, "LOT-H-0", "ACTIVE", "t")
    assert refused.value.code == "device-on-hold"
    with pytest.raises(PolicyError) as refused:
        unrevoke(auth, Selector.SERIAL, serial_hex(ldevid.serial), "t")
    assert refused.value.code == "device-on-hold"

    lifted = unrevoke(auth, Selector.DEVICE, "LOT-H-0", "t")
    assert (lifted.certificates, lifted.devices) == (2, 1)
    with reading(auth.engine) as conn:
        announced = conn.execute(
            select(events.c.type, events.c.payload).where(events.c.type.like("%unrevoked"))
        ).all()
    payloads = sorted((t, json.loads(p)["subject"]) for t, p in announced)
    assert payloads == sorted(
        [
            ("device.unrevoked", "LOT-H-0"),
            *(("certificate.unrevoked", serial_hex(c.serial)) for c in (idevid, ldevid)),
        ]
    )
    assert _state(auth, "LOT-H-0") == DeviceState.ACTIVE
    row = _status(auth, ldevid)
    assert row.status == CertificateStatus.VALID and row.reason == Reason.REMOVE_FROM_CRL
    assert authenticate(auth, CertificateCredential(ldevid.der)).device_serial == "LOT-H-0"

    # A hold can become final; then nothing lifts it.
    revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(idevid.serial), Reason.CERTIFICATE_HOLD), "t")
    revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(idevid.serial), Reason.KEY_COMPROMISE), "t")
    assert _state(auth, "LOT-H-0") == DeviceState.REVOKED
    assert _status(auth, idevid).reason == Reason.KEY_COMPROMISE


def test_setting_a_device_revoked_revokes_its_certificates(auth: Authority) -> None:
    (idevid, ldevid), _ = _fleet(auth, "LOT-V", 2)
    set_state(auth, "LOT-V-0", "REVOKED", "api")
    assert _status(auth, ldevid).status == CertificateStatus.REVOKED
    assert _status(auth, idevid).reason == Reason.UNSPECIFIED


def test_cli_revoke_dry_run_then_revoke(sqlite_home: Home, auth: Authority) -> None:
    _fleet(auth, "LOT-C", 3)
    dry = ok(
        devid(
            "revoke",
            "--lot",
            "LOT-C",
            "--reason",
            "keyCompromise",
            "--dry-run",
            "--json",
            "--home",
            sqlite_home.path,
        )
    )
    assert json.loads(dry.stdout) | {"cas": []} == {
        "revocation": None,
        "certificates": 6,
        "devices": 3,
        "dry_run": True,
        "cas": [],
    }
    done = ok(
        devid(
            "revoke",
            "--lot",
            "LOT-C",
            "--reason",
            "cessationOfOperation",
            "--note",
            "end of life",
            "--home",
            sqlite_home.path,
        )
    )
    assert "6 certificate(s) and 3 device(s) revoked" in done.stdout
    bad = devid("revoke", "--lot", "LOT-C", "--device", "x", "--home", sqlite_home.path)
    assert bad.returncode != 0 and "exactly one of" in bad.stderr
    reason = devid("revoke", "--lot", "LOT-C", "--reason", "bogus", "--home", sqlite_home.path)
    assert reason.returncode != 0 and "unknown revocation reason" in reason.stderr
