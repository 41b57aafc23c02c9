"""API bearer tokens: made once, shown once, stored only as a keyed MAC.

The MAC is HMAC-SHA256 under the authority's credential key (devid.authority.credentials): a token
can be made, and a stored one checked, only with the CA secret unlocked, so a row written into the
database by someone without it is never honoured. Checking a token (`devid.authority.api_tokens`)
sits below the API and the dashboard, which both do it.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, update

from devid.authority.api_tokens import TokenInfo, token_info
from devid.authority.core import Authority
from devid.authority.credential_key import Purpose
from devid.authority.roles import Role
from devid.errors import ConflictError, NotFoundError, PolicyError
from devid.store import audit
from devid.store.engine import writing
from devid.store.models import api_tokens as tokens

PREFIX = "devid_"
DEFAULT_RATE_PER_MINUTE = 600
MAX_RATE_PER_MINUTE = 1_000_000
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_new(name: str, role: str, rate_per_minute: int) -> Role:
    """Refuse a bad name, role or rate with a reason (PolicyError), before anything is written."""
    if not _NAME.match(name):
        raise PolicyError(
            "request-token-name",
            f"token name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    try:
        parsed = Role(role)
    except ValueError:
        raise PolicyError(
            "request-token-role", f"unknown role {role!r}; known: {', '.join(r.value for r in Role)}"
        ) from None
    if not 1 <= rate_per_minute <= MAX_RATE_PER_MINUTE:
        raise PolicyError(
            "request-token-rate", f"rate per minute must be between 1 and {MAX_RATE_PER_MINUTE}"
        )
    return parsed


def create(
    authority: Authority,
    name: str,
    role: str,
    now: datetime,
    *,
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE,
    expires_at: datetime | None = None,
    actor: str = "cli",
) -> tuple[str, TokenInfo]:
    """A new token named `name`: returns the token (the only time it exists outside the caller)."""
    parsed = check_new(name, role, rate_per_minute)
    if expires_at is not None and expires_at <= now:
        raise PolicyError("request-token-expiry", "a token's expiry must be in the future")
    token = PREFIX + secrets.token_urlsafe(32)
    mac = authority.credentials.mac(Purpose.API_TOKEN, token)  # needs the CA secret: before any write
    with writing(authority.engine) as conn:
        if conn.execute(select(tokens.c.id).where(tokens.c.name == name)).first() is not None:
            raise ConflictError("token-exists", f"an API token named {name!r} already exists")
        conn.execute(
            insert(tokens).values(
                name=name,
                token_hash=mac,
                role=parsed.value,
                rate_per_minute=rate_per_minute,
                created_at=now,
                expires_at=expires_at,
            )
        )
        detail = {"role": parsed.value, "rate_per_minute": rate_per_minute, "expires_at": expires_at}
        audit.append(conn, [audit.Event("api-token.create", name, actor, "ok", detail)], now)
        info = token_info(conn.execute(select(tokens).where(tokens.c.name == name)).one())
    return token, info


def revoke(engine: Engine, name: str, now: datetime, *, actor: str = "cli") -> TokenInfo:
    """Revoke `name` at once; a token already revoked is a ConflictError (its time stays the first)."""
    with writing(engine) as conn:
        row = conn.execute(select(tokens).where(tokens.c.name == name)).first()
        if row is None:
            raise NotFoundError("unknown-token", f"no API token named {name!r}")
        if row.revoked_at is not None:
            raise ConflictError("token-revoked", f"API token {name!r} was already revoked")
        conn.execute(update(tokens).where(tokens.c.id == row.id).values(revoked_at=now))
        audit.append(conn, [audit.Event("api-token.revoke", name, actor, "ok", {"role": row.role})], now)
        return token_info(conn.execute(select(tokens).where(tokens.c.id == row.id)).one())


def get(conn: Connection, name: str) -> TokenInfo:
    row = conn.execute(select(tokens).where(tokens.c.name == name)).first()
    if row is None:
        raise NotFoundError("unknown-token", f"no API token named {name!r}")
    return token_info(row)


def list_all(conn: Connection, *, after: str = "", limit: int = 1000) -> list[TokenInfo]:
    """Tokens in name order (keyset paging on the unique name)."""
    query = select(tokens).where(tokens.c.name > after).order_by(tokens.c.name).limit(limit)
    return [token_info(row) for row in conn.execute(query)]
