"""The admin API end to end: devid's server over real TLS on loopback, bearer tokens from the store,
every answer checked as a client sees it (status, JSON body, headers) and in the audit log.

Runs on SQLite and PostgreSQL. The OpenAPI document is validated, and schemathesis drives every
documented operation against the live server (tests/test_api_schemathesis.py).
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from e2e import devid
from est_helpers import EstServer, client_context, provision, running_server
from openapi_spec_validator import validate
from sqlalchemy import select

from devid.api import tokens
from devid.api.app import ANONYMOUS_RATE
from devid.api.endpoints import ROUTES
from devid.api.endpoints.gateways import parse_time
from devid.api.routes import PREFIX
from devid.authority.core import Authority
from devid.authority.credential_key import Purpose
from devid.authority.roles import Permission, Role, allows
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.errors import PolicyError
from devid.store import audit
from devid.store.engine import reading
from devid.store.models import certificates, sightings
from devid.store.models import devices as device_table

PASSPHRASE = b"correct horse battery staple"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        assert self.headers.get_content_type() == "application/json", (self.status, self.raw)
        return json.loads(self.raw)

    @property
    def code(self) -> str:
        return str(self.json["error"]["code"])


@dataclass
class Api:
    """A client of one running server; `token` is sent as the bearer unless told otherwise."""

    server: EstServer
    token: str | None

    @property
    def authority(self) -> Authority:
        return self.server.authority

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = "",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.server.port, context=client_context(self.server.root_pem), timeout=30
        )
        sent = dict(headers or {})
        bearer = self.token if token == "" else token
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent["Content-Type"] = content_type
        try:
            conn.request(method, PREFIX + path, body=data, headers=sent)
            resp = conn.getresponse()
            return Answer(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Answer:
        return self.call("GET", path, **kw)

    def new_token(self, role: Role, name: str, **kw: Any) -> str:
        token, _ = tokens.create(self.authority, name, str(role), self.authority.clock.now(), **kw)
        return token

    def events(self, prefix: str) -> list[Any]:
        with reading(self.authority.engine) as conn:
            return audit.page(conn, limit=100_000, action_prefix=prefix)


@pytest.fixture
def api(home: Home, clock: FixedClock, tmp_path: Path) -> Iterator[Api]:
    """devid's server (EST and the API) over TLS on loopback, on SQLite and on PostgreSQL, with an
    admin token; the authority reads `clock`, so tokens can be made to expire."""
    authority = open_authority(home, PASSPHRASE, clock=clock)
    try:
        token, _ = tokens.create(authority, "admin", "admin", clock.now())
        with running_server(authority, tmp_path / "server") as server:
            yield Api(server, token)
    finally:
        authority.engine.dispose()


def devices(api: Api, *serials: str) -> None:
    for serial in serials:
        provision(api.authority, serial, api.server.root_pem.parent / "devices")


# --- authentication ---------------------------------------------------------------------------


def test_no_token_bad_token_expired_revoked_are_401(api: Api, clock: FixedClock) -> None:
    missing = api.get("/devices", token=None)
    assert missing.status == 401 and missing.code == "api-token-missing"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="devid API"'

    for bad in ("devid_not-a-token", api.token + "x"):  # type: ignore[operator]
        wrong = api.get("/devices", token=bad)
        assert wrong.status == 401 and wrong.code == "api-token-invalid"
        assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="devid API", error="invalid_token"'
    basic = api.get("/devices", token=None, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status == 401 and basic.code == "api-token-invalid"

    short_lived = api.new_token(Role.ADMIN, "short", expires_at=clock.now() + timedelta(hours=1))
    assert api.get("/devices", token=short_lived).status == 200
    clock.advance(timedelta(hours=1))
    expired = api.get("/devices", token=short_lived)
    assert expired.status == 401 and expired.code == "api-token-expired"

    doomed = api.new_token(Role.OPERATOR, "doomed")
    assert api.get("/devices", token=doomed).status == 200
    assert api.call("DELETE", "/api-tokens/doomed").status == 200
    revoked = api.get("/devices", token=doomed)
    assert revoked.status == 401 and revoked.code == "api-token-revoked"
    assert "WWW-Authenticate" in revoked.headers

    refused = [e for e in api.events("api.GET /api/v1/devices") if e.outcome == "refused"]
    assert [json.loads(e.detail)["error"] for e in refused] == [
        "api-token-missing",
        "api-token-invalid",
        "api-token-invalid",
        "api-token-invalid",
        "api-token-expired",
        "api-token-revoked",
    ]
    assert {e.actor for e in refused} == {"anonymous"}


# --- authorization ----------------------------------------------------------------------------


def test_roles_on_a_write_and_on_reads(api: Api) -> None:
    devices(api, "SN-R")
    by_role = {role: api.new_token(role, f"t-{role}") for role in Role}
    version = 1
    for role in (Role.FACTORY, Role.AUDITOR, Role.OPERATOR, Role.ADMIN):
        answer = api.call(
            "PATCH",
            "/devices/SN-R",
            {"state": "INACTIVE" if version % 2 else "ACTIVE"},
            token=by_role[role],
            headers={"If-Match": f'"{version}"'},
        )
        if allows(role, Permission.DEVICES_WRITE):
            assert answer.status == 200, answer.raw
            version += 1
            assert answer.json["version"] == version and answer.headers["ETag"] == f'"{version}"'
        else:
            assert answer.status == 403 and answer.code == "api-forbidden", answer.raw
            assert "devices:write" in answer.json["error"]["message"]
            assert api.get("/devices/SN-R").json["version"] == version  # nothing changed
    assert [role for role in Role if allows(role, Permission.DEVICES_WRITE)] == [Role.ADMIN, Role.OPERATOR]

    # Reads: each role reaches exactly what the matrix says, per route of the table.
    for route in (r for r in ROUTES if r.method == "GET" and not r.path_params):
        for role, token in by_role.items():
            status = api.get(route.path, token=token).status
            assert status == (200 if allows(role, route.permission) else 403), (role, route.path, status)
    # Only admins make tokens.
    for role in (Role.OPERATOR, Role.FACTORY, Role.AUDITOR):
        made = api.call("POST", "/api-tokens", {"name": f"by-{role}", "role": "admin"}, token=by_role[role])
        assert made.status == 403
    made = api.call("POST", "/api-tokens", {"name": "by-admin", "role": "auditor", "rate_per_minute": 5})
    assert made.status == 201 and made.json["role"] == "auditor" and made.json["rate_per_minute"] == 5
    assert api.get("/audit-events?limit=1", token=made.json["token"]).status == 200
    assert api.call("POST", "/api-tokens", {"name": "by-admin", "role": "auditor"}).status == 409

    forbidden = api.events("api.PATCH")
    assert [(e.actor, e.outcome) for e in forbidden] == [
        ("token:t-factory", "refused"),
        ("token:t-auditor", "refused"),
        ("token:t-operator", "ok"),
        ("token:t-admin", "ok"),
    ]


# --- rate limits ------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    slow = api.new_token(Role.AUDITOR, "slow", rate_per_minute=3)
    assert [api.get("/cas", token=slow).status for _ in range(3)] == [200, 200, 200]
    limited = api.get("/cas", token=slow)
    assert limited.status == 429 and limited.code == "rate-limited"
    retry = int(limited.headers["Retry-After"])
    assert 1 <= retry <= 20  # one call every 20 s at 3/min
    assert api.get("/cas").status == 200  # other tokens are unaffected
    assert [e.outcome for e in api.events("api.GET /api/v1/cas") if e.actor == "token:slow"] == [
        "ok",
        "ok",
        "ok",
        "refused",
    ]


def test_unauthenticated_calls_are_limited_per_peer_so_they_cannot_flood_the_audit_log(api: Api) -> None:
    before = len(api.events("api."))
    statuses = [api.get("/cas", token=None).status for _ in range(ANONYMOUS_RATE + 5)]
    assert statuses[:ANONYMOUS_RATE] == [401] * ANONYMOUS_RATE
    assert statuses[-1] == 429  # (the bucket refills a call a second: a slow run may see a 401 more)
    # Refusals past the limit cost one audit event for the window, not one each.
    assert len(api.events("api.")) - before == statuses.count(401) + 1
    limited = [e for e in api.events("api.") if json.loads(e.detail)["status"] == 429]
    assert [(e.actor, json.loads(e.detail)["refused_calls"]) for e in limited] == [("anonymous", 1)]
    assert api.get("/cas").status == 200  # a caller with a token is not held back


def test_calls_refused_with_429_are_audited_once_per_caller_and_window(api: Api, clock: FixedClock) -> None:
    slow = api.new_token(Role.AUDITOR, "slow", rate_per_minute=1)
    assert [api.get("/cas", token=slow).status for _ in range(6)] == [200] + [429] * 5

    def refused() -> list[int]:
        events = api.events("api.GET /api/v1/cas")
        return [json.loads(e.detail)["refused_calls"] for e in events if e.outcome == "refused"]

    assert refused() == [1]
    clock.advance(timedelta(minutes=1))  # the next window: its first 429 carries the four not audited
    assert api.get("/cas", token=slow).status == 429
    assert refused() == [1, 5]


def test_json_nested_too_deep_is_400(api: Api) -> None:
    shallow = api.call("POST", "/hubs", json.loads("[" * 32 + "]" * 32))
    assert shallow.status == 400 and shallow.code == "request-invalid"  # parsed, then the schema refuses
    for depth in (33, 5000):  # past our limit, and past Python's own recursion limit
        deep = api.call("POST", "/hubs", raw=b"[" * depth + b"]" * depth)
        assert (deep.status, deep.code) == (400, "request-json-depth"), deep.raw
        assert "nests deeper than 32 levels" in deep.json["error"]["message"]


# --- reads: paging, filters, unknown ids ------------------------------------------------------


def test_paging_and_filters(api: Api) -> None:
    serials = [f"SN-P{i}" for i in range(5)]
    devices(api, *serials)
    for serial in serials[1:3]:
        assert api.call("PATCH", f"/devices/{serial}", {"state": "INACTIVE", "version": 1}).status == 200

    seen, after = [], None
    while True:
        answer = api.get(f"/devices?limit=2{f'&after={after}' if after is not None else ''}").json
        assert len(answer["items"]) <= 2
        seen += [d["serial"] for d in answer["items"]]
        after = answer["next"]
        if after is None:
            break
    assert seen == serials
    inactive = api.get("/devices?state=INACTIVE").json
    assert [d["serial"] for d in inactive["items"]] == serials[1:3] and inactive["next"] is None

    one = api.get("/certificates?device=SN-P3").json["items"]
    assert len(one) == 1 and one[0]["device"] == "SN-P3" and one[0]["profile"] == "idevid"
    assert len(api.get("/certificates?profile=idevid").json["items"]) == 5
    assert api.get("/certificates?profile=ldevid").json == {"items": [], "next": None}
    detail = api.get(f"/certificates/{one[0]['serial']}").json
    assert detail["fingerprint"] == one[0]["fingerprint"] and "BEGIN CERTIFICATE" in detail["pem"]

    cas = api.get("/cas").json["items"]
    assert {"root", "manufacturing", "operational"} <= {ca["name"] for ca in cas}
    assert api.get("/cas/manufacturing").json["parent"] == "root"

    states = api.get("/audit-events?action=device.state").json["items"]
    assert [(e["subject"], e["actor"], e["detail"]["to"]) for e in states] == [
        ("SN-P1", "token:admin", "INACTIVE"),
        ("SN-P2", "token:admin", "INACTIVE"),
    ]
    first = api.get("/audit-events?limit=3").json
    rest = api.get(f"/audit-events?limit=3&after={first['next']}").json
    assert [e["seq"] for e in first["items"] + rest["items"]] == list(range(1, 7))


def test_unknown_ids_are_404(api: Api) -> None:
    for path, code in [
        ("/devices/NOPE", "unknown-device"),
        ("/cas/nope", "unknown-ca"),
        ("/certificates/abcdef", "unknown-certificate"),
        ("/api-tokens/nope", "unknown-token"),
        ("/no-such-resource", "not-found"),
    ]:
        answer = api.get(path)
        assert answer.status == 404 and answer.code == code, (path, answer.raw)
    assert api.call("PATCH", "/devices/NOPE", {"state": "ACTIVE", "version": 1}).status == 404
    assert api.call("DELETE", "/api-tokens/nope").status == 404
    wrong_method = api.call("PUT", "/cas")
    assert wrong_method.status == 405 and wrong_method.code == "method-not-allowed"
    assert "GET" in wrong_method.headers["Allow"]


# --- writes: malformed input, optimistic concurrency ------------------------------------------


def test_malformed_requests_are_400_and_change_nothing(api: Api) -> None:
    devices(api, "SN-M")
    patch = "/devices/SN-M"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"raw": b'{"state": "INACTIVE", '}, 400, "request-json"),
        ({"raw": b"\xff\xfe"}, 400, "request-json"),
        ({"body": {"state": "BOGUS", "version": 1}}, 400, "request-invalid"),
        ({"body": {"state": "INACTIVE", "version": 1, "extra": 1}}, 400, "request-invalid"),
        ({"body": ["INACTIVE"]}, 400, "request-invalid"),
        ({"body": {"state": "INACTIVE"}, "headers": {"If-Match": "v1"}}, 400, "request-if-match"),
        (
            {"body": {"state": "INACTIVE", "version": 2}, "headers": {"If-Match": '"1"'}},
            409,
            "stale-version",
        ),
        ({"body": {"state": "INACTIVE", "version": 1}, "content_type": "text/plain"}, 415, "content-type"),
    ]
    for kw, status, code in cases:
        answer = api.call("PATCH", patch, **kw)
        assert (answer.status, answer.code) == (status, code), (kw, answer.raw)
    for query in ("limit=0", "limit=abc", "limit=1001", "after=-1", "state=ASLEEP", "limit=1&limit=2"):
        answer = api.get(f"/devices?{query}")
        assert answer.status == 400 and answer.code in ("request-invalid", "request-param"), query
    assert api.get("/certificates/not-hex").status == 400
    assert api.call("POST", "/api-tokens", {"name": "bad name!", "role": "admin"}).status == 400
    device = api.get("/devices/SN-M").json
    assert (device["state"], device["version"]) == ("ACTIVE", 1)
    assert api.events("device.state") == []


def test_stale_version_is_409_and_nothing_is_lost(api: Api) -> None:
    devices(api, "SN-V")
    alice = api.new_token(Role.OPERATOR, "alice")
    bob = api.new_token(Role.OPERATOR, "bob")
    read_by_alice = api.get("/devices/SN-V", token=alice)
    read_by_bob = api.get("/devices/SN-V", token=bob)
    assert read_by_alice.headers["ETag"] == read_by_bob.headers["ETag"] == '"1"'

    first = api.call(
        "PATCH", "/devices/SN-V", {"state": "INACTIVE", "reason": "stolen"}, token=alice,
        headers={"If-Match": read_by_alice.headers["ETag"]},
    )  # fmt: skip
    assert first.status == 200 and first.json["version"] == 2
    second = api.call("PATCH", "/devices/SN-V", {"state": "REVOKED", "version": 1}, token=bob)
    assert second.status == 409 and second.code == "stale-version"
    assert api.call("PATCH", "/devices/SN-V", {"state": "ACTIVE"}, token=bob).status == 428

    now = api.get("/devices/SN-V").json
    assert (now["state"], now["version"]) == ("INACTIVE", 2)
    changes = api.events("device.state")
    assert [(e.actor, json.loads(e.detail)["to"]) for e in changes] == [("token:alice", "INACTIVE")]
    retried = api.call("PATCH", "/devices/SN-V", {"state": "REVOKED", "version": 2}, token=bob)
    assert retried.status == 200 and retried.json["state"] == "REVOKED"
    back = api.call("PATCH", "/devices/SN-V", {"state": "ACTIVE", "version": 3}, token=alice)
    assert back.status == 403 and api.get("/devices/SN-V").json["state"] == "REVOKED"  # final


# --- audit, EST untouched, OpenAPI ------------------------------------------------------------


def test_every_call_is_audited_and_the_chain_holds(api: Api) -> None:
    auditor = api.new_token(Role.AUDITOR, "eve")
    before = len(api.events("api."))
    api.get("/cas", token=auditor)
    api.get("/devices/NOPE", token=auditor)
    api.call("PATCH", "/devices/NOPE", {"state": "ACTIVE", "version": 1}, token=auditor)
    api.get("/nothing-here", token=auditor)
    api.get("/openapi.json", token=None)  # the public document is not an audited call
    calls = api.events("api.")[before:]
    assert [(e.action, e.actor, e.outcome, json.loads(e.detail)["status"]) for e in calls] == [
        ("api.GET /api/v1/cas", "token:eve", "ok", 200),
        ("api.GET /api/v1/devices/{serial}", "token:eve", "refused", 404),
        ("api.PATCH /api/v1/devices/{serial}", "token:eve", "refused", 403),
        ("api.GET (no route)", "anonymous", "refused", 404),
    ]
    assert calls[1].subject == "/api/v1/devices/NOPE"
    with reading(api.authority.engine) as conn:
        assert audit.verify(conn).ok


def test_est_answers_stay_plain_text(api: Api) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", api.server.port, context=client_context(api.server.root_pem), timeout=30
    )
    try:
        conn.request("GET", "/.well-known/est/no-such-label/cacerts")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 404 and resp.headers.get_content_type() == "text/plain"
    assert resp.headers["Devid-Error"] == "unknown-label" and b"[unknown-label]" in body


def test_openapi_document_is_valid_and_matches_the_routes(api: Api) -> None:
    answer = api.get("/openapi.json", token=None)
    assert answer.status == 200
    doc = answer.json
    validate(doc)  # OpenAPI 3.1 meta-schema
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    documented = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert documented == {(r.method, PREFIX + r.path) for r in ROUTES} | {("GET", f"{PREFIX}/openapi.json")}
    for route in ROUTES:
        op = doc["paths"][PREFIX + route.path][route.method.lower()]
        assert {"401", "403", "429"} <= set(op["responses"]) and op["security"] == [{"bearer": []}]
        assert route.permission.value in op["description"]
        # Every documented operation is served: without a token it is a 401, never a 404/405.
        path = route.path.replace("{", "").replace("}", "")
        assert api.call(route.method, path, token=None).status == 401, route.action


# --- CLI --------------------------------------------------------------------------------------


def test_cli_token_create_list_revoke_against_the_server(sqlite_home: Home, tmp_path: Path) -> None:
    # Making a token needs the CA secret: without the passphrase nothing is made.
    refused = devid("api-token", "create", "ops-bot", "--role", "operator", "--home", sqlite_home.path,
                    passphrase=None)  # fmt: skip
    assert refused.returncode != 0 and "[passphrase-missing]" in refused.stderr
    made = devid("api-token", "create", "ops-bot", "--role", "operator", "--expires-days", "30",
                 "--home", sqlite_home.path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.rstrip("\n").splitlines()[-1]
    assert token.startswith(tokens.PREFIX) and token not in made.stdout.splitlines()[0]
    stored = b"".join(f.read_bytes() for f in sqlite_home.path.glob("devid.db*"))
    assert token.encode() not in stored and hashlib.sha256(token.encode()).hexdigest().encode() not in stored

    listed = devid("api-token", "list", "--json", "--home", sqlite_home.path, passphrase=None)
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["name"], row["role"], row["revoked_at"]) == ("ops-bot", "operator", None)
    assert row["expires_at"] is not None and "token" not in row

    authority = open_authority(sqlite_home, PASSPHRASE)
    assert authority.credentials.mac(Purpose.API_TOKEN, token).encode() in stored
    try:
        with running_server(authority, tmp_path / "server") as server:
            client = Api(server, token)
            assert client.get("/devices").status == 200
            assert client.get("/api-tokens").status == 403  # operators do not manage tokens
            revoked = devid("api-token", "revoke", "ops-bot", "--home", sqlite_home.path, passphrase=None)
            assert revoked.returncode == 0, revoked.stderr
            assert client.get("/devices").code == "api-token-revoked"
        actions = [(e.action, e.actor) for e in Api(server, None).events("api-token.")]
        assert actions == [("api-token.create", "cli"), ("api-token.revoke", "cli")]
    finally:
        authority.engine.dispose()

    again = devid("api-token", "revoke", "ops-bot", "--home", sqlite_home.path, passphrase=None)
    assert again.returncode == 2 and "already revoked" in again.stderr
    dup = devid("api-token", "create", "ops-bot", "--role", "admin", "--home", sqlite_home.path)
    assert dup.returncode == 2 and "[token-exists]" in dup.stderr
    bad = devid("api-token", "create", "x", "--role", "root", "--home", sqlite_home.path, passphrase=None)
    assert bad.returncode != 0 and "root" in bad.stderr


# --- registry ---------------------------------------------------------------------------------


def test_registry_hubs_and_groups_two_operators_one_group(api: Api) -> None:
    alice = api.new_token(Role.OPERATOR, "alice")
    bob = api.new_token(Role.OPERATOR, "bob")
    factory = api.new_token(Role.FACTORY, "line-1")
    auditor = api.new_token(Role.AUDITOR, "eve")
    for name in ("eu-1", "us-1"):
        made = api.call("POST", "/hubs", {"name": name, "url": f"mqtts://{name}.example:8883"}, token=alice)
        assert made.status == 201 and made.json["version"] == 1, made.raw
    assert api.call("POST", "/hubs", {"name": "eu-1", "url": "mqtts://x:1"}, token=alice).status == 409
    assert api.call("POST", "/hubs", {"name": "bad", "url": "ftp://x"}, token=alice).code == "hub-url"

    ca_pem = api.authority.cas["manufacturing"].certificate.public_bytes(Encoding.PEM).decode()
    group = {"name": "sensors", "signing_certificate": ca_pem, "allocation": "hashed", "hubs": ["eu-1"]}
    made = api.call("POST", "/groups", group, token=alice)
    assert made.status == 201 and made.json["enabled"] and made.json["hubs"] == ["eu-1"], made.raw
    assert made.json["signing_certificates"][0]["fingerprint"]
    assert api.get("/groups", token=factory).status == 403  # the line does not see the registry
    assert api.get("/groups", token=auditor).json["items"][0]["name"] == "sensors"
    assert api.call("PATCH", "/groups/sensors", {"enabled": False, "version": 1}, token=auditor).status == 403

    # Both read version 1; Alice's change lands, Bob's is refused and changes nothing.
    first = api.call("PATCH", "/groups/sensors", {"hubs": ["eu-1", "us-1"], "version": 1}, token=alice)
    assert first.status == 200 and first.json["version"] == 2
    second = api.call("PATCH", "/groups/sensors", {"reprovision": "never", "version": 1}, token=bob)
    assert second.status == 409 and second.code == "stale-version"
    # A version no store column holds is a bad request, not a crash (schemathesis found 2**64).
    huge = api.call("PATCH", "/groups/sensors", {"reprovision": "never", "version": 2**64}, token=bob)
    assert huge.status == 400, huge.raw
    now = api.get("/groups/sensors").json
    assert (now["hubs"], now["reprovision"], now["version"]) == (["eu-1", "us-1"], "migrate", 2)

    disabled = api.call(
        "PATCH", "/groups/sensors", {"enabled": False}, headers={"If-Match": '"2"'}, token=bob
    )
    assert disabled.status == 200 and not disabled.json["enabled"]
    assert api.get("/groups/nope").status == 404 and api.get("/hubs/nope").code == "unknown-hub"
    assert [(e.action, e.actor) for e in api.events("enrollment.")] == [
        ("enrollment.create", "token:alice"),
        ("enrollment.update", "token:alice"),
        ("enrollment.disable", "token:bob"),
    ]
    code = api.call("POST", "/registration-codes", token=alice)
    assert code.status == 201 and len(code.json["code"]) == 64
    assert api.get("/manufacturers").json == {"items": [], "next": None}


def test_gateway_sightings_need_the_gateway_role_and_a_sane_report(api: Api) -> None:
    """A gateway's report: its role may only report; a malformed one is 400 and keeps nothing."""
    devices(api, "SN-SEEN")
    with reading(api.authority.engine) as conn:
        fingerprint = conn.execute(
            select(certificates.c.fingerprint)
            .join(device_table, device_table.c.id == certificates.c.device_id)
            .where(device_table.c.serial == "SN-SEEN")
        ).scalar_one()
    gateway = api.new_token(Role.GATEWAY, "gw-token")
    now = api.authority.clock.now().isoformat()
    seen = {"fingerprint": fingerprint, "first_seen": now, "last_seen": now}
    path = "/gateways/edge-1:8883/sightings"
    assert (
        api.call("POST", path, {"sessions": [seen]}, token=api.new_token(Role.OPERATOR, "op")).status == 403
    )
    assert api.call("POST", path, {"sessions": [seen]}, token=None).status == 401
    assert api.get("/devices", token=gateway).status == 403  # it reads nothing
    bad = {
        "not hex": {"sessions": [seen | {"fingerprint": "zz" * 32}]},
        "no offset": {"sessions": [seen | {"last_seen": now[:19]}]},
        "too many": {"sessions": [seen] * 301},
        "extra": {"sessions": [seen], "more": 1},
    }
    for why, body in bad.items():
        answer = api.call("POST", path, body, token=gateway)
        assert answer.status == 400 and answer.code == "request-invalid", (why, answer.raw)
    assert api.call("POST", "/gateways/bad%20name/sightings", {"sessions": []}, token=gateway).status == 400
    with reading(api.authority.engine) as conn:
        assert conn.execute(select(sightings)).all() == []

    unknown = seen | {"fingerprint": "ab" * 32}
    answer = api.call("POST", path, {"sessions": [seen, unknown]}, token=gateway)
    assert answer.status == 200 and answer.json == {"recorded": 1, "unknown": 1, "revoked": 0}
    with reading(api.authority.engine) as conn:
        assert [r.gateway for r in conn.execute(select(sightings))] == ["edge-1:8883"]
    assert [e.actor for e in api.events("api.POST /api/v1/gateways")][-1] == "token:gw-token"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:60Z", datetime(2026, 1, 1, 0, 0, 59, tzinfo=UTC)),  # a leap second
        ("2026-01-01t01:02:03.123456789z", datetime(2026, 1, 1, 1, 2, 3, 123456, tzinfo=UTC)),
        ("2026-01-01T01:00:00-00:00", datetime(2026, 1, 1, 1, tzinfo=UTC)),
        ("2026-01-01T01:00:00+01:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00+01:00", datetime.min.replace(tzinfo=UTC)),  # before Python's range in UTC
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_report_times_take_what_rfc3339_allows(text: str, expected: datetime) -> None:
    """Whatever the schema's date-time format admits is read, as aware UTC, never refused."""
    assert parse_time(text) == expected


def test_a_report_time_that_is_not_rfc3339_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        parse_time("2026-01-01 00:00:00")  # no T, no offset
    assert info.value.code == "request-invalid"
