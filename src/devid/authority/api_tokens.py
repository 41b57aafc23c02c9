"""Checking an API token: what the admin API and the dashboard both ask before anything else.

Tokens are made and revoked by `devid.api.tokens`; checking one lives here, below both the API and
the dashboard, so each verifies a token the same way (and neither imports the other).
The token's MAC is HMAC-SHA256 under the authority's credential key. A token is 256 bits from the
CSPRNG, so one fast MAC is enough: there is nothing to brute-force. Looking a token up by its MAC
uses the unique index; the stored MAC is then compared in constant time, so the answer's timing
says nothing about how much of a guess matched. Expiry and revocation are read from the store on
every check, so revoking a token takes effect at once in every server process sharing the store.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from devid.authority.credential_key import CredentialKey, Purpose, legacy_digest
from devid.authority.roles import Role
from devid.errors import AuthenticationRequired
from devid.store.models import api_tokens as tokens

_BY_MAC = select(tokens).where(tokens.c.token_hash == bindparam("h"))


@dataclass(frozen=True)
class TokenInfo:
    """What the store knows about a token (never the token itself)."""

    name: str
    role: Role
    rate_per_minute: int
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def token_info(row: Any) -> TokenInfo:
    """A `TokenInfo` from an `api_tokens` row."""
    return TokenInfo(
        row.name, Role(row.role), row.rate_per_minute, row.created_at, row.expires_at, row.revoked_at
    )


def verify(conn: Connection, key: CredentialKey, token: str, now: datetime) -> TokenInfo:
    """The token's record if it is known, unexpired and unrevoked; else AuthenticationRequired."""
    mac = key.mac(Purpose.API_TOKEN, token)
    row = conn.execute(_BY_MAC, {"h": mac}).first()
    if row is None or not hmac.compare_digest(row.token_hash, mac):
        legacy = conn.execute(_BY_MAC, {"h": legacy_digest(token)}).first()
        if legacy is not None:
            raise AuthenticationRequired(
                "api-token-legacy",
                f"API token {legacy.name!r} was stored as a plain hash by an older devid and is no "
                "longer accepted: an admin must revoke it and create a new one",
            )
        raise AuthenticationRequired("api-token-invalid", "the API token is not valid")
    if row.revoked_at is not None:
        raise AuthenticationRequired("api-token-revoked", f"API token {row.name!r} has been revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthenticationRequired("api-token-expired", f"API token {row.name!r} has expired")
    return token_info(row)
