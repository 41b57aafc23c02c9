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
from devid.authority import devices as devices_mod
from devid.authority.core import Authority
from devid.authority.health import Windows, expiring_unrenewed, fallen_back, held_for_approval
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.sightings import Sighting, record
from devid.clock import FixedClock
from devid.errors import PolicyError
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.revocation.publisher import Publisher
from devid.store import models
from devid.store.engine import reading
from devid.store.models import audit_events, devices
from devid.ui import queries
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


def _cookie(client: aiohttp.ClientSession) -> str:
    return next(c.value for c in client.cookie_jar if c.key == "devid_ui")


def test_logout_ends_the_session_on_the_server(served: Served) -> None:
    """The logged-out cookie, presented again (as a copy kept by an attacker would be), is refused."""

    async def run() -> None:
        async with session(served) as client, session(served) as thief:
            await login(client, served.tokens["operator"])
            kept = _cookie(client)
            token, _ = await csrf_of(client, "/ui")
            async with client.post("/ui/logout", data={"csrf": token}) as answer:
                assert answer.url.path == "/ui/login"
            thief.cookie_jar.update_cookies({"devid_ui": kept})
            async with thief.get("/ui/renewals", allow_redirects=False) as answer:
                assert answer.status == 303 and answer.headers["Location"] == "/ui/login"
            # Another session of the same token is untouched.
            await login(client, served.tokens["operator"])
            async with client.get("/ui/renewals") as answer:
                assert answer.status == 200

    asyncio.run(run())
    with reading(served.authority.engine) as conn:
        actions = conn.execute(select(audit_events.c.action, audit_events.c.actor)).all()
    assert ("ui.logout", "ui:operator") in actions and ("ui.login", "ui:operator") in actions


def test_every_page_links_to_every_other(served: Served) -> None:
    pages_ = ("/ui", "/ui/renewals", "/ui/revocations", "/ui/audit", "/ui/health", "/ui/devices/LOT-A-000")

    async def run() -> None:
        async with session(served) as client:
            await login(client, served.tokens["admin"])
            for path in pages_:
                _, text = await csrf_of(client, path)
                for target in pages_[:5]:
                    assert f'href="{target}"' in text, (path, target)

    asyncio.run(run())


def test_renewals_page_counts_and_names_devices(served: Served, clock: FixedClock) -> None:
    """Due (expiring within 30 days), overdue (expired unrenewed within 7 days), failed (refused
    renewals), fell back to the IDevID (expired over 7 days ago) and pending approval, each with
    its devices linked."""
    auth = served.authority
    clock.advance(timedelta(days=21))  # the 20-day LDevIDs of LOT-A-000 and LOT-B-000 expired
    devices_mod.approval_pending(auth, "LOT-A-002")
    auth.record_refusal(
        PolicyError("device-inactive", "device is INACTIVE"),
        "est.simplereenroll",
        "LOT-B-001",
        "est:127.0.0.1",
    )

    def tally(page: str, title: str) -> tuple[int, str]:
        row = re.search(rf"<strong>{title}</strong>.*?<td class=\"n\">([\d,]+)</td><td>(.*?)</td></tr>", page)
        assert row is not None, title
        return int(row.group(1)), row.group(2)

    async def run() -> tuple[str, str]:
        async with session(served) as client:
            await login(client, served.tokens["auditor"])
            _, first = await csrf_of(client, "/ui/renewals")
            clock.advance(timedelta(days=15))
            await login(client, served.tokens["auditor"])  # the session lasted 8 hours
            _, later = await csrf_of(client, "/ui/renewals")
        return first, later

    first, later = asyncio.run(run())
    count, names = tally(first, "Overdue")
    assert count == 2 and 'href="/ui/devices/LOT-A-000"' in names and 'href="/ui/devices/LOT-B-000"' in names
    assert tally(first, "Fell back to IDevID")[0] == 0
    count, names = tally(first, "Failed")
    assert count == 1 and 'href="/ui/devices/LOT-B-001"' in names and "device-inactive" in names
    count, names = tally(first, "Pending approval")
    assert count == 1 and 'href="/ui/devices/LOT-A-002"' in names
    assert tally(first, "Due")[0] == 0  # the next LDevIDs end at 65 days: 44 days away
    # 15 days on, the two have been without a valid LDevID for over a week; the 65-day ones are due.
    assert tally(later, "Overdue")[0] == 0
    count, names = tally(later, "Fell back to IDevID")
    assert count == 2 and 'href="/ui/devices/LOT-A-000"' in names
    assert tally(later, "Due")[0] == 2


