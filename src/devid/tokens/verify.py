"""Verifying devid session tokens, for the services that accept them.

`verify_token` takes the token as it came (a JWT string, or CWT bytes), the issuer's JWKS, the
audience the service is, and the client certificate of the mTLS connection the token came over;
it returns the claims or raises one TokenError subclass per reason, each with a stable code.
Time is injected (`clock`), so expiry is tested without sleeping.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import cbor2
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cwt import COSE, COSEKey
from cwt import DecodeError as CoseDecodeError
from cwt import VerifyError as CoseVerifyError
from cwt.algs.ec2 import EC2Key
from jwt.api_jws import PyJWS

from devid.authority.token_keys import b64url
from devid.clock import Clock, SystemClock
from devid.tokens.claims import TokenClaims, certificate_thumbprint
from devid.tokens.errors import (
    TokenAudienceMismatch,
    TokenBindingMismatch,
    TokenExpired,
    TokenIssuerMismatch,
    TokenMalformed,
    TokenSignatureInvalid,
    TokenUnknownKey,
)
from devid.tokens.issue import COSE_ALG, COSE_ES256, COSE_KID

DEFAULT_LEEWAY = timedelta(seconds=60)
#: Far above any devid token (a JWT is under 1 KB): refuse to parse anything bigger.
MAX_TOKEN_SIZE = 8192
_CWT_TAG, _SIGN1_TAG = 61, 18

_JWS = PyJWS(algorithms=["ES256"])
_COSE = COSE.new()


def verify_token(
    token: str | bytes,
    *,
    jwks: Mapping[str, Any],
    audience: str,
    client_cert_der: bytes | None = None,
    clock: Clock | None = None,
    leeway: timedelta | float = DEFAULT_LEEWAY,
    issuer: str | None = None,
) -> TokenClaims:
    """Check a session token and return its claims.

    In order: form, key (by kid, in `jwks`), ES256 signature, validity window (`exp`, `nbf`, with
    `leeway`), issuer (when `issuer` is given), audience, and, when `client_cert_der` is given, the
    certificate binding (`cnf` `x5t#S256` equals the SHA-256 of that certificate). A JWT is a str
    (bytes that start like a JWT are taken as one); a CWT is bytes (COSE_Sign1, tag 18, optionally
    inside the CWT tag 61).
    """
    if len(token) > MAX_TOKEN_SIZE:
        raise TokenMalformed(
            f"the token is {len(token)} bytes, above the {MAX_TOKEN_SIZE} a devid token can be"
        )
    if isinstance(token, bytes) and token[:3] == b"eyJ":
        try:
            token = token.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenMalformed("the token is neither a JWT nor a CWT") from None
    claims = _verify_jwt(token, jwks) if isinstance(token, str) else _verify_cwt(token, jwks)
    _check_claims(claims, audience, client_cert_der, clock or SystemClock(), leeway, issuer)
    return claims


def _check_claims(
    claims: TokenClaims,
    audience: str,
    client_cert_der: bytes | None,
    clock: Clock,
    leeway: timedelta | float,
    issuer: str | None,
) -> None:
    slack = leeway if isinstance(leeway, timedelta) else timedelta(seconds=leeway)
    now = clock.now()
    if now > claims.exp + slack:
        raise TokenExpired(f"the token expired at {claims.exp.isoformat()}")
    if now + slack < claims.nbf:
        raise TokenExpired(f"the token is not valid before {claims.nbf.isoformat()}")
    if issuer is not None and claims.iss != issuer:
        raise TokenIssuerMismatch(f"the token was issued by {claims.iss!r}, not {issuer!r}")
    if audience not in claims.aud:
        raise TokenAudienceMismatch(f"the token is for {', '.join(map(repr, claims.aud))}, not {audience!r}")
    if client_cert_der is not None:
        if claims.x5t_s256 is None:
            raise TokenBindingMismatch("the token is not bound to a certificate (no cnf x5t#S256)")
        expected = b64url(certificate_thumbprint(client_cert_der))
        if not hmac.compare_digest(expected, claims.x5t_s256):
            raise TokenBindingMismatch("the token is bound to another certificate than the one presented")


def _jwk_for(jwks: Mapping[str, Any], kid: str) -> ec.EllipticCurvePublicKey:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise TokenUnknownKey("the JWKS holds no `keys` list")
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("kid") != kid:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "ES256") != "ES256":
            continue
        try:
            key = jwt.PyJWK(entry, algorithm="ES256").key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise TokenUnknownKey(f"the JWKS entry for kid {kid} is not a P-256 key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise TokenUnknownKey(f"the JWKS entry for kid {kid} is not a P-256 public key")
        return key
    raise TokenUnknownKey(f"no ES256 signing key with kid {kid} in the JWKS (rotated out, or another issuer)")


def _verify_jwt(token: str, jwks: Mapping[str, Any]) -> TokenClaims:
    try:
        header = _JWS.get_unverified_header(token)
    except jwt.DecodeError as exc:
        raise TokenMalformed(f"not a JWT: {exc}") from None
    if header.get("alg") != "ES256":
        raise TokenSignatureInvalid(
            f"the token is signed with {header.get('alg')!r}: devid accepts only ES256"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenUnknownKey("the token names no key (no kid in its header)")
    key = _jwk_for(jwks, kid)
    try:
        decoded = _JWS.decode_complete(token, key, algorithms=["ES256"])
    except jwt.InvalidSignatureError:
        raise TokenSignatureInvalid(f"the token's signature does not verify with key {kid}") from None
    except (jwt.DecodeError, jwt.InvalidTokenError) as exc:
        raise TokenMalformed(f"not a valid JWS: {exc}") from None
    try:
        payload = json.loads(decoded["payload"])
    except (ValueError, UnicodeDecodeError):
        raise TokenMalformed("the JWT payload is not JSON") from None
    return TokenClaims.from_jwt(payload, kid)


def _verify_cwt(token: bytes, jwks: Mapping[str, Any]) -> TokenClaims:
    try:
        outer = cbor2.loads(token)
    except Exception:  # cbor2 raises several types for garbage
        raise TokenMalformed("not a CWT: the token is not CBOR") from None
    if isinstance(outer, cbor2.CBORTag) and outer.tag == _CWT_TAG:
        outer = outer.value
    if isinstance(outer, list):  # untagged COSE_Sign1, as RFC 8392 §6 allows where the context is known
        outer = cbor2.CBORTag(_SIGN1_TAG, outer)
    if not isinstance(outer, cbor2.CBORTag) or outer.tag != _SIGN1_TAG:
        raise TokenMalformed("not a CWT in COSE_Sign1 (tag 18)")
    parts = outer.value
    if not isinstance(parts, list) or len(parts) != 4 or not isinstance(parts[0], bytes):
        raise TokenMalformed("the COSE_Sign1 structure is not [protected, unprotected, payload, signature]")
    try:
        protected = cbor2.loads(parts[0]) if parts[0] else {}
    except Exception:
        raise TokenMalformed("the COSE protected header is not CBOR") from None
    unprotected = parts[1]
    if not isinstance(protected, dict) or not isinstance(unprotected, dict):
        raise TokenMalformed("the COSE headers are not maps")
    alg = protected.get(COSE_ALG, unprotected.get(COSE_ALG))
    if alg != COSE_ES256:
        raise TokenSignatureInvalid(
            f"the token is signed with COSE algorithm {alg!r}: devid accepts only ES256 (-7)"
        )
    raw_kid = protected.get(COSE_KID, unprotected.get(COSE_KID))
    if isinstance(raw_kid, bytes) and raw_kid:
        kid = b64url(raw_kid)
    elif isinstance(raw_kid, str) and raw_kid:
        kid, raw_kid = raw_kid, raw_kid.encode()
    else:
        raise TokenUnknownKey("the token names no key (no kid in its COSE headers)")
    public = _jwk_for(jwks, kid)
    cose_key = COSEKey.new({**EC2Key.to_cose_key(public), 2: raw_kid, 3: COSE_ES256})
    try:
        _, _, payload = _COSE.decode_with_headers(outer, cose_key)
    except CoseVerifyError:
        raise TokenSignatureInvalid(f"the token's signature does not verify with key {kid}") from None
    except (CoseDecodeError, ValueError) as exc:
        raise TokenMalformed(f"not a valid COSE_Sign1: {exc}") from None
    try:
        claims = cbor2.loads(payload)
    except Exception:
        raise TokenMalformed("the CWT payload is not a CBOR claims set") from None
    return TokenClaims.from_cwt(claims, kid)
