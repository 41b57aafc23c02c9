"""Issuing session tokens: JWT (ES256, RFC 7519) or CWT (COSE_Sign1 ES256, RFC 8392), bound to the
device's client certificate (`cnf` `x5t#S256`, RFC 8705).

`issue_for_certificate` is the whole decision the token endpoint makes for an mTLS caller: the
certificate must come from devid's operational CA (an LDevID or a session certificate), be within
its validity, be on record as `valid` (not revoked or superseded), and belong to an ACTIVE device.
Every issuance is audited in the transaction that read the certificate's standing; every refusal
is audited on its own (`Authority.record_refusal`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cwt import COSE
from cwt.cose_key_interface import COSEKeyInterface
from jwt.api_jws import PyJWS
from sqlalchemy import Connection

from devid.authority.core import Authority
from devid.authority.token_keys import MAX_TOKEN_LIFETIME, SigningKey, b64url, token_keyring
from devid.store import audit, repo
from devid.store.engine import writing
from devid.store.states import CertificateStatus, DeviceState
from devid.tokens.claims import TokenClaims, b64url_decode, certificate_thumbprint
from devid.tokens.errors import TokenRefused
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
        raise TokenRefused(
            400, "token-audience-not-allowed", f"audience {aud!r} is not one devid issues tokens for"
        )
    if scope is None or not scope.split():
        granted = policy.granted_by_default
    else:
        wanted = list(dict.fromkeys(scope.split()))
        granted = tuple(s for s in wanted if s in policy.scopes)
        if not granted:
            raise TokenRefused(
                400,
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
    conn: Connection | None = None,
    signer: SigningKey | None = None,
) -> IssuedToken:
    """Sign a session token for `device_serial` under the authority's policy and audit it.

    The lifetime is the policy's unless given, never above one hour, and never past `not_after`
    (the bound certificate's expiry). No standing checks here: `issue_for_certificate` makes them.
    `conn`, if given, is the open transaction the audit event joins; then pass `signer` too
    (fetched before that transaction began: the first use of the keyring writes its own audit
    event, which must not wait on the caller's write lock).
    """
    policy = token_policy(authority)
    aud, granted = grant(policy, audience, scope)
    now = authority.clock.now().astimezone(UTC).replace(microsecond=0)
    life = min(lifetime if lifetime is not None else policy.lifetime, MAX_TOKEN_LIFETIME)
    exp = now + life
    if not_after is not None:
        exp = min(exp, not_after.astimezone(UTC).replace(microsecond=0))
    if exp <= now or life <= timedelta(0):
        raise TokenRefused(403, "token-lifetime", "no token can be issued: its lifetime would be zero")
    if signer is None:
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
    if conn is not None:
        audit.append(conn, [event], now)
    else:
        with writing(authority.engine) as own:
            audit.append(own, [event], now)
    return IssuedToken(token, claims, fmt)


def check_client_certificate(authority: Authority, cert_der: bytes, conn: Connection) -> tuple[str, datetime]:
    """Device serial and expiry of a client certificate that may receive a token; else TokenRefused (403)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise TokenRefused(
            403, "token-cert-invalid", "the client certificate is not a DER X.509 certificate"
        ) from None
    operational = authority.cas["operational"].certificate
    try:
        cert.verify_directly_issued_by(operational)
    except (ValueError, TypeError, InvalidSignature):
        raise TokenRefused(
            403,
            "token-cert-not-operational",
            "the client certificate was not issued by devid's operational CA: "
            "present an LDevID or a session certificate",
        ) from None
    now = authority.clock.now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TokenRefused(
            403,
            "certificate-expired",
            f"the client certificate is not valid now (valid {cert.not_valid_before_utc.isoformat()} "
            f"to {cert.not_valid_after_utc.isoformat()})",
        )
    row = repo.certificate_by_fingerprint(conn, certificate_thumbprint(cert_der).hex())
    if row is None:
        raise TokenRefused(403, "certificate-unknown", "the client certificate is not on record at devid")
    if row.status != CertificateStatus.VALID:
        raise TokenRefused(
            403, f"certificate-{row.status}", f"the client certificate {row.serial} is {row.status}"
        )
    if row.device_serial is None:
        raise TokenRefused(403, "token-cert-no-device", "the client certificate belongs to no device")
    if row.device_state != DeviceState.ACTIVE:
        raise TokenRefused(
            403,
            "device-not-active",
            f"device {row.device_serial!r} is {row.device_state}: no token is issued to it",
        )
    return str(row.device_serial), cert.not_valid_after_utc


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

    Refusals raise TokenRefused carrying the HTTP status (401 no certificate, 403 standing, 400
    request) and are audited as `token.issue` / refused.
    """
    subject, who = "-", actor or "anonymous"
    try:
        if client_cert_der is None:
            raise TokenRefused(
                401,
                "token-no-client-cert",
                "a client certificate (LDevID or session certificate) is required",
            )
        subject = certificate_thumbprint(client_cert_der).hex()
        signer = token_keyring(authority).current()
        with writing(authority.engine) as conn:
            serial, cert_not_after = check_client_certificate(authority, client_cert_der, conn)
            subject, who = serial, actor or f"device:{serial}"
            return issue_token(
                authority,
                device_serial=serial,
                client_cert_der=client_cert_der,
                audience=audience,
                scope=scope,
                fmt=fmt,
                not_after=cert_not_after,
                actor=who,
                conn=conn,
                signer=signer,
            )
    except TokenRefused as exc:
        detail: dict[str, Any] = {"status": exc.status, "format": fmt}
        if audience is not None:
            detail["aud"] = audience
        authority.record_refusal(exc, "token.issue", subject, who, detail)
        raise
