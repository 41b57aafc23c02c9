"""Why a token was not accepted, or not issued: one class and one stable code per reason."""

from __future__ import annotations

from typing import ClassVar

from devid.errors import DevidError, PolicyError


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


class TokenRefused(PolicyError):
    """A token request refused by the token service; `status` is the HTTP status it maps to."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status
