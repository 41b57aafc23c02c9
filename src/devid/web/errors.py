"""One mapping from devid's errors to HTTP: every endpoint refuses the same way.

A refusal is `text/plain` with the reason and its stable code (`reason [code]`), and the code
again in a `Devid-Error` header, so a device decides on the code and a person reads the reason.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from devid.authority.enroll import AuthenticationRequired
from devid.errors import (
    ConfigError,
    ConflictError,
    DevidError,
    KeyAccessError,
    KeyExportRefused,
    NotFoundError,
    PolicyError,
)
from devid.registry.allocation import AllocationFailed

log = logging.getLogger("devid.web")

#: Codes of PolicyErrors that describe a malformed request (400), not a refusal by policy (403).
_MALFORMED_PREFIXES = ("csr-", "pem-", "key-", "der-", "request-")
#: Codes with their own status.
_STATUS_BY_CODE = {
    "unknown-label": 404,
    "not-found": 404,
    "body-too-large": 413,
    "content-type": 415,
}
ERROR_HEADER = "Devid-Error"
CHALLENGE = 'Basic realm="devid EST", charset="UTF-8"'


def status_for(error: DevidError) -> int:
    """The HTTP status of a devid error."""
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    if isinstance(error, AuthenticationRequired):
        return 401
    if isinstance(error, AllocationFailed):
        # The operator's allocation webhook failed (502) or there is no hub to allocate to (503).
        return 502 if error.code.startswith("allocation-webhook") else 503
    if isinstance(error, PolicyError):
        return 400 if error.code.startswith(_MALFORMED_PREFIXES) else 403
    if isinstance(error, NotFoundError):
        # What the client named (a label, a path) is 404; a device or certificate it does not
        # own, or that does not exist, is a refusal: no hint which of the two it was.
        return 403
    if isinstance(error, ConflictError):
        return 409
    if isinstance(error, KeyExportRefused):
        return 403
    if isinstance(error, (KeyAccessError, ConfigError)):
        return 500
    return 500


def error_response(error: DevidError) -> web.Response:
    status = status_for(error)
    if status == 500:
        # The operator sees the details in the log; the peer learns nothing about keys or config.
        log.error("internal error answering a request: %s [%s]", error.message, error.code)
        body, code = "internal error: the server cannot complete this request now\n", "internal"
    else:
        body, code = f"{error.message} [{error.code}]\n", error.code
    headers = {ERROR_HEADER: code}
    if status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    return web.Response(status=status, text=body, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn DevidErrors raised by any handler into their HTTP refusal."""
    try:
        return await handler(request)
    except DevidError as exc:
        return error_response(exc)
