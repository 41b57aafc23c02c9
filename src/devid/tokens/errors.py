"""Why a presented token was not accepted: one class and one stable code per reason.

A token request the token service refuses raises devid's general errors (`devid.errors`:
AuthenticationRequired, CredentialRefused, RequestInvalid, ...), mapped to HTTP like every other
refusal (`devid.web.errors.status_for`).
"""

from __future__ import annotations

from typing import ClassVar

from devid.errors import DevidError


class TokenError(DevidError):
    """A presented token was not accepted; `code` says why (services map it, never the message)."""

    default_code: ClassVar[str] = "token-invalid"

    def __init__(self, message: str) -> None:
        super().__init__(self.default_code, message)


class TokenMalformed(TokenError):
    """Not a JWT or CWT devid could read, or a claim is missing or of the wrong type."""

    default_code = "token-malformed"


class TokenSignatureInvalid(TokenError):
    """The signature does not verify with the key the token names (or is not ES256)."""

    default_code = "token-signature"


class TokenUnknownKey(TokenError):
    """The token names no key (kid) that the JWKS holds."""

    default_code = "token-unknown-key"


class TokenExpired(TokenError):
    """Outside its validity window: past `exp`, or before `nbf` (both with the leeway)."""

    default_code = "token-expired"


class TokenAudienceMismatch(TokenError):
    """Issued for another audience than the verifying service."""

    default_code = "token-audience"


class TokenIssuerMismatch(TokenError):
    """Issued by another issuer than the one the verifier expects."""

    default_code = "token-issuer"


class TokenBindingMismatch(TokenError):
    """Its `cnf` `x5t#S256` is not the client certificate presented with it (RFC 8705 §3)."""

    default_code = "token-binding"
