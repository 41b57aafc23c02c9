"""The dashboard over real TLS with aiohttp's client: login and its refusals, the session cookie's
attributes, CSRF on every POST (missing, forged, another session's: 403 and nothing changes),
roles (an auditor sees no Revoke button and is refused if it posts anyway), revocation audited
as `ui:<token name>`, pages escaped, and a revoked token's session ended at once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from est_helpers import EstServer, client_context, running_server
from sqlalchemy import select

from devid.api import tokens
from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.clock import FixedClock
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.store.engine import reading
from devid.store.models import audit_events, devices
from devid.ui.html import Markup, h

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Served:
    server: EstServer
    tokens: dict[str, str]

    @property
    def authority(self) -> Authority:
        return self.server.authority

    def state(self, serial: str) -> str:
        with reading(self.authority.engine) as conn:
            return str(conn.execute(select(devices.c.state).where(devices.c.serial == serial)).scalar_one())


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def fill(authority: Authority, lots: dict[str, int]) -> None:
    """Devices with an IDevID and an LDevID each, in the named lots; the LDevIDs' lifetimes are
    spread over the year (the first within 30 days), so the expiry chart has bars."""
    for lot, n in lots.items():
        serials = [f"{lot}-{i:03d}" for i in range(n)]
        authority.issue_many(
            [
                IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(s, "m1", lot=lot))
                for s in serials
            ]
        )
        authority.issue_many(
            [
                IssueRequest(
                    ProfileName.LDEVID, _key(), device_serial=s, lifetime=timedelta(days=20 + 45 * i)
                )
                for i, s in enumerate(serials)
            ]
        )


@pytest.fixture
def served(auth: Authority, clock: FixedClock, tmp_path: Path) -> Iterator[Served]:
    fill(auth, {"LOT-A": 4, "LOT-B": 3})
    made = {
        role: tokens.create(auth, role, role, clock.now())[0] for role in ("admin", "operator", "auditor")
    }
    made["short"] = tokens.create(
        auth, "short", "operator", clock.now(), expires_at=clock.now() + timedelta(hours=1)
    )[0]
    with running_server(auth, tmp_path / "server") as server:
        yield Served(server, made)


def session(served: Served) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=served.server.url,
        connector=aiohttp.TCPConnector(ssl=client_context(served.server.root_pem)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # the server is 127.0.0.1
    )


async def login_form(client: aiohttp.ClientSession, token: str) -> dict[str, str]:
    """The login form's fields for `token`: its CSRF token comes with the form (and its cookie)."""
    csrf, _ = await csrf_of(client, "/ui/login")
    return {"token": token, "csrf": csrf}


async def login(client: aiohttp.ClientSession, token: str) -> str:
    """Log in; returns the overview page's HTML."""
    async with client.post("/ui/login", data=await login_form(client, token)) as answer:
        assert answer.status == 200 and answer.url.path == "/ui", answer.status
        return await answer.text()


async def csrf_of(client: aiohttp.ClientSession, path: str) -> tuple[str, str]:
    async with client.get(path) as answer:
        assert answer.status == 200
        text = await answer.text()
    found = CSRF.search(text)
    assert found is not None
    return found.group(1), text


