"""Token policy (issuer, audiences, scopes, lifetime): the authority applies it, so it lives in
`devid.authority.token_keys`; re-exported here for the token layer's users."""

from __future__ import annotations

from devid.authority.token_keys import (
    DEFAULT_AUDIENCE,
    DEFAULT_LIFETIME,
    DEFAULT_SCOPES,
    TokenPolicy,
    default_issuer,
    set_token_policy,
    token_policy,
)

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_LIFETIME",
    "DEFAULT_SCOPES",
    "TokenPolicy",
    "default_issuer",
    "set_token_policy",
    "token_policy",
]