def test_revocations_page_by_reason_and_selector_with_a_filter(served: Served) -> None:
    auth = served.authority
    revoke(auth, RevokeRequest(Selector.LOT, "LOT-B", Reason.KEY_COMPROMISE, note="depot"), "cli")
    revoke(auth, RevokeRequest(Selector.DEVICE, "LOT-A-003", Reason.SUPERSEDED), "cli")
    Publisher(auth).publish()

    async def run() -> None:
        async with session(served) as client:
            await login(client, served.tokens["auditor"])
            _, page = await csrf_of(client, "/ui/revocations")
            assert re.search(r"<td>keyCompromise</td><td class=\"n\">1</td><td class=\"n\">6</td>", page)
            assert re.search(
                r"<td>lot</td><td class=\"n\">1</td><td class=\"n\">6</td><td class=\"n\">3</td>", page
            )
            assert '<a href="/ui/devices/LOT-A-003">' in page and "<td>depot</td>" in page
            # By lot: the lot revocation, its certificates and devices.
            by_lot = page.split("By lot (lot revocations)")[1].split("</section>")[0]
            assert re.search(r"<td>LOT-B</td><td class=\"n\">1</td><td class=\"n\">6</td>", by_lot)
            # Over time: this week's bar holds both revocations' 8 certificates, by reason.
            assert "certificates revoked per week" in page
            assert page.count("<title>keyCompromise: 6 revoked in the week of") == 1
            assert page.count("<title>superseded: 2 revoked in the week of") == 1
            # One OCSP answer per issuing CA, signed by this server's responder, with its size.
            answers = page.split("One OCSP response")[1]
            sizes = re.findall(r"<td>(manufacturing|operational)</td><td class=\"n\">([\d,]+)</td>", answers)
            assert sorted(name for name, _ in sizes) == ["manufacturing", "operational"]
            assert all(400 < int(n.replace(",", "")) < 2000 for _, n in sizes), sizes
            assert re.search(
                r"<td>crl</td><td>operational</td><td class=\"n\">\d+</td><td class=\"n\">[\d,]+</td>", page
            )
            _, only = await csrf_of(client, f"/ui/revocations?reason={Reason.SUPERSEDED.value}&selector=")
            listed = only.split("Revocations, newest first")[1]
            assert "LOT-A-003" in listed and "depot" not in listed
            async with client.get("/ui/revocations?reason=x") as answer:
                assert answer.status == 400

    asyncio.run(run())


def test_audit_page_verifies_and_is_for_auditors(served: Served) -> None:
    served.authority.checkpoint_audit()

    async def run() -> None:
        async with session(served) as auditor, session(served) as operator:
            await login(auditor, served.tokens["auditor"])
            await login(operator, served.tokens["operator"])
            async with operator.get("/ui/audit") as answer:
                assert answer.status == 403
            good, page = await csrf_of(auditor, "/ui/audit")
            assert "signature and hash match the chain" in page and "<td>certificate.issue</td>" in page
            _, older = await csrf_of(auditor, "/ui/audit?before=3")
            assert re.findall(r"<tr><td>(\d+)</td>", older) == ["2", "1"]
            _, filtered = await csrf_of(auditor, "/ui/audit?action=ui.login")
            assert filtered.count("<td>ui.login</td>") == 2 and "<td>certificate.issue</td>" not in filtered
            async with auditor.post("/ui/audit/verify", data={}) as answer:
                assert answer.status == 403
            async with auditor.post("/ui/audit/verify", data={"csrf": good}) as answer:
                assert answer.status == 200
                assert "Whole chain verified" in await answer.text()
            theirs, _ = await csrf_of(operator, "/ui/devices/LOT-A-000")
            async with operator.post("/ui/audit/verify", data={"csrf": theirs}) as answer:
                assert answer.status == 403

    asyncio.run(run())