def test_login_sets_a_strict_cookie_and_shows_the_overview(served: Served) -> None:
    async def run() -> None:
        async with session(served) as client:
            async with client.get("/ui", allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/ui/login"
            # A login without the form's CSRF token (a cross-site login) is refused.
            async with client.post(
                "/ui/login", data={"token": served.tokens["operator"]}, allow_redirects=False
            ) as answer:
                assert answer.status == 403
            fields = await login_form(client, served.tokens["operator"])
            async with client.post(
                "/ui/login", data=fields | {"csrf": fields["csrf"][:-2] + "AA"}, allow_redirects=False
            ) as answer:
                assert answer.status == 403
            async with client.post("/ui/login", data=fields, allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/ui"
                cookie = answer.headers.getall("Set-Cookie")[-1]
            assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
            assert "Path=/ui" in cookie and served.tokens["operator"] not in cookie
            page = await login(client, served.tokens["operator"])
            assert "<svg" in page and "certificates expiring per week" in page and "week starting" in page
            assert re.search(r"<td>ACTIVE</td><td class=\"n\">7</td>", page)
            # By hub, group and manufacturer: none of the seven devices was allocated or registered.
            assert page.count('<td>(no hub)</td><td class="n">7</td>') == 1
            assert "Devices by enrollment group" in page and "<td>(devid factory)</td>" in page
            # LDevIDs: two within 30 days (one per lot), five later; IDevIDs all valid for years.
            assert re.search(r"<td>ldevid</td><td class=\"n\">5</td><td class=\"n\">2</td>", page)
            # Lifetimes of 20, 65, 110 (two each) and 155 days: four weekly bars; the two OCSP
            # signers' CA certificates (90 days) a fifth; a legend entry each for ldevid and CA.
            assert page.count("<rect x=") == 4 + 1 + 2
            assert page.count("<title>ldevid: 2 expiring in the week of") == 3
            assert page.count("<title>CA: 2 expiring in the week of") == 1
            assert "Content-Security-Policy" in (await client.get("/ui")).headers
            # Log out (with the CSRF token): the session is gone.
            token, _ = await csrf_of(client, "/ui")
            async with client.post("/ui/logout", data={"csrf": token}) as answer:
                assert answer.url.path == "/ui/login"
            async with client.get("/ui", allow_redirects=False) as answer:
                assert answer.status == 303

    asyncio.run(run())


@pytest.mark.parametrize("which", ["nonsense", "expired", "revoked"])
def test_bad_tokens_are_refused_inline(served: Served, clock: FixedClock, which: str) -> None:
    token = {
        "nonsense": "devid_not-a-token",
        "expired": served.tokens["short"],
        "revoked": served.tokens["admin"],
    }
    if which == "expired":
        clock.advance(timedelta(hours=2))
    if which == "revoked":
        tokens.revoke(served.authority.engine, "admin", clock.now())

    async def run() -> None:
        async with session(served) as client:
            async with client.post(
                "/ui/login", data=await login_form(client, token[which]), allow_redirects=False
            ) as answer:
                # No session: only a fresh login form (and its CSRF cookie) comes back.
                set_cookies = " ".join(answer.headers.getall("Set-Cookie", []))
                assert answer.status == 401 and "devid_ui=" not in set_cookies
                text = await answer.text()
            assert 'role="alert"' in text and ("not valid" in text or which in text)

    asyncio.run(run())


def test_a_session_ends_when_its_token_is_revoked(served: Served, clock: FixedClock) -> None:
    async def run() -> None:
        async with session(served) as client:
            await login(client, served.tokens["admin"])
            tokens.revoke(served.authority.engine, "admin", clock.now())
            async with client.get("/ui", allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/ui/login"

    asyncio.run(run())


def test_csrf_and_roles_guard_revocation(served: Served) -> None:
    form = {"reason": str(Reason.KEY_COMPROMISE.value), "confirm": "yes"}
    path = "/ui/devices/LOT-A-001"

    async def run() -> None:
        async with session(served) as operator, session(served) as auditor:
            await login(operator, served.tokens["operator"])
            await login(auditor, served.tokens["auditor"])
            good, page = await csrf_of(operator, path)
            assert 'action="/ui/devices/LOT-A-001/revoke"' in page
            theirs, page = await csrf_of(auditor, path)
            assert "/revoke" not in page  # no button for an auditor
            assert theirs != good
            for forged in ({}, {"csrf": "x" * len(good)}, {"csrf": theirs}):
                async with operator.post(f"{path}/revoke", data={**form, **forged}) as answer:
                    assert answer.status == 403, forged
            # The auditor with its own valid CSRF token: refused by role.
            async with auditor.post(f"{path}/revoke", data={**form, "csrf": theirs}) as answer:
                assert answer.status == 403 and "auditor" in await answer.text()
            # Without a session at all.
            async with (
                session(served) as nobody,
                nobody.post(f"{path}/revoke", data={**form, "csrf": good}) as answer,
            ):
                assert answer.status == 403
            assert served.state("LOT-A-001") == "ACTIVE"
            # Unconfirmed: refused, nothing changes.
            async with operator.post(f"{path}/revoke", data={"reason": "1", "csrf": good}) as answer:
                assert answer.status == 400
            assert served.state("LOT-A-001") == "ACTIVE"
            async with operator.post(f"{path}/revoke", data={**form, "csrf": good}) as answer:
                assert answer.status == 200 and answer.url.path == path
                text = await answer.text()
            assert "Revoked: 2 certificate(s)" in text and "<td>REVOKED</td>" in text
            # Search by prefix finds the lot, not the other one.
            async with operator.get("/ui/devices", params={"q": "LOT-B"}) as answer:
                text = await answer.text()
            assert text.count('href="/ui/devices/LOT-B-') == 3 and "LOT-A-" not in text.split("<main>")[1]

    asyncio.run(run())
    assert served.state("LOT-A-001") == "REVOKED"
    with reading(served.authority.engine) as conn:
        actors = (
            conn.execute(select(audit_events.c.actor).where(audit_events.c.action == "revocation"))
            .scalars()
            .all()
        )
    assert "ui:operator" in actors


def test_values_are_escaped_in_templates() -> None:
    assert h("<td>{}</td>", '<script>"x"&') == "<td>&lt;script&gt;&quot;x&quot;&amp;</td>"
    assert h("<p>{}</p>", Markup("<b>ok</b>")) == "<p><b>ok</b></p>"


def test_health_page_lists_every_check(served: Served, clock: FixedClock) -> None:
    """The dashboard's health page runs `devid health`'s checks: an LDevID expiring within 30 days
    with no renewal is named, linked to its device."""

    async def run() -> None:
        async with session(served) as client:
            await login(client, served.tokens["auditor"])
            async with client.get("/ui/health") as answer:
                assert answer.status == 200
                page = await answer.text()
        for check in ("ca-expiring", "device-cert-expiring-no-renewal", "shared-public-key", "weak-key"):
            assert f"<td>{check}</td>" in page
        row = re.search(
            r"<td>device-cert-expiring-no-renewal</td><td[^>]*>medium</td><td class=\"n\">(\d+)</td>", page
        )
        assert row is not None and int(row.group(1)) == 2
        assert '<a href="/ui/devices/LOT-A-000">LOT-A-000 (ldevid expires' in page

    asyncio.run(run())
