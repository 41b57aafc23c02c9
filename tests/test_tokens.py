"""Session tokens: issue and verify JWT and CWT, every refusal with its code, key rotation, the
token endpoint over real mTLS on loopback, and `devid token` through the installed CLI."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import cwt
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, devid_many, ok
from softhsm import SoftToken
from sqlalchemy import select

from devid.authority import devices
from devid.authority.core import Authority
from devid.authority.requests import Issued, IssueRequest, NewDevice
from devid.authority.setup import open_authority
from devid.authority.token_keys import (
    RETIRED_KEY_PUBLISHED_FOR,
    TokenKeyring,
    attach,
    attach_keyring,
    jwk_thumbprint,
    token_keyring,
)
from devid.clock import FixedClock
from devid.config import Home
from devid.errors import ConfigError, CredentialRefused, DevidError, KeyExportRefused
from devid.keys.pkcs11 import Pkcs11KeyStore, Pkcs11PrivateKey
from devid.pki.profiles import ProfileName
from devid.store import audit, repo
from devid.store.models import audit_events, token_keys
from devid.tokens import (
    TokenAudienceMismatch,
    TokenBindingMismatch,
    TokenError,
    TokenExpired,
    TokenFormat,
    TokenIssuerMismatch,
    TokenMalformed,
    TokenPolicy,
    TokenSignatureInvalid,
    TokenUnknownKey,
    issue_for_certificate,
    issue_token,
    jwks,
    set_token_policy,
    token_policy,
    verify_token,
)
from devid.tokens.routes import preferred_format, token_routes
from devid.web.errors import status_for

PASSPHRASE = b"correct horse battery staple"
PEM = serialization.Encoding.PEM


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Device:
    serial: str
    key: ec.EllipticCurvePrivateKey
    idevid: Issued
    ldevid: Issued


@dataclass
class Env:
    home: Home
    authority: Authority
    clock: FixedClock
    device: Device

    def new_device(self, serial: str) -> Device:
        return provision(self.authority, serial)


def provision(authority: Authority, serial: str) -> Device:
    key = ec.generate_private_key(ec.SECP256R1())
    idevid = authority.issue(IssueRequest(ProfileName.IDEVID, key.public_key(), new_device=NewDevice(serial)))
    ldevid = authority.issue(IssueRequest(ProfileName.LDEVID, key.public_key(), device_serial=serial))
    return Device(serial, key, idevid, ldevid)


@pytest.fixture
def env(sqlite_home: Home) -> Iterator[Env]:
    # The clock starts at the real time: the TLS tests' certificates are checked by OpenSSL's clock.
    clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    auth = open_authority(sqlite_home, PASSPHRASE, clock=clock)
    yield Env(sqlite_home, auth, clock, provision(auth, "SN-0001"))
    auth.close()


def verify(env: Env, token: str | bytes, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "jwks": jwks(env.authority),
        "audience": "devid",
        "client_cert_der": env.device.ldevid.der,
        "clock": env.clock,
    }
    args.update(kw)
    return verify_token(token, **args)


def audit_rows(env: Env, action: str) -> list[Any]:
    events = audit_events
    with env.authority.engine.connect() as conn:
        return list(conn.execute(select(events).where(events.c.action == action).order_by(events.c.seq)))


# --- issue and verify -----------------------------------------------------------------------------


def test_jwt_round_trip(env: Env) -> None:
    issued = issue_for_certificate(env.authority, env.device.ldevid.der)
    assert issued.format == "jwt" and issued.media_type == "application/jwt"
    assert isinstance(issued.token, str)
    claims = verify(env, issued.token)
    now = env.clock.now()
    assert claims.sub == "SN-0001"
    assert claims.iss == "urn:devid:test-org" == token_policy(env.authority).issuer
    assert claims.aud == ("devid",)
    assert claims.scope == "telemetry:publish config:read"
    assert claims.iat == claims.nbf == now
    assert claims.exp == now + dt.timedelta(minutes=15)
    assert claims.x5t_s256 == b64url(hashlib.sha256(env.device.ldevid.der).digest())
    assert claims == issued.claims

    # The header's kid is the RFC 7638 thumbprint of the published key, computed here independently.
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "kid": claims.kid, "typ": "JWT"}
    [jwk] = jwks(env.authority)["keys"]
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, sort_keys=True, separators=(",", ":"))
    assert claims.kid == jwk["kid"] == b64url(hashlib.sha256(members.encode()).digest())

    # Any standard JWT library accepts it: PyJWT's own claim checks (system time, aud, iss).
    payload = jwt.decode(
        issued.token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience="devid",
        issuer=claims.iss,
        options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
    )
    assert payload["cnf"] == {"x5t#S256": claims.x5t_s256}
    assert payload["jti"] == claims.jti and len(base64.urlsafe_b64decode(claims.jti + "==")) == 16


def test_cwt_round_trip(env: Env) -> None:
    issued = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt")
    assert issued.media_type == "application/cwt"
    assert isinstance(issued.token, bytes)
    claims = verify(env, issued.token)
    assert claims.format == "cwt"
    assert (claims.sub, claims.aud, claims.scope) == ("SN-0001", ("devid",), "telemetry:publish config:read")
    assert claims.exp - claims.iat == dt.timedelta(minutes=15)

    # The structure, byte for byte: COSE_Sign1 (tag 18), alg ES256 protected, kid unprotected,
    # claims under their RFC 8392 keys, cnf carrying the certificate's SHA-256.
    outer = cbor2.loads(issued.token)
    assert outer.tag == 18
    protected, unprotected, payload, signature = outer.value
    assert cbor2.loads(protected) == {1: -7}
    assert unprotected == {4: base64.urlsafe_b64decode(claims.kid + "=")}
    assert len(signature) == 64
    body = cbor2.loads(payload)
    assert set(body) == {1, 2, 3, 4, 5, 6, 7, 8, 9}
    assert body[1] == claims.iss and body[2] == "SN-0001" and body[3] == "devid"
    assert body[4] - body[6] == 900 and body[5] == body[6]
    assert len(body[7]) == 16
    assert body[8] == {"x5t#S256": hashlib.sha256(env.device.ldevid.der).digest()}
    assert body[9] == "telemetry:publish config:read"

    # Another implementation verifies it: python-cwt's high-level decode (its own exp/nbf checks).
    [jwk] = jwks(env.authority)["keys"]
    key = cwt.COSEKey.from_jwk({**jwk, "kid": claims.kid})
    key = cwt.COSEKey.new({**key.to_dict(), 2: unprotected[4]})
    decoded = cwt.decode(issued.token, key)
    assert decoded[2] == "SN-0001"


def test_cwt_is_far_smaller_than_jwt(env: Env) -> None:
    as_jwt = issue_for_certificate(env.authority, env.device.ldevid.der)
    as_cwt = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt")
    print(f"token sizes: JWT {len(as_jwt.body)} B, CWT {len(as_cwt.body)} B")
    assert len(as_cwt.body) * 1.8 < len(as_jwt.body)
    assert len(as_jwt.body) < 700 and len(as_cwt.body) < 300


def test_jwt_given_as_bytes_is_read_as_a_jwt(env: Env) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    assert isinstance(token, str)
    assert verify(env, token.encode() + b"\n").sub == "SN-0001"


def test_without_a_client_certificate_the_binding_is_not_checked(env: Env) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    assert verify(env, token, client_cert_der=None).sub == "SN-0001"


# --- each failure, its own error and code ----------------------------------------------------------


def _flip_jwt_payload(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "SN-9999"
    forged = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{forged}.{sig}"


def test_tampered_tokens_fail_the_signature(env: Env) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    assert isinstance(token, str)
    with pytest.raises(TokenSignatureInvalid) as info:
        verify(env, _flip_jwt_payload(token))
    assert info.value.code == "token-signature"
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    with pytest.raises(TokenSignatureInvalid):
        verify(env, f"{head}.{payload}.{b64url(bytes(raw))}")

    cwt_token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt").token
    assert isinstance(cwt_token, bytes)
    outer = cbor2.loads(cwt_token)
    body = cbor2.loads(outer.value[2])
    body[2] = "SN-9999"
    outer.value[2] = cbor2.dumps(body)
    with pytest.raises(TokenSignatureInvalid):
        verify(env, cbor2.dumps(outer))


def test_other_algorithms_are_refused(env: Env) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    assert isinstance(token, str)
    # alg confusion: an HS256 token "signed" with the public JWK as the secret.
    [jwk] = jwks(env.authority)["keys"]
    signing_input = (
        b64url(json.dumps({"alg": "HS256", "kid": jwk["kid"]}).encode()) + "." + token.split(".")[1]
    ).encode()
    mac = hmac.new(json.dumps(jwk).encode(), signing_input, hashlib.sha256).digest()
    forged = f"{signing_input.decode()}.{b64url(mac)}"
    with pytest.raises(TokenSignatureInvalid):
        verify(env, forged)
    head = b64url(json.dumps({"alg": "none", "kid": jwk["kid"]}).encode())
    with pytest.raises(TokenSignatureInvalid):
        verify(env, f"{head}.{token.split('.')[1]}.")


@pytest.mark.parametrize(
    "token", ["", "not a token", "eyJhbGciOiJFUzI1NiJ9.e30", b"", b"\xff\x00garbage", b"\xd2\x84\x40"]
)
def test_malformed_tokens(env: Env, token: str | bytes) -> None:
    with pytest.raises(TokenMalformed) as info:
        verify(env, token)
    assert info.value.code == "token-malformed"


def test_truncated_cwt_is_malformed(env: Env) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt").token
    with pytest.raises(TokenMalformed):
        verify(env, token[:-10])


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
def test_expired_and_not_yet_valid(env: Env, fmt: str) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt=fmt).token  # type: ignore[arg-type]
    env.clock.advance(dt.timedelta(minutes=15, seconds=59))
    assert verify(env, token).sub == "SN-0001"  # inside the 60 s leeway
    env.clock.advance(dt.timedelta(seconds=2))
    with pytest.raises(TokenExpired) as info:
        verify(env, token)
    assert info.value.code == "token-expired"
    with pytest.raises(TokenExpired):
        verify(env, token, leeway=0, clock=FixedClock(env.clock.now() - dt.timedelta(minutes=20)))


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
def test_wrong_audience_and_issuer(env: Env, fmt: str) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt=fmt).token  # type: ignore[arg-type]
    with pytest.raises(TokenAudienceMismatch) as info:
        verify(env, token, audience="billing")
    assert info.value.code == "token-audience"
    with pytest.raises(TokenIssuerMismatch) as issuer_info:
        verify(env, token, issuer="urn:devid:someone-else")
    assert issuer_info.value.code == "token-issuer"
    assert verify(env, token, issuer="urn:devid:test-org").sub == "SN-0001"


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
def test_wrong_certificate_binding(env: Env, fmt: str) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt=fmt).token  # type: ignore[arg-type]
    other = env.new_device("SN-0002")
    with pytest.raises(TokenBindingMismatch) as info:
        verify(env, token, client_cert_der=other.ldevid.der)
    assert info.value.code == "token-binding"
    # The same device's IDevID is another certificate too: the token is bound to the LDevID.
    with pytest.raises(TokenBindingMismatch):
        verify(env, token, client_cert_der=env.device.idevid.der)
    unbound = issue_token(env.authority, device_serial="SN-0001", client_cert_der=None, fmt=fmt)  # type: ignore[arg-type]
    with pytest.raises(TokenBindingMismatch):
        verify(env, unbound.token)


@pytest.mark.parametrize("fmt", ["jwt", "cwt"])
def test_unknown_key(env: Env, fmt: str) -> None:
    token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt=fmt).token  # type: ignore[arg-type]
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(stranger))
    other = {"keys": [{**jwk, "kid": jwk_thumbprint(stranger), "use": "sig", "alg": "ES256"}]}
    documents: list[dict[str, Any]] = [other, {"keys": []}, {}]
    for document in documents:
        with pytest.raises(TokenUnknownKey) as info:
            verify(env, token, jwks=document)
        assert info.value.code == "token-unknown-key"
    # The right kid with another key's material is a bad signature, not an unknown key.
    [mine] = jwks(env.authority)["keys"]
    swapped = {"keys": [{**other["keys"][0], "kid": mine["kid"]}]}
    with pytest.raises(TokenSignatureInvalid):
        verify(env, token, jwks=swapped)


def test_every_failure_is_a_devid_error_with_a_stable_code(env: Env) -> None:
    codes = {
        cls.default_code
        for cls in (
            TokenMalformed,
            TokenSignatureInvalid,
            TokenExpired,
            TokenAudienceMismatch,
            TokenBindingMismatch,
            TokenUnknownKey,
            TokenIssuerMismatch,
        )
    }
    assert codes == {
        "token-malformed",
        "token-signature",
        "token-expired",
        "token-audience",
        "token-binding",
        "token-unknown-key",
        "token-issuer",
    }
    assert issubclass(TokenError, Exception)


# --- policy: lifetime, audience, scope --------------------------------------------------------------


def test_lifetime_is_capped_at_one_hour(env: Env) -> None:
    long = issue_token(
        env.authority,
        device_serial="SN-0001",
        client_cert_der=env.device.ldevid.der,
        lifetime=dt.timedelta(hours=5),
    )
    assert long.claims.exp - long.claims.iat == dt.timedelta(hours=1)
    assert verify(env, long.token).lifetime == 3600
    with pytest.raises(ConfigError):
        TokenPolicy(issuer="urn:x", lifetime=dt.timedelta(hours=2))
    set_token_policy(env.authority, TokenPolicy(issuer="urn:x", lifetime=dt.timedelta(minutes=5)))
    short = issue_for_certificate(env.authority, env.device.ldevid.der)
    assert short.claims.exp - short.claims.iat == dt.timedelta(minutes=5)
    assert short.claims.iss == "urn:x"


def test_token_never_outlives_its_certificate(env: Env) -> None:
    cert = env.device.ldevid.certificate
    env.clock.advance(cert.not_valid_after_utc - env.clock.now() - dt.timedelta(minutes=3))
    issued = issue_for_certificate(env.authority, env.device.ldevid.der)
    assert issued.claims.exp == cert.not_valid_after_utc


def test_audience_and_scope_from_policy(env: Env) -> None:
    set_token_policy(
        env.authority,
        TokenPolicy(
            issuer="urn:devid:test-org",
            audiences=("devid", "mqtt.example"),
            scopes=("telemetry:publish", "config:read", "ota:download"),
            default_scopes=("telemetry:publish",),
        ),
    )
    default = issue_for_certificate(env.authority, env.device.ldevid.der)
    assert (default.claims.aud, default.claims.scope) == (("devid",), "telemetry:publish")
    mqtt = issue_for_certificate(
        env.authority,
        env.device.ldevid.der,
        audience="mqtt.example",
        scope="ota:download admin:all config:read",
    )
    assert (mqtt.claims.aud, mqtt.claims.scope) == (("mqtt.example",), "ota:download config:read")
    assert verify(env, mqtt.token, audience="mqtt.example").scopes == ("ota:download", "config:read")
    with pytest.raises(DevidError) as info:
        issue_for_certificate(env.authority, env.device.ldevid.der, audience="billing")
    assert (status_for(info.value), info.value.code) == (400, "token-audience-not-allowed")
    with pytest.raises(DevidError) as scope_info:
        issue_for_certificate(env.authority, env.device.ldevid.der, scope="admin:all")
    assert (status_for(scope_info.value), scope_info.value.code) == (400, "token-scope-not-allowed")


def test_policy_round_trips_through_config() -> None:
    policy = TokenPolicy(issuer="https://devid.example", audiences=("a", "b"), default_audience="b")
    assert TokenPolicy.from_config(policy.to_config(), "Org") == policy
    assert TokenPolicy.from_config({}, "Acme, Inc.").issuer == "urn:devid:acme-inc"
    with pytest.raises(ConfigError):
        TokenPolicy.from_config({"scopes": ['bad"scope']}, "Org")


def test_standing_is_checked_and_refusals_are_audited(env: Env) -> None:
    auth = env.authority
    with pytest.raises(DevidError) as none:
        issue_for_certificate(auth, None)
    assert (status_for(none.value), none.value.code) == (401, "token-no-client-cert")
    with pytest.raises(DevidError) as idevid:
        issue_for_certificate(auth, env.device.idevid.der)
    assert (status_for(idevid.value), idevid.value.code) == (403, "client-cert-unknown-issuer")

    renewed = auth.issue(
        IssueRequest(
            ProfileName.LDEVID,
            env.device.key.public_key(),
            device_serial="SN-0001",
            supersedes=env.device.ldevid.fingerprint,
        )
    )
    with pytest.raises(DevidError) as superseded:
        issue_for_certificate(auth, env.device.ldevid.der)
    assert (status_for(superseded.value), superseded.value.code) == (403, "client-cert-superseded")
    assert issue_for_certificate(auth, renewed.der).claims.sub == "SN-0001"

    devices.set_state(auth, "SN-0001", "INACTIVE", "test")
    with pytest.raises(DevidError) as inactive:
        issue_for_certificate(auth, renewed.der)
    assert (status_for(inactive.value), inactive.value.code) == (403, "device-not-active")

    env.clock.advance(dt.timedelta(days=400))
    devices.set_state(auth, "SN-0001", "ACTIVE", "test")
    with pytest.raises(DevidError) as expired:
        issue_for_certificate(auth, renewed.der)
    assert (status_for(expired.value), expired.value.code) == (403, "client-cert-expired")

    issued = audit_rows(env, "token.issue")
    assert [r.outcome for r in issued] == ["refused", "refused", "refused", "ok", "refused", "refused"]
    assert json.loads(issued[3].detail)["x5t#S256"] == b64url(hashlib.sha256(renewed.der).digest())
    assert issued[3].subject == "SN-0001" and issued[3].actor == "device:SN-0001"
    assert [json.loads(r.detail)["code"] for r in issued if r.outcome == "refused"] == [
        "token-no-client-cert",
        "client-cert-unknown-issuer",
        "client-cert-superseded",
        "device-not-active",
        "client-cert-expired",
    ]
    with auth.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_no_token_for_a_certificate_that_names_another_device(env: Env) -> None:
    """The record says the certificate belongs to SN-0002, its subject says SN-0001: it
    authenticates neither (the subject serialNumber must match the record)."""
    auth = env.authority
    provision(auth, "SN-0002")
    with auth.engine.begin() as conn:
        other = repo.device_by_serial(conn, "SN-0002")
        assert other is not None
        conn.execute(
            repo.certificates.update()
            .where(repo.certificates.c.fingerprint == env.device.ldevid.fingerprint)
            .values(device_id=other.id)
        )
    with pytest.raises(CredentialRefused) as info:
        issue_for_certificate(auth, env.device.ldevid.der)
    assert (status_for(info.value), info.value.code) == (403, "client-cert-identity")
    assert [r.outcome for r in audit_rows(env, "token.issue")] == ["refused"]


def test_no_token_while_the_issuing_ca_is_not_valid(env: Env) -> None:
    """A certificate within its own validity, under an operational CA certificate that is not valid
    now (here: replaced by one that expired yesterday, same name and key), gets no token."""
    auth = env.authority
    operational, root = auth.cas["operational"], auth.cas["root"]
    now = env.clock.now()
    expired_ca = (
        x509.CertificateBuilder()
        .subject_name(operational.certificate.subject)
        .issuer_name(root.certificate.subject)
        .public_key(operational.certificate.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256())
    )
    assert env.device.ldevid.certificate.not_valid_after_utc > now
    operational.certificate = expired_ca
    with pytest.raises(CredentialRefused) as info:
        issue_for_certificate(auth, env.device.ldevid.der)
    assert (status_for(info.value), info.value.code) == (403, "client-cert-issuer-expired")


def test_session_certificates_receive_tokens(env: Env) -> None:
    session = env.authority.issue(
        IssueRequest(
            ProfileName.SESSION,
            env.device.key.public_key(),
            device_serial="SN-0001",
            lifetime=dt.timedelta(minutes=30),
        )
    )
    issued = issue_for_certificate(env.authority, session.der)
    assert issued.claims.exp <= session.certificate.not_valid_after_utc
    assert verify(env, issued.token, client_cert_der=session.der).sub == "SN-0001"


# --- keys: JWKS, rotation, PKCS#11 -------------------------------------------------------------------


def test_jwks_parses_with_pyjwt(env: Env) -> None:
    document = jwks(env.authority)
    [entry] = document["keys"]
    assert set(entry) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (entry["kty"], entry["crv"], entry["use"], entry["alg"]) == ("EC", "P-256", "sig", "ES256")
    key = jwt.PyJWK(entry)
    assert key.key_id == entry["kid"] and key.algorithm_name == "ES256"
    assert isinstance(key.key, ec.EllipticCurvePublicKey)
    assert jwt.PyJWKSet.from_dict(document)[entry["kid"]].key_id == entry["kid"]
    signer = token_keyring(env.authority).current()
    assert key.key.public_numbers() == signer.private_key.public_key().public_numbers()


def test_signing_key_is_generated_once_and_audited(env: Env) -> None:
    first = token_keyring(env.authority).current()
    assert first.label.endswith("token-signer")
    # The key is in the store (every host on it signs with it), encrypted under the home passphrase.
    assert not (env.home.keys_dir / f"{first.label}.key.pem").exists()
    with env.authority.engine.connect() as conn:
        sealed = conn.execute(select(token_keys.c.encrypted_key)).scalar_one()
    assert sealed.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (
        serialization.load_pem_private_key(sealed, PASSPHRASE).public_key() == first.private_key.public_key()
    )
    # Another process (a new authority on the same home) uses the same key.
    other = open_authority(env.home, PASSPHRASE)
    try:
        assert token_keyring(other).current().kid == first.kid
    finally:
        other.close()
    assert [r.subject for r in audit_rows(env, "token.key.create")] == [first.kid]


def test_rotation_keeps_old_tokens_valid_until_they_expire(env: Env) -> None:
    ring = token_keyring(env.authority)
    old = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt")
    env.clock.advance(dt.timedelta(minutes=10))
    new_record, retired = ring.rotate(actor="test")
    assert retired is not None and retired.kid == old.claims.kid
    assert retired.published_until is not None
    assert retired.published_until >= old.claims.exp + dt.timedelta(seconds=60)
    new = issue_for_certificate(env.authority, env.device.ldevid.der)
    assert new.claims.kid == new_record.kid != old.claims.kid
    assert [k["kid"] for k in jwks(env.authority)["keys"]] == [new_record.kid, retired.kid]
    assert verify(env, old.token).kid == retired.kid
    assert verify(env, new.token).kid == new_record.kid

    # A second process on the same home sees the rotation at its next use, without a restart.
    other = open_authority(env.home, PASSPHRASE, clock=env.clock)
    try:
        assert token_keyring(other).current().kid == new_record.kid
    finally:
        other.close()

    env.clock.advance(RETIRED_KEY_PUBLISHED_FOR - dt.timedelta(minutes=10))
    assert [k["kid"] for k in jwks(env.authority)["keys"]] == [new_record.kid, retired.kid]
    env.clock.advance(dt.timedelta(minutes=10, seconds=1))
    assert [k["kid"] for k in jwks(env.authority)["keys"]] == [new_record.kid]
    with pytest.raises(TokenUnknownKey):
        verify(env, old.token, clock=FixedClock(old.claims.iat))
    [event] = audit_rows(env, "token.key.rotate")
    assert event.subject == new_record.kid and json.loads(event.detail)["retired"] == retired.kid


def test_rotation_twice_within_an_hour_keeps_both_old_keys(env: Env) -> None:
    ring = token_keyring(env.authority)
    first = ring.current().kid
    second, _ = ring.rotate()
    third, _ = ring.rotate()
    assert jwks(env.authority)["keys"][0]["kid"] == third.kid
    assert {k["kid"] for k in jwks(env.authority)["keys"]} == {first, second.kid, third.kid}
    assert third.label.endswith("token-signer-3")


def test_first_use_in_several_processes_agrees_on_one_key(home: Home) -> None:
    """Authorities with their own engines (as processes have) make the first key at once: on
    SQLite they queue on the write lock, on PostgreSQL the table's unique current key decides."""
    authorities = [open_authority(home, PASSPHRASE) for _ in range(4)]
    start = threading.Barrier(len(authorities))

    def first_use(authority: Authority) -> str:
        start.wait()
        return token_keyring(authority).current().kid

    try:
        with ThreadPoolExecutor(len(authorities)) as pool:
            kids = set(pool.map(first_use, authorities))
        assert len(kids) == 1
        assert [r.kid for r in token_keyring(authorities[0]).records()] == list(kids)
        with authorities[0].engine.connect() as conn:
            events = audit_events
            created = conn.execute(select(events.c.subject).where(events.c.action == "token.key.create"))
            assert list(created.scalars()) == list(kids)
    finally:
        for authority in authorities:
            authority.close()


