"""Issuing session tokens: JWT (ES256, RFC 7519) or CWT (COSE_Sign1 ES256, RFC 8392), bound to the
device's client certificate (`cnf` `x5t#S256`, RFC 8705).

`issue_for_certificate` is the whole decision the token endpoint makes for an mTLS caller: the
certificate must authenticate a device (`devid.authority.credentials.authenticate`, accepting only
certificates of devid's operational CA: an LDevID or a session certificate). Every issuance and
every refusal is audited (`Authority.record_refusal`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import cbor2
from cwt import COSE
from cwt.cose_key_interface import COSEKeyInterface
from jwt.api_jws import PyJWS

from devid.authority.core import Authority
from devid.authority.credentials import OPERATIONAL_PROFILES, CertificateCredential, authenticate
from devid.authority.token_keys import MAX_TOKEN_LIFETIME, SigningKey, b64url, token_keyring
from devid.errors import AuthenticationRequired, DevidError, PolicyError, RequestInvalid
from devid.store import audit
from devid.store.engine import writing
from devid.tokens.claims import TokenClaims, b64url_decode, certificate_thumbprint
from devid.tokens.policy import TokenPolicy, token_policy

TokenFormat = Literal["jwt", "cwt"]
MEDIA_TYPES: dict[str, str] = {"jwt": "application/jwt", "cwt": "application/cwt"}
#: COSE algorithm ES256 (RFC 9053 §2.1) and header labels alg 1, kid 4 (RFC 9052 §3.1).
COSE_ES256 = -7
COSE_ALG, COSE_KID = 1, 4

_JWS = PyJWS(algorithms=["ES256"])
_COSE = COSE.new()


class _AuthorityCOSEKey(COSEKeyInterface):
    """A COSE signing key whose signature is made by the authority's signer (in the token for PKCS#11).

    `cwt`'s own EC2 key needs the private scalar, which a PKCS#11 key never gives; this one only
    signs, through `SigningKey.sign` (r || s as COSE wants it, RFC 9053 §2.1).
    """

    def __init__(self, signer: SigningKey) -> None:
        super().__init__({1: 2, 2: b64url_decode(signer.kid), 3: COSE_ES256, 4: [1]})
        self._signer = signer

    def sign(self, msg: bytes) -> bytes:
        return self._signer.sign(msg)


def encode_jwt(claims: TokenClaims, signer: SigningKey) -> str:
    """A compact JWS: header {alg ES256, kid, typ JWT}, the claims as compact JSON."""
    payload = json.dumps(claims.to_jwt(), separators=(",", ":")).encode()
    return _JWS.encode(
        payload, signer.private_key, algorithm="ES256", headers={"kid": signer.kid, "typ": "JWT"}
    )


def encode_cwt(claims: TokenClaims, signer: SigningKey) -> bytes:
    """A tagged COSE_Sign1 (tag 18): alg in the protected header, kid (the raw 32-byte JWK thumbprint)
    in the unprotected one, as a hint (RFC 9052 §3.1); the claims set as the payload."""
    payload = cbor2.dumps(claims.to_cwt(), canonical=True)
    encoded = _COSE.encode_and_sign(
        payload,
        _AuthorityCOSEKey(signer),
        protected={COSE_ALG: COSE_ES256},
        unprotected={COSE_KID: b64url_decode(signer.kid)},
    )
    assert isinstance(encoded, bytes)
    return encoded


@dataclass(frozen=True)
class IssuedToken:
    token: str | bytes
    claims: TokenClaims
    format: TokenFormat

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def body(self) -> bytes:
        return self.token.encode("ascii") if isinstance(self.token, str) else self.token


def grant(policy: TokenPolicy, audience: str | None, scope: str | None) -> tuple[str, str]:
    """The audience and scope a request gets: an allowed audience, and the allowed requested scopes."""
    aud = audience if audience is not None else policy.default_audience
    if aud not in policy.audiences:
        raise RequestInvalid(
            "token-audience-not-allowed", f"audience {aud!r} is not one devid issues tokens for"
        )
    if scope is None or not scope.split():
        granted = policy.granted_by_default
    else:
        wanted = list(dict.fromkeys(scope.split()))
        granted = tuple(s for s in wanted if s in policy.scopes)
        if not granted:
            raise RequestInvalid(
                "token-scope-not-allowed",
                f"none of the requested scopes ({' '.join(wanted)}) may be granted",
            )
    return aud, " ".join(granted)


def issue_token(
    authority: Authority,
    *,
    device_serial: str,
    client_cert_der: bytes | None,
    audience: str | None = None,
    scope: str | None = None,
    lifetime: timedelta | None = None,
    fmt: TokenFormat = "jwt",
    not_after: datetime | None = None,
    actor: str = "system",
) -> IssuedToken:
    """Sign a session token for `device_serial` under the authority's policy and audit it.

    The lifetime is the policy's unless given, never above one hour, and never past `not_after`
    (the bound certificate's expiry). No standing checks here: `issue_for_certificate` makes them.
    """
    policy = token_policy(authority)
    aud, granted = grant(policy, audience, scope)
    now = authority.clock.now().astimezone(UTC).replace(microsecond=0)
    life = min(lifetime if lifetime is not None else policy.lifetime, MAX_TOKEN_LIFETIME)
    exp = now + life
    if not_after is not None:
        exp = min(exp, not_after.astimezone(UTC).replace(microsecond=0))
    if exp <= now or life <= timedelta(0):
        raise PolicyError("token-lifetime", "no token can be issued: its lifetime would be zero")
    signer = token_keyring(authority).current()
    claims = TokenClaims(
        iss=policy.issuer,
        sub=device_serial,
        aud=(aud,),
        iat=now,
        nbf=now,
        exp=exp,
        jti=b64url(secrets.token_bytes(16)),
        scope=granted,
        x5t_s256=b64url(certificate_thumbprint(client_cert_der)) if client_cert_der is not None else None,
        kid=signer.kid,
        format=fmt,
    )
    token: str | bytes = encode_jwt(claims, signer) if fmt == "jwt" else encode_cwt(claims, signer)
    event = audit.Event(
        "token.issue",
        device_serial,
        actor,
        "ok",
        {
            "format": fmt,
            "kid": signer.kid,
            "jti": claims.jti,
            "aud": aud,
            "scope": granted,
            "exp": claims.exp.isoformat(),
            "x5t#S256": claims.x5t_s256,
        },
    )
    with writing(authority.engine) as conn:
        audit.append(conn, [event], now)
    return IssuedToken(token, claims, fmt)


def issue_for_certificate(
    authority: Authority,
    client_cert_der: bytes | None,
    *,
    audience: str | None = None,
    scope: str | None = None,
    fmt: TokenFormat = "jwt",
    actor: str | None = None,
) -> IssuedToken:
    """A token for the device authenticated by `client_cert_der` (its mTLS certificate), bound to it.

    Refusals (AuthenticationRequired: no certificate; CredentialRefused or PolicyError: its
    standing; RequestInvalid: the request) are audited as `token.issue` / refused.
    """
    subject, who = "-", actor or "anonymous"
    try:
        if client_cert_der is None:
            raise AuthenticationRequired(
                "token-no-client-cert", "a client certificate (LDevID or session certificate) is required"
            )
        subject = certificate_thumbprint(client_cert_der).hex()
        identity = authenticate(
            authority, CertificateCredential(client_cert_der), accept=OPERATIONAL_PROFILES
        )
        subject, who = identity.device_serial, actor or f"device:{identity.device_serial}"
        return issue_token(
            authority,
            device_serial=identity.device_serial,
            client_cert_der=client_cert_der,
            audience=audience,
            scope=scope,
            fmt=fmt,
            not_after=identity.not_after,
            actor=who,
        )
    except DevidError as exc:
        if not exc.audited:
            detail: dict[str, Any] = {"format": fmt}
            if audience is not None:
                detail["aud"] = audience
            authority.record_refusal(exc, "token.issue", subject, who, detail)
        raise
