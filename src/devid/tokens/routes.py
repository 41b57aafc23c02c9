"""HTTP: `POST /token` (a session token for the mTLS-authenticated device) and
`GET /.well-known/jwks.json` (the keys that verify those tokens).

The caller authenticates with its LDevID or a session certificate at the TLS handshake; the
server's SSL context asks for a client certificate (optional at the handshake) and this handler
requires one. Request body, optional: JSON `{"audience": "...", "scope": "space separated"}`.
Response: the token, `application/jwt` by default, `application/cwt` when the client's Accept
prefers it. Refusals are plain text with 400, 401, 403 or 413 (`devid.web.errors`, as EST refuses),
and are audited.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from devid.authority.core import Authority
from devid.authority.token_keys import token_keyring
from devid.errors import BodyTooLarge, DevidError, RequestInvalid
from devid.tokens.claims import certificate_thumbprint
from devid.tokens.issue import MEDIA_TYPES, TokenFormat, issue_for_certificate
from devid.web.errors import MTLS_CHALLENGE, error_response

MAX_BODY = 4096
PeerCertificate = Callable[[web.Request], bytes | None]


def tls_peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate the TLS layer verified for this connection (None: none sent)."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


def preferred_format(accept: str | None) -> TokenFormat:
    """CWT when the Accept header ranks application/cwt above application/jwt; JWT otherwise."""
    if not accept:
        return "jwt"
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))

    def q_of(media: str) -> float:
        kind = media.split("/")[0]
        return quality.get(media, quality.get(f"{kind}/*", quality.get("*/*", 0.0)))

    return "cwt" if q_of(MEDIA_TYPES["cwt"]) > q_of(MEDIA_TYPES["jwt"]) else "jwt"


async def _read_body(request: web.Request) -> bytes:
    too_large = BodyTooLarge("token-body-too-large", f"the request body is over {MAX_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY + 1 - size):  # read(n) may return less than n
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            raise too_large
    return b"".join(chunks)


def _parse_body(raw: bytes) -> tuple[str | None, str | None]:
    if not raw.strip():
        return None, None
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestInvalid("token-bad-request", "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise RequestInvalid("token-bad-request", "the request body must be a JSON object")
    unknown = set(data) - {"audience", "scope"}
    if unknown:
        raise RequestInvalid("token-bad-request", f"unknown request member(s): {', '.join(sorted(unknown))}")
    values: list[str | None] = []
    for name in ("audience", "scope"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise RequestInvalid("token-bad-request", f"{name!r} must be a string")
        values.append(value)
    return values[0], values[1]


def token_routes(
    authority: Authority, *, peer_certificate: PeerCertificate = tls_peer_certificate
) -> list[web.RouteDef]:
    """The token endpoint and the JWKS, for inclusion in devid's aiohttp application.

    `peer_certificate` reads the client certificate of a request; the default takes it from the
    TLS connection. An app behind a trusted TLS-terminating proxy passes its own reader.
    """

    async def post_token(request: web.Request) -> web.StreamResponse:
        cert = peer_certificate(request)
        fmt = preferred_format(request.headers.get("Accept"))
        try:
            raw = await _read_body(request)
            audience, scope = _parse_body(raw) if cert is not None else (None, None)
        except DevidError as exc:
            subject = certificate_thumbprint(cert).hex() if cert is not None else "-"
            await asyncio.to_thread(
                authority.record_refusal, exc, "token.issue", subject, "anonymous", {"format": fmt}
            )
            return error_response(exc, challenge=MTLS_CHALLENGE)
        try:
            issued = await asyncio.to_thread(
                issue_for_certificate, authority, cert, audience=audience, scope=scope, fmt=fmt
            )
        except DevidError as exc:
            return error_response(exc, challenge=MTLS_CHALLENGE)
        return web.Response(
            body=issued.body,
            content_type=issued.media_type,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def get_jwks(request: web.Request) -> web.StreamResponse:
        document = await asyncio.to_thread(token_keyring(authority).jwks)
        return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})

    return [web.post("/token", post_token), web.get("/.well-known/jwks.json", get_jwks)]