def test_state_naming_a_foreign_key_is_refused(env: Env) -> None:
    token_keyring(env.authority).current()
    keys = token_keys
    with env.authority.engine.begin() as conn:
        conn.execute(keys.update().values(kid="AAAA"))
    fresh = open_authority(env.home, PASSPHRASE)
    try:
        with pytest.raises(Exception) as info:
            token_keyring(fresh).jwks()
        assert getattr(info.value, "code", None) == "token-key-mismatch"
    finally:
        fresh.close()


def test_token_signing_key_in_pkcs11_signs_inside_the_token(
    env: Env, tokens: dict[str, SoftToken], tmp_path: Path
) -> None:
    token = tokens["ca"]
    store = Pkcs11KeyStore(token.module, token.label, token.pin)
    ring = TokenKeyring(store, f"tok-{uuid.uuid4().hex[:8]}-", engine=env.authority.engine, clock=env.clock)
    attach_keyring(env.authority, ring)
    signer = ring.current()
    assert isinstance(signer.private_key, Pkcs11PrivateKey)
    with pytest.raises(KeyExportRefused):
        signer.private_key.private_numbers()
    formats: list[TokenFormat] = ["jwt", "cwt"]
    for fmt in formats:
        issued = issue_for_certificate(env.authority, env.device.ldevid.der, fmt=fmt)
        assert verify(env, issued.token).kid == signer.kid
    _, retired = ring.rotate()
    assert retired is not None and isinstance(ring.current().private_key, Pkcs11PrivateKey)
    assert len(jwks(env.authority)["keys"]) == 2


