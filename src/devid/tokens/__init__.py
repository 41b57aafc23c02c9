"""Session tokens for devices: JWT (ES256) and CWT (COSE_Sign1 ES256), bound to the device certificate.

Issuing (authority side): `issue_for_certificate` (the token endpoint's decision for an mTLS
caller), `issue_token` (sign for a known device). Publishing: `jwks`. Accepting (service side):
`verify_token`. The signing keys themselves stay in `devid.authority.token_keys`.
"""

from __future__ import annotations

from typing import Any

from devid.authority.core import Authority
from devid.authority.token_keys import MAX_TOKEN_LIFETIME, token_keyring
from devid.tokens.claims import X5T_S256, TokenClaims, certificate_thumbprint
from devid.tokens.errors import (
    TokenAudienceMismatch,
    TokenBindingMismatch,
    TokenError,
    TokenExpired,
    TokenIssuerMismatch,
    TokenMalformed,
    TokenSignatureInvalid,
    TokenUnknownKey,
)
from devid.tokens.issue import IssuedToken, TokenFormat, issue_for_certificate, issue_token
from devid.tokens.policy import TokenPolicy, set_token_policy, token_policy
from devid.tokens.verify import DEFAULT_LEEWAY, verify_token


def jwks(authority: Authority) -> dict[str, Any]:
    """The JWK Set of the authority's token-signing keys (current first, then still-published retired)."""
    return token_keyring(authority).jwks()


__all__ = [
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_LIFETIME",
    "X5T_S256",
    "IssuedToken",
    "TokenAudienceMismatch",
    "TokenBindingMismatch",
    "TokenClaims",
    "TokenError",
    "TokenExpired",
    "TokenFormat",
    "TokenIssuerMismatch",
    "TokenMalformed",
    "TokenPolicy",
    "TokenSignatureInvalid",
    "TokenUnknownKey",
    "certificate_thumbprint",
    "issue_for_certificate",
    "issue_token",
    "jwks",
    "set_token_policy",
    "token_policy",
    "verify_token",
]
