"""API tokens over the API itself: admins create and revoke them; auditors may list them.

The token is in the creation answer only; listings show names, roles, rates and times.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from devid.api import tokens
from devid.api.routes import LIMIT, MAYBE_TIME, TIME, Call, Param, Reply, Route, obj, page, page_of
from devid.authority.api_tokens import TokenInfo
from devid.authority.roles import Permission, Role
from devid.store.engine import reading

ROLE: dict[str, Any] = {"type": "string", "enum": [r.value for r in Role]}
NAME: dict[str, Any] = {"type": "string", "pattern": tokens.NAME_PATTERN}
RATE: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": tokens.MAX_RATE_PER_MINUTE}
_FIELDS = {
    "name": NAME,
    "role": ROLE,
    "rate_per_minute": RATE,
    "created_at": TIME,
    "expires_at": MAYBE_TIME,
    "revoked_at": MAYBE_TIME,
}
TOKEN = obj(_FIELDS)
CREATED = obj({**_FIELDS, "token": {"type": "string", "description": "the bearer token, shown this once"}})
NEW_TOKEN = obj(
    {
        "name": NAME,
        "role": ROLE,
        "rate_per_minute": {**RATE, "default": tokens.DEFAULT_RATE_PER_MINUTE},
        "expires_days": {"type": "integer", "minimum": 1, "maximum": 36500},
    },
    optional=["rate_per_minute", "expires_days"],
)
NAME_PARAM = Param("name", {"type": "string", "minLength": 1, "maxLength": 64}, "token name")


def list_tokens(call: Call) -> dict[str, Any]:
    """API tokens in name order (never the tokens themselves)."""
    limit = call.query["limit"]
    with reading(call.authority.engine) as conn:
        infos = tokens.list_all(conn, after=call.query.get("after", ""), limit=limit)
    return page(infos, TokenInfo.as_json, limit, lambda info: info.name)


def create_token(call: Call) -> Reply:
    """A new API token; the answer holds the token, which is not stored and cannot be shown again."""
    now = call.authority.clock.now()
    days = call.body.get("expires_days")
    token, info = tokens.create(
        call.authority,
        call.body["name"],
        call.body["role"],
        now,
        rate_per_minute=call.body.get("rate_per_minute", tokens.DEFAULT_RATE_PER_MINUTE),
        expires_at=now + timedelta(days=days) if days else None,
        actor=call.actor,
    )
    return Reply({**info.as_json(), "token": token}, 201)


def get_token(call: Call) -> dict[str, Any]:
    """One API token's record."""
    with reading(call.authority.engine) as conn:
        return tokens.get(conn, call.path["name"]).as_json()


def revoke_token(call: Call) -> dict[str, Any]:
    """Revoke an API token at once, in every server process; the record stays for the audit trail."""
    return tokens.revoke(
        call.authority.engine, call.path["name"], call.authority.clock.now(), actor=call.actor
    ).as_json()


ROUTES = [
    Route(
        "GET",
        "/api-tokens",
        Permission.TOKENS_READ,
        "List API tokens",
        list_tokens,
        page_of(TOKEN),
        query=[
            Param("after", {"type": "string", "maxLength": 64}, "cursor: the previous page's `next`"),
            LIMIT,
        ],
    ),
    Route(
        "POST",
        "/api-tokens",
        Permission.TOKENS_WRITE,
        "Create an API token",
        create_token,
        CREATED,
        status=201,
        body=NEW_TOKEN,
        conflicts=True,
    ),
    Route(
        "GET",
        "/api-tokens/{name}",
        Permission.TOKENS_READ,
        "Show an API token",
        get_token,
        TOKEN,
        path_params=[NAME_PARAM],
    ),
    Route(
        "DELETE",
        "/api-tokens/{name}",
        Permission.TOKENS_WRITE,
        "Revoke an API token",
        revoke_token,
        TOKEN,
        path_params=[NAME_PARAM],
        conflicts=True,
    ),
]
