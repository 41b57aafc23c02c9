"""The dashboard's routes: login/logout, the fleet overview with the expiry chart, device search,
the device page and its Revoke form.

Every page but the login form needs a session (`devid.ui.session`); every POST but the login
needs the session's CSRF token, else 403 and nothing changes. What a role may do is the admin
API's matrix (`devid.authority.roles`): revoking needs `devices:write`, so an auditor's page has
no button and its POST is refused. Store work runs on a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from devid.authority.core import Authority
from devid.authority.health import run_checks
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.roles import Permission, allows
from devid.errors import AuthenticationRequired, DevidError
from devid.pki.reasons import Reason
from devid.store.engine import reading
from devid.store.states import DeviceState
from devid.ui import pages, queries
from devid.ui.chart import expiry_chart
from devid.ui.html import Markup, h
from devid.ui.session import COOKIE, LOGIN_COOKIE, Session, Sessions

PREFIX = "/ui"
#: The health page counts each finding up to this ("1,000+"): it reads no more rows per check.
HEALTH_CAP = 1000


def _html(body: Markup, status: int = 200) -> web.Response:
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            # Nothing outside this server: no script at all, styles inline, images inline.
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


class Dashboard:
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.sessions = Sessions(authority)

    async def _session(self, request: web.Request) -> Session:
        try:
            return await asyncio.to_thread(self.sessions.open, request.cookies.get(COOKIE))
        except AuthenticationRequired:
            raise web.HTTPSeeOther(f"{PREFIX}/login") from None

    async def _posted(self, request: web.Request) -> tuple[Session, dict[str, str]]:
        """The session and form of a POST whose CSRF token is the session's; else 403."""
        try:
            session = await asyncio.to_thread(self.sessions.open, request.cookies.get(COOKIE))
        except AuthenticationRequired as exc:
            raise web.HTTPForbidden(text=exc.message) from None
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not Sessions.csrf_ok(session, form.get("csrf")):
            raise web.HTTPForbidden(text="the form's CSRF token is missing or wrong; reload the page")
        return session, form

    def _login_page(self, error: str | None, status: int = 200) -> web.Response:
        """The login form with a fresh CSRF token and the cookie it is bound to."""
        nonce, csrf = self.sessions.login_nonce()
        response = _html(pages.login(error, csrf), status)
        response.set_cookie(LOGIN_COOKIE, nonce, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        return response

    async def login_form(self, request: web.Request) -> web.Response:
        return self._login_page(None)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token, csrf = form.get("token"), form.get("csrf")
        if not self.sessions.login_csrf_ok(
            request.cookies.get(LOGIN_COOKIE), csrf if isinstance(csrf, str) else None
        ):
            raise web.HTTPForbidden(text="the login form's CSRF token is missing or wrong; reload the page")
        try:
            cookie, _ = await asyncio.to_thread(self.sessions.login, token if isinstance(token, str) else "")
        except AuthenticationRequired as exc:
            return self._login_page(exc.message, 401)
        response = web.HTTPSeeOther(PREFIX)
        response.del_cookie(LOGIN_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        response.set_cookie(COOKIE, cookie, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        await self._posted(request)
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        raise response

    async def overview(self, request: web.Request) -> web.Response:
        session = await self._session(request)

        def read() -> Markup:
            now = self.authority.clock.now()
            with reading(self.authority.engine) as conn:
                summary = queries.overview(conn, now)
                weeks = queries.expiry_weeks(conn, now)
            return pages.overview(session, summary, expiry_chart(weeks, now))

        return _html(await asyncio.to_thread(read))

    async def health(self, request: web.Request) -> web.Response:
        session = await self._session(request)

        def read() -> Markup:
            with reading(self.authority.engine) as conn:
                return pages.health(session, run_checks(conn, self.authority.clock.now(), cap=HEALTH_CAP))

        return _html(await asyncio.to_thread(read))

    async def search(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        prefix = request.query.get("q", "")[:128]

        def read() -> Markup:
            with reading(self.authority.engine) as conn:
                return pages.search(session, prefix, queries.search(conn, prefix))

        return _html(await asyncio.to_thread(read))

    async def device(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        serial = request.match_info["serial"]

        def read() -> queries.DevicePage | None:
            with reading(self.authority.engine) as conn:
                return queries.device(conn, serial)

        found = await asyncio.to_thread(read)
        if found is None:
            return _html(pages.page(session, "Not found", h("<p>No device {}.</p>", serial)), 404)
        revoked = found.device.state == DeviceState.REVOKED
        may_revoke = allows(session.role, Permission.DEVICES_WRITE) and not revoked
        return _html(pages.device(session, found, may_revoke, request.query.get("done", "")))

    async def revoke(self, request: web.Request) -> web.Response:
        session, form = await self._posted(request)
        serial = request.match_info["serial"]
        if not allows(session.role, Permission.DEVICES_WRITE):
            raise web.HTTPForbidden(text=f"role {session.role.value} may not revoke devices")
        back = f"{PREFIX}/devices/{quote(serial, safe='')}"
        try:
            reason = Reason(int(form.get("reason", "")))
        except ValueError:
            raise web.HTTPBadRequest(text="choose a reason") from None
        if form.get("confirm") != "yes":
            raise web.HTTPBadRequest(text="tick the confirmation box to revoke")
        req = RevokeRequest(Selector.DEVICE, serial, reason, note=form.get("note", "")[:200])
        try:
            result = await asyncio.to_thread(revoke, self.authority, req, f"ui:{session.token_name}")
        except DevidError as exc:
            return _html(pages.page(session, "Not revoked", h("<p class=err>{}</p>", exc.message)), 409)
        raise web.HTTPSeeOther(f"{back}?done={result.certificates}")


def ui_routes(authority: Authority) -> list[web.RouteDef]:
    ui = Dashboard(authority)
    return [
        web.get(PREFIX, ui.overview),
        web.get(f"{PREFIX}/login", ui.login_form),
        web.post(f"{PREFIX}/login", ui.login),
        web.post(f"{PREFIX}/logout", ui.logout),
        web.get(f"{PREFIX}/health", ui.health),
        web.get(f"{PREFIX}/devices", ui.search),
        web.get(f"{PREFIX}/devices/{{serial}}", ui.device),
        web.post(f"{PREFIX}/devices/{{serial}}/revoke", ui.revoke),
    ]