# --- HTTP: POST /token and the JWKS over real mTLS ---------------------------------------------------


@dataclass
class Tls:
    server: ssl.SSLContext
    root_pem: bytes
    work: Path

    def client(self, device: Device | None = None, cert: Issued | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        if device is not None:
            leaf = cert or device.ldevid
            chain = self.work / f"{leaf.serial:x}.pem"
            key = self.work / f"{leaf.serial:x}.key"
            chain.write_bytes(leaf.pem + self.operational_pem)
            key.write_bytes(
                device.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            )
            ctx.load_cert_chain(chain, key)
        return ctx

    operational_pem: bytes = b""


def tls_for(env: Env, work: Path) -> Tls:
    auth = env.authority
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = auth.issue(
        IssueRequest(ProfileName.SERVER, server_key.public_key(), dns=("localhost",), ips=("127.0.0.1",))
    )
    operational = auth.cas["operational"].certificate.public_bytes(PEM)
    manufacturing = auth.cas["manufacturing"].certificate.public_bytes(PEM)
    root = auth.root.public_bytes(PEM)
    (work / "server.pem").write_bytes(server.pem + operational)
    (work / "server.key").write_bytes(
        server_key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(work / "server.pem", work / "server.key")
    # Trust the root for client certificates; the IDevID's chain needs the manufacturing CA too.
    ctx.load_verify_locations(cadata=(root + manufacturing + operational).decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return Tls(ctx, root, work, operational_pem=operational)


async def _serve(env: Env, tls: Tls) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(token_routes(env.authority))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"https://127.0.0.1:{port}"


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    """A body sent chunked, in small pieces: the server must read it whole."""
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0.001)


async def _post(
    url: str,
    ctx: ssl.SSLContext,
    body: bytes | AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(url + "/token", data=body, headers=headers or {}) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def test_token_endpoint_over_mtls(env: Env, tmp_path: Path) -> None:
    tls = tls_for(env, tmp_path)
    device = env.device
    other = env.new_device("SN-0002")
    renewed_key = other.key

    async def scenario() -> dict[str, tuple[int, str, bytes]]:
        runner, url = await _serve(env, tls)
        try:
            out: dict[str, tuple[int, str, bytes]] = {}
            ldevid = tls.client(device)
            out["jwt"] = await _post(url, ldevid)
            out["cwt"] = await _post(url, ldevid, headers={"Accept": "application/cwt"})
            out["scoped"] = await _post(
                url,
                ldevid,
                json.dumps({"scope": "config:read"}).encode(),
                {"Content-Type": "application/json"},
            )
            out["no-cert"] = await _post(url, tls.client())
            out["idevid"] = await _post(url, tls.client(device, device.idevid))
            out["bad-json"] = await _post(url, ldevid, b"{not json")
            out["bad-audience"] = await _post(url, ldevid, json.dumps({"audience": "billing"}).encode())
            out["too-large"] = await _post(url, ldevid, b" " * 5000)
            out["chunked"] = await _post(
                url, ldevid, _chunks(json.dumps({"scope": "config:read"}).encode(), 3)
            )
            out["chunked-too-large"] = await _post(url, ldevid, _chunks(b" " * 6000, 700))
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client())) as session,
                session.get(url + "/.well-known/jwks.json") as resp,
            ):
                out["jwks"] = (resp.status, resp.headers["Content-Type"], await resp.read())

            # The other device: superseded certificate, then an inactive device.
            old = tls.client(other)
            renewed = env.authority.issue(
                IssueRequest(
                    ProfileName.LDEVID,
                    renewed_key.public_key(),
                    device_serial="SN-0002",
                    supersedes=other.ldevid.fingerprint,
                )
            )
            out["superseded"] = await _post(url, old)
            current = tls.client(other, renewed)
            out["renewed"] = await _post(url, current)
            await asyncio.to_thread(devices.set_state, env.authority, "SN-0002", "INACTIVE", "test")
            out["inactive"] = await _post(url, current)
            return out
        finally:
            await runner.cleanup()

    out = asyncio.run(scenario())
    status, ctype, body = out["jwt"]
    assert (status, ctype) == (200, "application/jwt"), body
    document = json.loads(out["jwks"][2])
    assert out["jwks"][:2] == (200, "application/json; charset=utf-8")
    claims = verify_token(
        body.decode(), jwks=document, audience="devid", client_cert_der=device.ldevid.der, clock=env.clock
    )
    assert claims.sub == "SN-0001"

    status, ctype, body = out["cwt"]
    assert (status, ctype) == (200, "application/cwt")
    assert (
        verify_token(
            body, jwks=document, audience="devid", client_cert_der=device.ldevid.der, clock=env.clock
        ).format
        == "cwt"
    )

    status, _, body = out["scoped"]
    assert (
        status == 200
        and verify_token(body.decode(), jwks=document, audience="devid", clock=env.clock).scope
        == "config:read"
    )

    assert out["no-cert"][0] == 401 and b"client certificate" in out["no-cert"][2]
    assert out["no-cert"][2].endswith(b"[token-no-client-cert]\n")
    assert out["idevid"][0] == 403 and b"operational CA" in out["idevid"][2]
    assert out["bad-json"][0] == 400 and out["bad-json"][1].startswith("text/plain")
    assert out["bad-audience"][0] == 400 and b"billing" in out["bad-audience"][2]
    assert out["too-large"][0] == 413 and out["chunked-too-large"][0] == 413
    status, _, body = out["chunked"]
    assert status == 200, body
    assert (
        verify_token(body.decode(), jwks=document, audience="devid", clock=env.clock).scope == "config:read"
    )
    assert out["superseded"][0] == 403 and b"superseded" in out["superseded"][2]
    assert out["renewed"][0] == 200
    assert out["inactive"][0] == 403 and b"INACTIVE" in out["inactive"][2]

    rows = audit_rows(env, "token.issue")
    assert sum(r.outcome == "ok" for r in rows) == 5
    assert sum(r.outcome == "refused" for r in rows) == 8
    with env.authority.engine.connect() as conn:
        assert audit.verify(conn).ok
        row = repo.certificate_by_fingerprint(conn, other.ldevid.fingerprint)
        assert row is not None and row.status == "superseded"


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, "jwt"),
        ("*/*", "jwt"),
        ("application/cwt", "cwt"),
        ("application/jwt, application/cwt", "jwt"),
        ("application/jwt;q=0.5, application/cwt", "cwt"),
        ("application/cwt;q=0", "jwt"),
        ("text/html", "jwt"),
    ],
)
def test_accept_negotiation(accept: str | None, fmt: str) -> None:
    assert preferred_format(accept) == fmt


