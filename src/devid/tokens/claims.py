"""Session token claims and their two encodings: a JWT claims set (RFC 7519) and a CWT one (RFC 8392).

CWT claim keys (RFC 8392 §4, IANA "CBOR Web Token Claims"): iss 1, sub 2, aud 3, exp 4, nbf 5,
iat 6, cti 7, cnf 8 (RFC 8747), scope 9 (RFC 8693 / ACE, RFC 9200), a space-separated text string
as in OAuth. Times are NumericDate integers in both.

Certificate binding (`cnf`). JWT: `{"x5t#S256": base64url(SHA-256(client certificate DER))}` as
RFC 8705 §3.1 defines it. CWT: IANA's "CWT Confirmation Methods" registry has no method for an
X.509 certificate thumbprint (it holds COSE_Key 1, Encrypted_COSE_Key 2, kid 3, osc 4, ckt 5, and
`ckt` is the thumbprint of a COSE key, not of a certificate), so the CWT carries RFC 8705's method
under its registered JWT name as a text-string key, with the 32-byte digest itself as a byte
string: `8: {"x5t#S256": h'<sha-256 of the certificate DER>'}` (CBOR map keys may be text). It is
the same digest the JWT encodes in base64url, so one comparison serves both formats.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devid.authority.token_keys import b64url
from devid.tokens.errors import TokenMalformed

CWT_ISS, CWT_SUB, CWT_AUD, CWT_EXP, CWT_NBF, CWT_IAT, CWT_CTI, CWT_CNF, CWT_SCOPE = range(1, 10)
#: The confirmation method of RFC 8705 §3.1 (JWT name; also the key devid uses inside a CWT `cnf`).
X5T_S256 = "x5t#S256"


def certificate_thumbprint(cert_der: bytes) -> bytes:
    """SHA-256 over the DER certificate: the value `x5t#S256` carries."""
    return hashlib.sha256(cert_der).digest()


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenMalformed(f"{text[:40]!r} is not base64url") from None


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a session token. `kid` and `format` say how it was signed and carried."""

    iss: str
    sub: str
    aud: tuple[str, ...]
    iat: datetime
    nbf: datetime
    exp: datetime
    jti: str
    scope: str
    x5t_s256: str | None
    kid: str = ""
    format: str = "jwt"

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.scope.split())

    @property
    def lifetime(self) -> float:
        return (self.exp - self.iat).total_seconds()

    # --- encodings ------------------------------------------------------------------------------

    def to_jwt(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud[0] if len(self.aud) == 1 else list(self.aud),
            "iat": _numeric(self.iat),
            "nbf": _numeric(self.nbf),
            "exp": _numeric(self.exp),
            "jti": self.jti,
            "scope": self.scope,
        }
        if self.x5t_s256 is not None:
            payload["cnf"] = {X5T_S256: self.x5t_s256}
        return payload

    def to_cwt(self) -> dict[int, Any]:
        claims: dict[int, Any] = {
            CWT_ISS: self.iss,
            CWT_SUB: self.sub,
            CWT_AUD: self.aud[0] if len(self.aud) == 1 else list(self.aud),
            CWT_EXP: _numeric(self.exp),
            CWT_NBF: _numeric(self.nbf),
            CWT_IAT: _numeric(self.iat),
            CWT_CTI: b64url_decode(self.jti),
            CWT_SCOPE: self.scope,
        }
        if self.x5t_s256 is not None:
            claims[CWT_CNF] = {X5T_S256: b64url_decode(self.x5t_s256)}
        return claims

    def to_json(self) -> dict[str, Any]:
        """For people and logs: times in ISO 8601."""
        return {
            "format": self.format,
            "kid": self.kid,
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud[0] if len(self.aud) == 1 else list(self.aud),
            "scope": self.scope,
            "iat": self.iat.isoformat(),
            "nbf": self.nbf.isoformat(),
            "exp": self.exp.isoformat(),
            "jti": self.jti,
            "cnf": {X5T_S256: self.x5t_s256} if self.x5t_s256 is not None else None,
        }

    @classmethod
    def from_jwt(cls, payload: Any, kid: str) -> TokenClaims:
        if not isinstance(payload, dict):
            raise TokenMalformed("the JWT claims set is not a JSON object")
        cnf = payload.get("cnf")
        x5t: str | None = None
        if cnf is not None:
            if not isinstance(cnf, dict) or not isinstance(cnf.get(X5T_S256), str):
                raise TokenMalformed(f"the JWT cnf claim is not an object with a {X5T_S256} string")
            x5t = cnf[X5T_S256]
            if len(b64url_decode(x5t)) != 32:
                raise TokenMalformed(f"the JWT cnf {X5T_S256} is not a SHA-256 digest")
        return cls(
            iss=_text(payload, "iss"),
            sub=_text(payload, "sub"),
            aud=_audience(payload.get("aud"), "aud"),
            iat=_time(payload, "iat"),
            nbf=_time(payload, "nbf"),
            exp=_time(payload, "exp"),
            jti=_text(payload, "jti"),
            scope=_text(payload, "scope"),
            x5t_s256=x5t,
            kid=kid,
            format="jwt",
        )

    @classmethod
    def from_cwt(cls, claims: Any, kid: str) -> TokenClaims:
        if not isinstance(claims, dict):
            raise TokenMalformed("the CWT claims set is not a CBOR map")
        cti = claims.get(CWT_CTI)
        if not isinstance(cti, bytes) or not cti:
            raise TokenMalformed("the CWT has no cti (7) byte string")
        cnf = claims.get(CWT_CNF)
        x5t: str | None = None
        if cnf is not None:
            digest = cnf.get(X5T_S256) if isinstance(cnf, dict) else None
            if not isinstance(digest, bytes) or len(digest) != 32:
                raise TokenMalformed(f"the CWT cnf (8) is not a map with a 32-byte {X5T_S256}")
            x5t = b64url(digest)
        scope = claims.get(CWT_SCOPE)
        if isinstance(scope, bytes):  # RFC 9200 §5.8.1 allows a byte string scope
            scope = scope.decode("utf-8", errors="replace")
        return cls(
            iss=_text(claims, CWT_ISS),
            sub=_text(claims, CWT_SUB),
            aud=_audience(claims.get(CWT_AUD), "aud (3)"),
            iat=_time(claims, CWT_IAT),
            nbf=_time(claims, CWT_NBF),
            exp=_time(claims, CWT_EXP),
            jti=b64url(cti),
            scope=_text({CWT_SCOPE: scope}, CWT_SCOPE),
            x5t_s256=x5t,
            kid=kid,
            format="cwt",
        )


_NAMES: dict[str | int, str] = {
    CWT_ISS: "iss (1)",
    CWT_SUB: "sub (2)",
    CWT_EXP: "exp (4)",
    CWT_NBF: "nbf (5)",
    CWT_IAT: "iat (6)",
    CWT_SCOPE: "scope (9)",
}


def _numeric(when: datetime) -> int:
    return int(when.timestamp())


def _text(claims: dict[Any, Any], key: str | int) -> str:
    value = claims.get(key)
    if not isinstance(value, str) or not value:
        raise TokenMalformed(f"claim {_NAMES.get(key, str(key))} is missing or not a non-empty string")
    return value


def _time(claims: dict[Any, Any], key: str | int) -> datetime:
    value = claims.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenMalformed(f"claim {_NAMES.get(key, str(key))} is missing or not a NumericDate")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise TokenMalformed(f"claim {_NAMES.get(key, str(key))} is out of range") from None


def _audience(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise TokenMalformed(f"claim {name} is missing or not a string or list of strings")
