"""One mapping from devid's errors to HTTP, for every endpoint: EST, session tokens, the admin API.

`status_for` is the status of an error, by its type (and for a few codes, the code). EST and the
token service refuse in `text/plain` with the reason and its stable code (`reason [code]`), and the
code again in a `Devid-Error` header (`error_response`), so a device decides on the code and a
person reads the reason; the admin API puts the same code and reason in its JSON error body.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from devid.errors import (
    AuthenticationRequired,
    BodyTooLarge,
    ConfigError,
    ConflictError,
    DevidError,
    KeyAccessError,
    KeyExportRefused,
    NotFoundError,
    PolicyError,
    RateLimited,
    RequestInvalid,
    StoreUnavailable,
)
from devid.registry.allocation import AllocationFailed
from devid.store.engine import unavailable

log = logging.getLogger("devid.web")

#: Codes of PolicyErrors that describe a malformed request (400), not a refusal by policy (403).
_MALFORMED_PREFIXES = ("csr-", "pem-", "key-", "der-", "request-")
#: Codes with their own status.
_STATUS_BY_CODE = {
    "unknown-label": 404,
    "not-found": 404,
    "content-type": 415,
    # An answer asked for in C509 that C509 cannot carry exactly (Accept could not be honoured).
    "c509-unsupported": 406,
    "c509-malformed": 400,
    "version-required": 428,
}
ERROR_HEADER = "Devid-Error"
#: The challenges of a 401: EST's HTTP Basic (enrollment secrets); the token service's client
#: certificate, for which there is no registered scheme.
BASIC_CHALLENGE = 'Basic realm="devid EST", charset="UTF-8"'
MTLS_CHALLENGE = 'Mutual-TLS realm="devid"'


def status_for(error: DevidError, *, reveal_missing: bool = False) -> int:
    """The HTTP status of a devid error.

    `reveal_missing`: any NotFoundError is 404 (the admin API, whose clients name objects they may
    see). Otherwise only what the client named (a label, a path) is 404, and a device or
    certificate it does not own, or that does not exist, is a refusal (403): no hint which.
    """
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    if isinstance(error, AuthenticationRequired):
        return 401
    if isinstance(error, RateLimited):
        return 429
    if isinstance(error, BodyTooLarge):
        return 413
    if isinstance(error, StoreUnavailable):
        return 503
    if isinstance(error, RequestInvalid):
        return 400
    if isinstance(error, AllocationFailed):
        # The operator's allocation webhook failed (502) or there is no hub to allocate to (503).
        return 502 if error.code.startswith("allocation-webhook") else 503
    if isinstance(error, PolicyError):
        return 400 if error.code.startswith(_MALFORMED_PREFIXES) else 403
    if isinstance(error, NotFoundError):
        return 404 if reveal_missing else 403
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, KeyExportRefused):
        return 403
    if isinstance(error, (KeyAccessError, ConfigError)):
        return 500
    return 500


def refusal_headers(error: DevidError, status: int, challenge: str) -> dict[str, str]:
    """Headers every refusal carries, whatever its body: never cached, the challenge of a 401,
    when to retry a 429 or a 503 of the store."""
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = challenge
    if isinstance(error, RateLimited | StoreUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    return headers


def error_response(error: DevidError, *, challenge: str = BASIC_CHALLENGE) -> web.Response:
    """The plain-text refusal of EST and the token service (`challenge`: what a 401 asks for)."""
    status = status_for(error)
    if status == 500:
        # The operator sees the details in the log; the peer learns nothing about keys or config.
        log.error("internal error answering a request: %s [%s]", error.message, error.code)
        body, code = "internal error: the server cannot complete this request now\n", "internal"
    else:
        body, code = f"{error.message} [{error.code}]\n", error.code
    headers = {ERROR_HEADER: code, **refusal_headers(error, status, challenge)}
    return web.Response(status=status, text=body, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn DevidErrors raised by any handler into their HTTP refusal, and a database outage (the
    driver's errors, whichever handler met them) into 503 with Retry-After."""
    try:
        return await handler(request)
    except DevidError as exc:
        return error_response(exc)
    except Exception as exc:
        down = unavailable(exc)
        if down is None:
            raise
        log.warning("store unavailable answering %s %s: %s", request.method, request.path, exc)
        return error_response(down)
