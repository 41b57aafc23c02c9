"""OCSP over HTTP (RFC 6960 appendix A, RFC 5019 5): POST `/ocsp`, GET `/ocsp/{base64 request}`.

One handler (`OcspHttp.handle`) serves both the plain-HTTP status port (`plain_http`) and, through
`routes`, an aiohttp application. Pre-signed answers carry what lets HTTP caches and CDNs share them
(RFC 5019 6.2): max-age until the responder would sign a newer one, ETag, Last-Modified (thisUpdate)
and Expires (nextUpdate); an answer to a request with a nonce is for its requester only (no-cache).
Whatever the body holds, the status is 200 with an OCSPResponse (malformedRequest for garbage);
only what is not an OCSP request at the HTTP level gets an HTTP error (404, 405, 413, 415).
"""

from __future__ import annotations

import base64
import binascii
import functools
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from aiohttp import web

from devid.clock import Clock
from devid.publish.plain_http import Reply
from devid.revocation.ocsp import OcspAnswer, OcspResponder

REQUEST_TYPE = "application/ocsp-request"
RESPONSE_TYPE = "application/ocsp-response"
PREFIX = "/ocsp"
MAX_REQUEST_BYTES = 16 * 1024
_TEXT = (("Content-Type", "text/plain"),)
_NOT_SHARED = (("Content-Type", RESPONSE_TYPE), ("Cache-Control", "no-cache"))


@functools.lru_cache(maxsize=4096)
def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


@dataclass(frozen=True)
class _Memo:
    """The reply made for one request in one second, and the answer and request DER it was for."""

    der: bytes
    answer: OcspAnswer
    second: int
    reply: Reply


class OcspHttp:
    """The HTTP face of `responder`, under `PREFIX`."""

    def __init__(
        self,
        responder: OcspResponder,
        clock: Clock,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_memo: int = 10_000,
    ) -> None:
        self._responder = responder
        self._clock = clock
        self._max_request_bytes = max_request_bytes
        self._max_memo = max_memo
        self._memo: dict[str | bytes, _Memo] = {}

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """A `plain_http.Handler`: `target` is the request target as sent (still percent-encoded)."""
        if not target.startswith(PREFIX) or target[len(PREFIX) : len(PREFIX) + 1] not in ("", "/"):
            return 404, _TEXT, b"not found\n"
        if method == "POST":
            if headers.get("content-type", "").split(";")[0].strip().lower() != REQUEST_TYPE:
                return 415, _TEXT, f"an OCSP request is {REQUEST_TYPE}\n".encode()
            if len(body) > self._max_request_bytes:
                return 413, _TEXT, b"OCSP request too large\n"
            return self._answer(body, body, headers)
        if method in ("GET", "HEAD"):
            return self._answer(target, None, headers)
        return 405, (*_TEXT, ("Allow", "GET, HEAD, POST")), b"method not allowed\n"

    def routes(self) -> list[web.RouteDef]:
        """The same endpoints as aiohttp routes."""
        return [
            web.post(PREFIX, self._aiohttp),
            web.post(PREFIX + "/", self._aiohttp),
            web.get(PREFIX + "/{request:.*}", self._aiohttp),
        ]

    async def _aiohttp(self, request: web.Request) -> web.StreamResponse:
        body = b""
        if request.method == "POST":
            read = await _read_capped(request, self._max_request_bytes)
            if read is None:
                return web.Response(status=413, text="OCSP request too large\n")
            body = read
        status, headers, content = self.handle(request.method, request.raw_path, request.headers, body)
        return web.Response(status=status, headers=headers, body=content)

    def _answer(self, key: str | bytes, der: bytes | None, headers: Mapping[str, str]) -> Reply:
        """The reply to the request `der` (for a GET, None: decoded from the target `key`).

        The replies to shared answers are kept by request (target or body) for the second they
        were made in (max-age counts down in seconds): the hot path of a pre-signed answer is then
        two dict lookups and the responder's own, without decoding or formatting anything.
        """
        now = self._clock.now()
        second = int(now.timestamp())
        memo = self._memo.get(key)
        if memo is not None:
            der = memo.der
        elif der is None:
            assert isinstance(key, str)
            der = self._decode(key[len(PREFIX) + 1 :])
        answer = self._responder.respond(der)
        if (
            memo is not None
            and memo.answer is answer
            and memo.second == second
            and "if-none-match" not in headers
        ):
            return memo.reply
        reply = self._reply(answer, now, headers)
        if answer.etag is not None and reply[0] == 200:
            if key not in self._memo and len(self._memo) >= self._max_memo:
                del self._memo[next(iter(self._memo))]
            self._memo[key] = _Memo(der, answer, second, reply)
        return reply

    def _decode(self, encoded: str) -> bytes:
        """The DER of a GET request (RFC 5019 5: base64, then URL-encoded); b"" (answered
        malformedRequest) when it is not base64. Also takes the URL-safe alphabet."""
        if len(encoded) > 2 * self._max_request_bytes:
            return b""
        text = urllib.parse.unquote(encoded) if "%" in encoded else encoded
        try:
            return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            return b""

    def _reply(self, answer: OcspAnswer, now: datetime, headers: Mapping[str, str]) -> Reply:
        if answer.etag is None or answer.cache_until is None or answer.this_update is None:
            return 200, _NOT_SHARED, answer.der
        assert answer.next_update is not None
        max_age = max(0, int((answer.cache_until - now).total_seconds()))
        cache = (
            ("Content-Type", RESPONSE_TYPE),
            ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
            ("ETag", answer.etag),
            ("Last-Modified", _http_date(answer.this_update)),
            ("Expires", _http_date(answer.next_update)),
        )
        if headers.get("if-none-match") == answer.etag:
            return 304, cache, b""
        return 200, cache, answer.der


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None past `limit` octets (also for a chunked one, which has no length up front)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