# --- the CLI ----------------------------------------------------------------------------------------


def test_cli_verify_jwks_and_rotate(env: Env, tmp_path: Path) -> None:
    home = str(env.home.path)
    jwt_token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    cwt_token = issue_for_certificate(env.authority, env.device.ldevid.der, fmt="cwt").token
    assert isinstance(jwt_token, str) and isinstance(cwt_token, bytes)
    (tmp_path / "t.jwt").write_text(jwt_token + "\n")
    (tmp_path / "t.cwt").write_bytes(cwt_token)
    (tmp_path / "ldevid.pem").write_bytes(env.device.ldevid.pem)
    (tmp_path / "other.pem").write_bytes(env.device.idevid.pem)

    (tmp_path / "jwks.json").write_text(json.dumps(jwks(env.authority)))
    jwks_file = tmp_path / "jwks.json"
    # Independent calls run concurrently (each CLI start costs seconds on this machine).
    shown, document, as_json, from_hex, wrong_aud, bad_cert, garbage = devid_many(
        [
            ["token", "verify", jwt_token, "--audience", "devid", "--home", home],
            ["token", "jwks", "--home", home],
            [
                "token",
                "verify",
                str(tmp_path / "t.cwt"),
                "--audience",
                "devid",
                "--jwks",
                str(jwks_file),
                "--cert",
                str(tmp_path / "ldevid.pem"),
                "--json",
            ],
            ["token", "verify", cwt_token.hex(), "--audience", "devid", "--home", home],
            ["token", "verify", str(tmp_path / "t.jwt"), "--audience", "billing", "--home", home],
            [
                "token",
                "verify",
                str(tmp_path / "t.jwt"),
                "--audience",
                "devid",
                "--jwks",
                str(jwks_file),
                "--cert",
                str(tmp_path / "other.pem"),
            ],
            ["token", "verify", "nonsense!", "--audience", "devid", "--jwks", str(jwks_file)],
        ]
    )
    assert "valid" in ok(shown).stdout and "SN-0001" in shown.stdout
    assert "telemetry:publish config:read" in shown.stdout
    assert json.loads(ok(document).stdout) == jwks(env.authority)
    info = json.loads(ok(as_json).stdout)
    assert (info["format"], info["sub"]) == ("cwt", "SN-0001")
    assert "SN-0001" in ok(from_hex).stdout
    assert wrong_aud.returncode == 2 and "[token-audience]" in wrong_aud.stderr
    assert bad_cert.returncode == 2 and "[token-binding]" in bad_cert.stderr
    assert garbage.returncode == 2 and "[token-malformed]" in garbage.stderr

    rotated = ok(devid("token", "rotate-key", "--home", home, "--json")).stdout
    result = json.loads(rotated)
    assert result["retired"] == json.loads(document.stdout)["keys"][0]["kid"]
    assert len(jwks(env.authority)["keys"]) == 2
    assert token_keyring(env.authority).current().kid == result["kid"]
    still = ok(devid("token", "verify", tmp_path / "t.jwt", "--audience", "devid", "--home", home))
    assert "SN-0001" in still.stdout


