"""The dashboard's routes: login/logout, the fleet overview with the expiry chart, renewal health,
revocations, the audit log and its verification, device search, and the device page with its
Revoke, Disable, Activate and Approve forms (each calling the operation the admin API and the
CLI call, so checks and audit events are theirs).

Every page but the login form needs a session (`devid.ui.session`); every POST but the login
needs the session's CSRF token, else 403 and nothing changes. What a role may do is the admin
API's matrix (`devid.authority.roles`): changing a device needs `devices:write`, so an auditor's
page has no button and its POST is refused; the audit log needs `audit:read`. A form with a
missing choice or an unticked confirmation, or one the operation refuses, comes back with the
error inline, at a 4xx status, and nothing changed. Store work runs on a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from devid.authority.core import Authority
from devid.authority.devices import approve, set_state
from devid.authority.enroll import Operation
from devid.authority.health import (
    DEVICE_PROFILES,
    Windows,
    expiring_unrenewed,
    fallen_back,
    held_for_approval,
    run_checks,
)
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.roles import Permission, allows
from devid.errors import AuthenticationRequired, DevidError, PolicyError
from devid.pki.reasons import Reason
from devid.revocation.report import ocsp_without_certs
from devid.store import audit, models
from devid.store.audit import Verification
from devid.store.engine import reading
from devid.store.states import DeviceState
from devid.ui import pages, queries
from devid.ui.chart import expiry_chart, weekly_chart
from devid.ui.html import Markup, h
from devid.ui.session import COOKIE, LOGIN_COOKIE, Session, Sessions
from devid.web.errors import status_for

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


#: The server's OCSP responder (request DER in, response DER out), for the revocations page's
#: sample answer: the dashboard does not sign status itself.
OcspResponder = Callable[[bytes], bytes]


class Dashboard:
    def __init__(self, authority: Authority, ocsp: OcspResponder | None = None) -> None:
        self.authority = authority
        self.sessions = Sessions(authority)
        self.ocsp = ocsp

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
        except (AuthenticationRequired, PolicyError) as exc:
            return self._login_page(exc.message, status_for(exc))
        response = web.HTTPSeeOther(PREFIX)
        response.del_cookie(LOGIN_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        response.set_cookie(COOKIE, cookie, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        session, _ = await self._posted(request)
        await asyncio.to_thread(self.sessions.logout, session)
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

    def _device_view(
        self, session: Session, serial: str, notice: str = "", error: str = ""
    ) -> pages.DeviceView | None:
        """The device page's data, or None for an unknown device (on a worker thread)."""
        with reading(self.authority.engine) as conn:
            found = queries.device(conn, serial)
            if found is None:
                return None
            trail = queries.trail(conn, serial, [c.serial for c in found.certificates])
        d = found.device
        writer = allows(session.role, Permission.DEVICES_WRITE)
        actions: list[pages.StateAction] = []
        if writer and d.state in (DeviceState.ACTIVE, DeviceState.PENDING_ACTIVATION):
            actions.append(pages.StateAction.DISABLE)
        if writer and d.state in ACTIVATABLE:
            actions.append(pages.StateAction.ACTIVATE)
        if writer and d.approval_requested_at is not None and d.approved_at is None:
            actions.append(pages.StateAction.APPROVE)
        return pages.DeviceView(
            found,
            trail,
            show_audit=allows(session.role, Permission.AUDIT_READ),
            may_revoke=writer and d.state != DeviceState.REVOKED,
            actions=tuple(actions),
            notice=notice,
            error=error,
        )

    async def _device_page(
        self, session: Session, serial: str, notice: str = "", error: str = "", status: int = 200
    ) -> web.Response:
        view = await asyncio.to_thread(self._device_view, session, serial, notice, error)
        if view is None:
            return _html(pages.page(session, "Not found", h("<p>No device {}.</p>", serial)), 404)
        return _html(pages.device(session, view), status)

    async def device(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        done, changed = request.query.get("done", ""), request.query.get("changed", "")
        notice = f"Revoked: {done} certificate(s)." if done else ""
        if changed in set(pages.StateAction):
            notice = f"Done: {changed}."
        return await self._device_page(session, request.match_info["serial"], notice)

    async def _writer(self, request: web.Request) -> tuple[Session, dict[str, str], str]:
        """A device-changing POST: CSRF checked, then the role (403 for one without devices:write)."""
        session, form = await self._posted(request)
        if not allows(session.role, Permission.DEVICES_WRITE):
            raise web.HTTPForbidden(text=f"role {session.role.value} may not change devices")
        return session, form, request.match_info["serial"]

    async def revoke(self, request: web.Request) -> web.Response:
        session, form, serial = await self._writer(request)
        back = f"{PREFIX}/devices/{quote(serial, safe='')}"
        try:
            reason = Reason(int(form.get("reason", "")))
        except ValueError:
            return await self._device_page(session, serial, error="choose a reason", status=400)
        if form.get("confirm") != "yes":
            return await self._device_page(
                session, serial, error="tick the confirmation box to revoke", status=400
            )
        req = RevokeRequest(Selector.DEVICE, serial, reason, note=form.get("note", "")[:200])
        try:
            result = await asyncio.to_thread(revoke, self.authority, req, f"ui:{session.token_name}")
        except DevidError as exc:
            return await self._refused(session, serial, exc)
        raise web.HTTPSeeOther(f"{back}?done={result.certificates}")

    async def change_state(self, request: web.Request) -> web.Response:
        """Disable, activate or approve, by the operations the admin API and the CLI use."""
        session, form, serial = await self._writer(request)
        try:
            action = pages.StateAction(form.get("action", ""))
        except ValueError:
            return await self._device_page(
                session, serial, error="choose disable, activate or approve", status=400
            )
        if form.get("confirm") != "yes":
            return await self._device_page(
                session, serial, error=f"tick the confirmation box to {action.value}", status=400
            )
        actor = f"ui:{session.token_name}"
        try:
            if action is pages.StateAction.APPROVE:
                await asyncio.to_thread(approve, self.authority, serial, actor)
            elif action is pages.StateAction.ACTIVATE:
                await asyncio.to_thread(
                    set_state, self.authority, serial, DeviceState.ACTIVE, actor, from_states=ACTIVATABLE
                )
            else:
                await asyncio.to_thread(set_state, self.authority, serial, DeviceState.INACTIVE, actor)
        except DevidError as exc:
            return await self._refused(session, serial, exc)
        raise web.HTTPSeeOther(f"{PREFIX}/devices/{quote(serial, safe='')}?changed={action.value}")

    async def _refused(self, session: Session, serial: str, exc: DevidError) -> web.Response:
        """The device page again with the refusal inline, at the status the admin API gives it."""
        return await self._device_page(
            session, serial, error=f"{exc.message} [{exc.code}]", status=status_for(exc)
        )

    async def renewals(self, request: web.Request) -> web.Response:
        session = await self._session(request)

        def read() -> Markup:
            now = self.authority.clock.now()
            windows = Windows(approval_days=0)
            with reading(self.authority.engine) as conn:
                due = queries.listed_each(
                    conn,
                    [expiring_unrenewed(now, windows, (profile,)) for profile in DEVICE_PROFILES],
                    key=lambda row: (row.not_after, row.id),
                )
                late = queries.overdue(conn, now, timedelta(days=windows.fallback_days))
                failed = queries.refusals(conn, f"est.{Operation.REENROLL.value}", now - FAILED_WITHIN)
                fallback = queries.listed(conn, fallen_back(now, windows))
                held = queries.listed(conn, held_for_approval(now, windows))
            tallies = [
                pages.Tally(
                    "Due",
                    f"valid device certificates expiring within {windows.expiry_days} days with no newer one",
                    due,
                    pages.device_links(
                        (r.serial, f"{r.profile} expires {r.not_after:%Y-%m-%d}") for r in due.rows
                    ),
                ),
                pages.Tally(
                    "Overdue",
                    f"active devices whose LDevID expired unrenewed within {windows.fallback_days} days",
                    late,
                    pages.device_links((r.serial, f"expired {r.not_after:%Y-%m-%d}") for r in late.rows),
                ),
                pages.Tally(
                    "Failed",
                    f"renewals (EST simplereenroll) refused in the last {FAILED_WITHIN.days} days",
                    failed,
                    pages.device_links((r.subject, _refusal_reason(r.detail)) for r in failed.rows),
                ),
                pages.Tally(
                    "Fell back to IDevID",
                    f"active devices without a valid LDevID or session certificate for over "
                    f"{windows.fallback_days} days",
                    fallback,
                    pages.device_links(
                        (r.serial, f"LDevID expired {r.expired:%Y-%m-%d}") for r in fallback.rows
                    ),
                ),
                pages.Tally(
                    "Pending approval",
                    "enrollments held for an operator's approval",
                    held,
                    pages.device_links(
                        (r.serial, f"requested {r.approval_requested_at:%Y-%m-%d}") for r in held.rows
                    ),
                ),
            ]
            return pages.renewals(session, tallies)

        return _html(await asyncio.to_thread(read))

    async def revocations(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        q = request.query
        try:
            reason = int(q["reason"]) if q.get("reason") else None
            before = int(q["before"]) if q.get("before") else None
        except ValueError:
            raise web.HTTPBadRequest(text="reason and before are numbers") from None
        selector = q.get("selector", "")[:16]
        where = queries.RevocationFilter(reason, selector or None, before)

        def read() -> tuple[pages.RevocationsView, list[tuple[str, bytes]]]:
            r = models.revocations.c
            now = self.authority.clock.now()
            with reading(self.authority.engine) as conn:
                listed = queries.revocation_list(conn, where)
                start, weeks = queries.revoked_weeks(conn, now)
                issuers = [ca.name for ca in self.authority.device_issuers()]
                samples = queries.latest_certificates(conn, issuers)
                view = pages.RevocationsView(
                    queries.revocation_totals(conn, r.reason),
                    queries.revocation_totals(conn, r.selector),
                    queries.revocation_totals(conn, r.value, "lot"),
                    weekly_chart(weeks, start, "revoked", f"over the last {len(weeks)} weeks, by reason"),
                    listed,
                    reason,
                    selector,
                    listed[-1].id if len(listed) == queries.PAGE_SIZE else None,
                    queries.latest_published(conn),
                )
            return view, samples

        view, samples = await asyncio.to_thread(read)
        # The responder belongs to the event loop (the OCSP endpoints call it there): asked here too.
        return _html(pages.revocations(session, dataclasses.replace(view, ocsp=self._ocsp_sizes(samples))))

    def _ocsp_sizes(self, samples: list[tuple[str, bytes]]) -> tuple[tuple[str, int, int], ...]:
        """(CA, bytes, bytes without the responder certificate) of one OCSP answer per issuing CA,
        for its latest certificate, from the server's responder (its cache answers repeats)."""
        if self.ocsp is None:
            return ()
        sizes = []
        for name, der in samples:
            request = ocsp.OCSPRequestBuilder().add_certificate(
                x509.load_der_x509_certificate(der), self.authority.cas[name].certificate, hashes.SHA1()
            )
            answer = self.ocsp(request.build().public_bytes(serialization.Encoding.DER))
            if ocsp.load_der_ocsp_response(answer).response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                sizes.append((name, len(answer), len(ocsp_without_certs(answer))))
        return tuple(sizes)

    def _audit_view(
        self, session: Session, action: str, before: int | None, verification: Verification | None
    ) -> Markup:
        with reading(self.authority.engine) as conn:
            rows = queries.audit_page(conn, action, before)
            head, _ = audit.head(conn)
            checkpoint = audit.last_checkpoint(conn)
            holds = checkpoint is not None and audit.checkpoint_holds(
                conn, self.authority.audit_key().public_key(), checkpoint
            )
        view = pages.AuditView(
            rows,
            action,
            rows[-1].seq if len(rows) == queries.PAGE_SIZE else None,
            head,
            checkpoint,
            holds,
            verification,
        )
        return pages.audit(session, view)

    def _auditor(self, session: Session) -> None:
        if not allows(session.role, Permission.AUDIT_READ):
            raise web.HTTPForbidden(text=f"role {session.role.value} may not read the audit log")

    async def audit_log(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        self._auditor(session)
        action = request.query.get("action", "")[:64]
        try:
            before = int(request.query["before"]) if request.query.get("before") else None
        except ValueError:
            raise web.HTTPBadRequest(text="before is an event number") from None
        return _html(await asyncio.to_thread(self._audit_view, session, action, before, None))

    async def verify_audit(self, request: web.Request) -> web.Response:
        """Walk the whole chain (a POST: it reads every event, so no crawler or prefetch starts it)."""
        session, _ = await self._posted(request)
        self._auditor(session)

        def run() -> Markup:
            return self._audit_view(session, "", None, self.authority.verify_audit())

        return _html(await asyncio.to_thread(run))


#: The states a device may be activated from (the CLI's `devid device activate`).
ACTIVATABLE = (DeviceState.PENDING_ACTIVATION, DeviceState.INACTIVE)
#: How far back the renewals page counts refused renewals.
FAILED_WITHIN = timedelta(days=7)


def _refusal_reason(detail: str) -> str:
    """The code of an audited refusal (its detail is JSON with `code`)."""
    try:
        return str(json.loads(detail).get("code", "refused"))
    except ValueError:
        return "refused"


def ui_routes(authority: Authority, ocsp: OcspResponder | None = None) -> list[web.RouteDef]:
    ui = Dashboard(authority, ocsp)
    return [
        web.get(PREFIX, ui.overview),
        web.get(f"{PREFIX}/login", ui.login_form),
        web.post(f"{PREFIX}/login", ui.login),
        web.post(f"{PREFIX}/logout", ui.logout),
        web.get(f"{PREFIX}/health", ui.health),
        web.get(f"{PREFIX}/devices", ui.search),
        web.get(f"{PREFIX}/devices/{{serial}}", ui.device),
        web.post(f"{PREFIX}/devices/{{serial}}/revoke", ui.revoke),
        web.post(f"{PREFIX}/devices/{{serial}}/state", ui.change_state),
        web.get(f"{PREFIX}/renewals", ui.renewals),
        web.get(f"{PREFIX}/revocations", ui.revocations),
        web.get(f"{PREFIX}/audit", ui.audit_log),
        web.post(f"{PREFIX}/audit/verify", ui.verify_audit),
    ]
