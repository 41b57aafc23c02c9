"""The admin API's revocations over real TLS: revoke a lot, a dry run that changes nothing, holds
lifted, every refusal's status and code (each leaving the store as it was), roles, paging."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from est_helpers import running_server
from sqlalchemy import select
from test_api import Api

from devid.api import tokens
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.roles import Role
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.pki.profiles import ProfileName
from devid.pki.serials import serial_hex
from devid.store.engine import reading
from devid.store.models import cas, certificates, devices, revocations

PASSPHRASE = b"correct horse battery staple"


@contextmanager
def _serving(home: Home, clock: FixedClock, work: Path) -> Iterator[Api]:
    """devid's server with an admin token and two lots of three devices (IDevID and LDevID each)."""
    authority = open_authority(home, PASSPHRASE, clock=clock)
    try:
        for lot in ("L1", "L2"):
            serials = [f"{lot}-{i}" for i in range(3)]
            authority.issue_many(
                [
                    IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(s, "m", lot=lot))
                    for s in serials
                ]
            )
            authority.issue_many([IssueRequest(ProfileName.LDEVID, _key(), device_serial=s) for s in serials])
        token, _ = tokens.create(authority, "admin", "admin", clock.now())
        with running_server(authority, work) as server:
            yield Api(server, token)
    finally:
        authority.engine.dispose()


@pytest.fixture
def api(sqlite_home: Home, clock: FixedClock, tmp_path: Path) -> Iterator[Api]:
    with _serving(sqlite_home, clock, tmp_path / "server") as served:
        yield served


@pytest.fixture
def api_any_store(home: Home, clock: FixedClock, tmp_path: Path) -> Iterator[Api]:
    """`api` on SQLite and on PostgreSQL."""
    with _serving(home, clock, tmp_path / "server") as served:
        yield served


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _state(api: Api) -> dict[str, Any]:
    """Everything a revocation changes."""
    with reading(api.authority.engine) as conn:
        return {
            "devices": conn.execute(select(devices.c.serial, devices.c.state, devices.c.version)).all(),
            "certs": conn.execute(select(certificates.c.serial, certificates.c.status)).all(),
            "gens": conn.execute(select(cas.c.name, cas.c.revocation_gen)).all(),
            "revocations": conn.execute(select(revocations.c.id)).all(),
        }


def _device_state(api: Api, serial: str) -> str:
    return str(api.get(f"/devices/{serial}").json["state"])


def test_revoke_a_lot_then_list_and_show(api_any_store: Api) -> None:
    api = api_any_store
    before = _state(api)
    body = {"selector": "lot", "value": "L1", "dry_run": True}
    dry = api.call("POST", "/revocations", body)
    assert dry.status == 200, dry.raw
    assert dry.json == {"revocation": None, "certificates": 6, "devices": 3, "dry_run": True, "cas": []}
    assert _state(api) == before  # a dry run changes nothing

    body = {"selector": "lot", "value": "L1", "reason": "keyCompromise", "note": "stolen pallet"}
    done = api.call("POST", "/revocations", body)
    assert done.status == 201, done.raw
    result = done.json
    assert (result["certificates"], result["devices"], result["dry_run"]) == (6, 3, False)
    assert sorted(result["cas"]) == ["manufacturing", "operational"]
    record = result["revocation"]
    assert {k: record[k] for k in ("actor", "selector", "value", "reason", "note")} == {
        "actor": "token:admin",
        "selector": "lot",
        "value": "L1",
        "reason": "keyCompromise",
        "note": "stolen pallet",
    }
    assert [_device_state(api, f"L1-{i}") for i in range(3)] == ["REVOKED"] * 3
    assert _device_state(api, "L2-0") == "ACTIVE"
    trail = api.events("revocation")
    assert [(e.actor, e.subject) for e in trail] == [("token:admin", "lot:L1")]

    second = api.call("POST", "/revocations", {"selector": "device", "value": "L2-0"})
    assert second.status == 201 and second.json["revocation"]["reason"] == "unspecified"
    shown = api.get(f"/revocations/{record['id']}")
    assert shown.status == 200 and shown.json == record
    # Newest first, keyset-paged.
    first = api.get("/revocations?limit=1").json
    assert [r["id"] for r in first["items"]] == [second.json["revocation"]["id"]]
    rest = api.get(f"/revocations?limit=1&after={first['next']}").json
    assert rest["items"] == [record]
    last = api.get(f"/revocations?limit=1&after={rest['next']}").json
    assert last == {"items": [], "next": None}