def _actions(served: Served, serial: str) -> list[tuple[str, str]]:
    with reading(served.authority.engine) as conn:
        rows = conn.execute(
            select(audit_events.c.action, audit_events.c.actor).where(audit_events.c.subject == serial)
        ).all()
    return [(r.action, r.actor) for r in rows]


def test_disable_activate_approve_confirmed_and_audited(served: Served) -> None:
    serial, path = "LOT-A-002", "/ui/devices/LOT-A-002"
    devices_mod.approval_pending(served.authority, serial)

    async def run() -> None:
        async with session(served) as operator, session(served) as auditor:
            await login(operator, served.tokens["operator"])
            await login(auditor, served.tokens["auditor"])
            good, page = await csrf_of(operator, path)
            assert 'value="disable"' in page and 'value="approve"' in page and 'value="activate"' not in page
            assert "may not read the audit log" in page and "<td>device.registered</td>" in page  # events
            theirs, page = await csrf_of(auditor, path)
            assert "/state" not in page and "<td>certificate.issue</td>" in page  # trail, no forms
            form = {"action": "disable", "confirm": "yes"}
            for who, fields in ((operator, {}), (operator, {"csrf": theirs}), (auditor, {"csrf": theirs})):
                async with who.post(f"{path}/state", data={**form, **fields}) as answer:
                    assert answer.status == 403
            # Inline errors, nothing changed: no confirmation, no such action, no reason to revoke.
            async with operator.post(f"{path}/state", data={"action": "disable", "csrf": good}) as answer:
                assert answer.status == 400 and "tick the confirmation box" in await answer.text()
            async with operator.post(
                f"{path}/state", data={**form, "action": "delete", "csrf": good}
            ) as answer:
                assert answer.status == 400 and 'role="alert"' in await answer.text()
            async with operator.post(f"{path}/revoke", data={"confirm": "yes", "csrf": good}) as answer:
                assert answer.status == 400 and "choose a reason" in await answer.text()
            async with operator.post("/ui/devices/NOPE/state", data={**form, "csrf": good}) as answer:
                assert answer.status == 404
            # Activating an ACTIVE device (a form the page does not offer): the operation refuses.
            async with operator.post(
                f"{path}/state", data={**form, "action": "activate", "csrf": good}
            ) as answer:
                assert answer.status in (400, 403, 409) and "[device-state" in await answer.text()
            assert served.state(serial) == "ACTIVE"
            async with operator.post(f"{path}/state", data={**form, "csrf": good}) as answer:
                assert answer.status == 200 and "Done: disable." in await answer.text()
            assert served.state(serial) == "INACTIVE"
            async with operator.post(
                f"{path}/state", data={**form, "action": "activate", "csrf": good}
            ) as answer:
                assert "Done: activate." in await answer.text()
            async with operator.post(
                f"{path}/state", data={**form, "action": "approve", "csrf": good}
            ) as answer:
                page = await answer.text()
            assert "Done: approve." in page and "approved 20" in page and 'value="approve"' not in page

    asyncio.run(run())
    assert served.state(serial) == "ACTIVE"
    assert [a for a in _actions(served, serial) if a[1] == "ui:operator"] == [
        ("device.state", "ui:operator"),
        ("device.state", "ui:operator"),
        ("device.approve", "ui:operator"),
    ]