# --- both stores, concurrent issuance -----------------------------------------------------------------


def test_concurrent_issuance_on_each_store(authority: Authority) -> None:
    """Threads issuing at once (as the web server's workers do) on SQLite and PostgreSQL: every token
    verifies, every issuance is audited once, and the audit chain holds."""
    devices_ = [provision(authority, f"SN-C{i}") for i in range(4)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(
            pool.map(
                lambda i: issue_for_certificate(
                    authority, devices_[i % 4].ldevid.der, fmt="cwt" if i % 2 else "jwt"
                ),
                range(24),
            )
        )
    document = jwks(authority)
    for i, item in enumerate(issued):
        claims = verify_token(
            item.token, jwks=document, audience="devid", client_cert_der=devices_[i % 4].ldevid.der
        )
        assert claims.sub == f"SN-C{i % 4}"
    assert len({item.claims.jti for item in issued}) == 24
    with pytest.raises(DevidError):
        issue_for_certificate(authority, devices_[0].idevid.der)
    events = audit_events
    with authority.engine.connect() as conn:
        rows = list(conn.execute(select(events.c.outcome).where(events.c.action == "token.issue")))
        assert sorted(r.outcome for r in rows) == ["ok"] * 24 + ["refused"]
        assert audit.verify(conn).ok


def test_attach_gives_the_home_keyring_and_its_token_policy(env: Env) -> None:
    """What `open_authority` calls: the keyring under <home>/keys, the policy from a `[tokens]` table."""
    env.home.config.tokens = {"audiences": ["devid", "mqtt"], "lifetime_minutes": 30}  # type: ignore[attr-defined]
    ring = attach(env.authority, env.home)
    assert ring.key_prefix == env.home.config.key_prefix
    assert token_keyring(env.authority) is ring
    policy = token_policy(env.authority)
    assert policy.audiences == ("devid", "mqtt") and policy.lifetime == dt.timedelta(minutes=30)
    assert policy.issuer == "urn:devid:test-org"
    issued = issue_for_certificate(env.authority, env.device.ldevid.der, audience="mqtt")
    assert issued.claims.exp - issued.claims.iat == dt.timedelta(minutes=30)


def test_key_compromise_makes_tokens_inactive_and_refuses_new_ones(env: Env) -> None:
    from devid.authority.revocation import RevokeRequest, Selector, revoke
    from devid.pki.reasons import Reason

    home = str(env.home.path)
    token = issue_for_certificate(env.authority, env.device.ldevid.der).token
    assert isinstance(token, str)
    active = json.loads(
        ok(devid("token", "verify", token, "--audience", "devid", "--home", home, "--json")).stdout
    )
    assert active["active"] is True
    serial = f"{env.device.ldevid.serial:x}"
    revoke(env.authority, RevokeRequest(Selector.SERIAL, serial, Reason.KEY_COMPROMISE), "test")
    inactive = devid("token", "verify", token, "--audience", "devid", "--home", home, "--json")
    assert inactive.returncode == 1
    answer = json.loads(inactive.stdout)
    assert (answer["active"], answer["inactive"]) == (False, "certificate-revoked")
    with pytest.raises(DevidError) as refused:
        issue_for_certificate(env.authority, env.device.ldevid.der)
    assert refused.value.code == "client-cert-revoked"