def test_hold_and_lift(api: Api) -> None:
    held = api.call(
        "POST", "/revocations", {"selector": "device", "value": "L2-1", "reason": "certificateHold"}
    )
    assert held.status == 201 and _device_state(api, "L2-1") == "SUSPENDED"
    before = _state(api)
    dry = api.call("POST", "/revocations/lift", {"selector": "device", "value": "L2-1", "dry_run": True})
    assert dry.status == 200 and (dry.json["certificates"], dry.json["devices"], dry.json["dry_run"]) == (
        2,
        1,
        True,
    )
    assert _state(api) == before
    lifted = api.call("POST", "/revocations/lift", {"selector": "device", "value": "L2-1"})
    assert lifted.status == 200, lifted.raw
    assert lifted.json["revocation"] is None and (lifted.json["certificates"], lifted.json["devices"]) == (
        2,
        1,
    )
    assert _device_state(api, "L2-1") == "ACTIVE"
    assert [e.actor for e in api.events("revocation.lift")] == ["token:admin"]


def test_refusals_have_their_status_and_code_and_change_nothing(api: Api) -> None:
    api.call("POST", "/revocations", {"selector": "device", "value": "L2-2", "reason": "keyCompromise"})
    with reading(api.authority.engine) as conn:
        serial = conn.execute(select(certificates.c.serial).order_by(certificates.c.id)).scalars().first()
    assert serial is not None
    before = _state(api)
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("/revocations", {"selector": "lot", "value": "NO-SUCH-LOT"}, 404, "revocation-no-match"),
        ("/revocations", {"selector": "manufacturer", "value": "nobody"}, 404, "unknown-manufacturer"),
        ("/revocations", {"selector": "serial", "value": serial_hex(12345)}, 404, "unknown-certificate"),
        ("/revocations", {"selector": "device", "value": "L2-2"}, 409, "already-revoked"),
        ("/revocations", {"selector": "serial", "value": "not-hex"}, 404, "unknown-certificate"),
        (
            "/revocations",
            {"selector": "lot", "value": "L1", "reason": "removeFromCRL"},
            400,
            "request-invalid",
        ),
        ("/revocations", {"selector": "lot", "value": "L1", "note": "x" * 1001}, 400, "request-invalid"),
        ("/revocations", {"selector": "shelf", "value": "L1"}, 400, "request-invalid"),
        ("/revocations", {"selector": "lot", "value": ""}, 400, "request-invalid"),
        ("/revocations/lift", {"selector": "device", "value": "L1-0"}, 403, "not-on-hold"),
        ("/revocations/lift", {"selector": "serial", "value": serial}, 403, "not-on-hold"),
        ("/revocations/lift", {"selector": "device", "value": "NOPE"}, 404, "revocation-no-match"),
        ("/revocations/lift", {"selector": "serial", "value": serial_hex(12345)}, 404, "unknown-certificate"),
    ]
    for path, body, status, code in cases:
        answer = api.call("POST", path, body)
        assert (answer.status, answer.code) == (status, code), (body, answer.raw)
    assert _state(api) == before
    missing = api.get("/revocations/999999")
    assert (missing.status, missing.code) == (404, "unknown-revocation")
    assert api.get("/revocations/lift").headers["Allow"] == "POST"  # not taken for an id
    refused = [e for e in api.events("api.POST /api/v1/revocations") if e.outcome == "refused"]
    assert len(refused) == len(cases)


def test_roles(api: Api) -> None:
    by_role = {role: api.new_token(role, f"t-{role}") for role in Role}
    body = {"selector": "device", "value": "L1-0", "dry_run": True}
    for role in (Role.FACTORY, Role.AUDITOR):
        for path in ("/revocations", "/revocations/lift"):
            answer = api.call("POST", path, body, token=by_role[role])
            assert (answer.status, answer.code) == (403, "api-forbidden"), (role, path)
        assert api.get("/revocations", token=by_role[role]).status == 200
    done = api.call("POST", "/revocations", {**body, "dry_run": False}, token=by_role[Role.OPERATOR])
    assert done.status == 201 and done.json["revocation"]["actor"] == f"token:t-{Role.OPERATOR}"
    assert api.get("/revocations", token=None).status == 401


def test_openapi_documents_the_routes(api: Api) -> None:
    paths = api.get("/openapi.json", token=None).json["paths"]
    create = paths["/api/v1/revocations"]["post"]
    assert {"200", "201", "400", "403", "404", "409"} <= set(create["responses"])
    assert "operator" in create["description"] and "auditor" not in create["description"]
    assert set(paths["/api/v1/revocations"]) == {"get", "post"}
    assert "404" in paths["/api/v1/revocations/{id}"]["get"]["responses"]
    assert "404" in paths["/api/v1/revocations/lift"]["post"]["responses"]