def test_dashboard_queries_on_sqlite_and_postgresql(authority: Authority) -> None:
    """The renewals, revocations, audit and device-trail queries on both stores (row-value
    comparisons, `|| ''` and capped counts are dialect-sensitive)."""
    fill(authority, {"LOT-Q": 2})
    devices_mod.approval_pending(authority, "LOT-Q-001")
    revoke(authority, RevokeRequest(Selector.LOT, "LOT-Q", Reason.SUPERSEDED), "cli")
    fill(authority, {"LOT-R": 2})
    authority.record_refusal(PolicyError("x", "refused"), "est.simplereenroll", "LOT-R-001", "est:peer")
    now = authority.clock.now()
    windows = Windows(approval_days=0)
    with reading(authority.engine) as conn:
        due = queries.listed(conn, expiring_unrenewed(now, windows))
        assert (due.count, [r.serial for r in due.rows]) == (1, ["LOT-R-000"])
        assert queries.listed(conn, held_for_approval(now, windows)).count == 0  # revoked since
        later = now + timedelta(days=22)
        assert [r.serial for r in queries.overdue(conn, later, timedelta(days=7)).rows] == ["LOT-R-000"]
        assert queries.listed(conn, fallen_back(later, windows)).count == 0
        fallen = queries.listed(conn, fallen_back(now + timedelta(days=30), windows))
        assert [r.serial for r in fallen.rows] == ["LOT-R-000"]
        failed = queries.refusals(conn, "est.simplereenroll", now - timedelta(days=1))
        assert [r.subject for r in failed.rows] == ["LOT-R-001"]
        listed = queries.revocation_list(conn, queries.RevocationFilter(Reason.SUPERSEDED.value, "lot"))
        assert [(r.value, r.certificates) for r in listed] == [("LOT-Q", 4)]
        by_reason = queries.revocation_totals(conn, models.revocations.c.reason)
        assert [(r.key, r.actions, r.certificates) for r in by_reason] == [(Reason.SUPERSEDED.value, 1, 4)]
        assert [r.action for r in queries.audit_page(conn, "revocation", None)] == ["revocation"]
        found = queries.device(conn, "LOT-Q-001")
        assert found is not None
        trail = queries.trail(conn, "LOT-Q-001", [c.serial for c in found.certificates])
        actions = [r.action for r in trail.audit]
        assert actions == ["device.approval-requested", "certificate.issue", "certificate.issue"]
        assert "device.revoked" in {r.type for r in trail.events}


def test_a_gateway_token_cannot_open_the_dashboard(served: Served, clock: FixedClock) -> None:
    """The gateway role reports sightings and reads nothing: its login is refused (403), no session."""
    gateway = tokens.create(served.authority, "edge", "gateway", clock.now())[0]

    async def run() -> None:
        async with (
            session(served) as client,
            client.post("/ui/login", data=await login_form(client, gateway), allow_redirects=False) as answer,
        ):
            assert answer.status == 403 and "devid_ui=" not in " ".join(
                answer.headers.getall("Set-Cookie", [])
            )
            assert "cannot open the dashboard" in await answer.text()

    asyncio.run(run())


def test_a_revoked_device_still_seen_at_a_gateway_shows_on_its_page_and_in_health(
    served: Served, clock: FixedClock
) -> None:
    auth = served.authority
    with reading(auth.engine) as conn:
        fingerprint = conn.execute(
            select(models.certificates.c.fingerprint)
            .join(models.devices, models.devices.c.id == models.certificates.c.device_id)
            .where(models.devices.c.serial == "LOT-B-002", models.certificates.c.profile == "ldevid")
        ).scalar_one()
    revoke(auth, RevokeRequest(Selector.DEVICE, "LOT-B-002", Reason.KEY_COMPROMISE), "op")
    clock.advance(timedelta(hours=3))
    record(auth, "edge-7", [Sighting(fingerprint, clock.now() - timedelta(hours=5), clock.now())])

    async def run() -> None:
        async with session(served) as client:
            await login(client, served.tokens["auditor"])
            async with client.get("/ui/health") as answer:
                health = await answer.text()
            async with client.get("/ui/devices/LOT-B-002") as answer:
                device = await answer.text()
            async with client.get("/ui/devices/LOT-B-001") as answer:
                other = await answer.text()
        row = re.search(
            r"<td>revoked-still-connected</td><td[^>]*>critical</td><td class=\"n\">1</td>", health
        )
        assert row is not None, health
        assert '<a href="/ui/devices/LOT-B-002">LOT-B-002 (certificate ' in health
        assert "at gateway edge-7, 3 h after its revocation" in health
        assert "<h2>Seen at gateways</h2>" in device and "<td>edge-7</td>" in device
        assert f"<td>{clock.now():%Y-%m-%d %H:%M}</td>" in device  # last seen, and seen revoked
        assert "No gateway reported this device" in other

    asyncio.run(run())
