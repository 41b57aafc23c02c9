"""Dashboard sessions: a cookie signed under the authority's credential key, and CSRF tokens.

Logging in checks an API token once (`devid.authority.api_tokens.verify`); the browser then holds
only a signed cookie naming the token, an expiry and a random session id, never the token. The
cookie is HMAC-SHA256 under the credential key's own `ui-session` purpose, so it is checked the
same way by every server process sharing the store, with no session table. On every request the
token's row is read again: revoking or expiring the token ends its sessions at once, and the role
is always the token's current one. Logging in and out are audited (`ui.login`, `ui.logout`, the
session id as subject); the cookie carries its login event's seq, so `open` finds a logout of
its session with one step into the (action, seq) index from there: a logged-out cookie no
longer works, in any process. The CSRF token of a form is a MAC of the session id (a
different message under the same key): it is per session, and a page of another session or a
guess never matches it.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from devid.authority.api_tokens import token_info, verify
from devid.authority.core import Authority
from devid.authority.credential_key import Purpose
from devid.authority.roles import Permission, Role, allows
from devid.errors import AuthenticationRequired, PolicyError
from devid.store import audit
from devid.store.engine import reading, writing
from devid.store.models import api_tokens, audit_events

COOKIE = "devid_ui"
#: Before a session exists: a random nonce the login form's CSRF token is the MAC of (a forged
#: cross-site login would need both the cookie, which only this site sets, and its MAC).
LOGIN_COOKIE = "devid_ui_login"
#: How long a login lasts (never past the token's own expiry).
LIFETIME = timedelta(hours=8)


@dataclass(frozen=True)
class Session:
    token_name: str
    role: Role
    csrf: str
    expires_at: datetime
    #: The random session id (the subject of its `ui.login` and `ui.logout` audit events).
    sid: str


def _subject(sid: str) -> str:
    return f"ui-session:{sid}"


class Sessions:
    """Opens and checks dashboard sessions for `authority`."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority

    def _mac(self, message: str) -> str:
        return self.authority.credentials.mac(Purpose.UI_SESSION, message)

    def login(self, token: str) -> tuple[str, Session]:
        """The cookie value and session for a valid API `token`; else AuthenticationRequired (or
        PolicyError for a role that may read nothing the dashboard shows)."""
        now = self.authority.clock.now()
        with reading(self.authority.engine) as conn:
            info = verify(conn, self.authority.credentials, token.strip(), now)
        if not allows(info.role, Permission.DEVICES_READ):
            # A gateway's token reports sessions and reads nothing: no page would be its to see.
            raise PolicyError(
                "ui-role-refused",
                f"a {info.role.value} token cannot open the dashboard (it needs devices:read)",
            )
        expires = now + LIFETIME
        if info.expires_at is not None:
            expires = min(expires, info.expires_at)
        name = base64.urlsafe_b64encode(info.name.encode()).decode().rstrip("=")
        sid = secrets.token_urlsafe(18)
        with writing(self.authority.engine) as conn:
            audit.append(conn, [audit.Event("ui.login", _subject(sid), f"ui:{info.name}")], now)
            seq, _ = audit.head(conn)
        body = f"{name}.{int(expires.timestamp())}.{sid}.{seq}"
        cookie = f"{body}.{self._mac(body)}"
        return cookie, self.open(cookie)

    def open(self, cookie: str | None) -> Session:
        """The session `cookie` carries if its MAC is right, it has not expired and its token is
        still valid; else AuthenticationRequired."""
        parts = (cookie or "").split(".")
        if len(parts) != 5:
            raise AuthenticationRequired("ui-session-missing", "please log in")
        body = ".".join(parts[:4])
        if not hmac.compare_digest(parts[4], self._mac(body)):
            raise AuthenticationRequired("ui-session-invalid", "the session is not valid; please log in")
        name = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
        expires_at = datetime.fromtimestamp(int(parts[1]), UTC)
        now = self.authority.clock.now()
        if expires_at <= now:
            raise AuthenticationRequired("ui-session-expired", "the session has expired; please log in")
        a = audit_events.c
        with reading(self.authority.engine) as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).first()
            ended = conn.execute(
                select(a.seq)
                .where(a.action == "ui.logout", a.seq > int(parts[3]), a.subject == _subject(parts[2]))
                .limit(1)
            ).first()
        if ended is not None:
            raise AuthenticationRequired("ui-session-ended", "the session was logged out; please log in")
        if (
            row is None
            or row.revoked_at is not None
            or (row.expires_at is not None and row.expires_at <= now)
        ):
            raise AuthenticationRequired("ui-session-token", "the session's API token is no longer valid")
        info = token_info(row)
        return Session(info.name, info.role, self._mac(f"csrf.{parts[2]}"), expires_at, parts[2])

    def logout(self, session: Session) -> None:
        """End `session` for good: its cookie is refused from now on, wherever it is presented."""
        with writing(self.authority.engine) as conn:
            event = audit.Event("ui.logout", _subject(session.sid), f"ui:{session.token_name}")
            audit.append(conn, [event], self.authority.clock.now())

    def login_nonce(self) -> tuple[str, str]:
        """A fresh login cookie value and the CSRF token its form carries."""
        nonce = secrets.token_urlsafe(18)
        return nonce, self._mac(f"login.{nonce}")

    def login_csrf_ok(self, nonce: str | None, presented: str | None) -> bool:
        return (
            bool(nonce)
            and presented is not None
            and hmac.compare_digest(self._mac(f"login.{nonce}"), presented)
        )

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(session.csrf, presented)
