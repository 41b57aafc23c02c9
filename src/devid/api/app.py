"""The admin API as an aiohttp sub-application mounted at /api/v1.

A sub-application has its own middleware, so the JSON error answers here never touch EST, whose
refusals stay text/plain. Each call runs on one worker thread from authentication to audit:
verify the bearer token against the store (so revocation is immediate everywhere), check the
role, take from the token's rate bucket, validate parameters and body against the route's
schemas, run the handler, and append one audit event (`api.<METHOD> <route>`, actor
`token:<name>`, outcome ok or refused) whatever the answer was, except that calls refused with
429 are audited once per caller and window (`devid.api.limited`). The OpenAPI document is the only
unauthenticated, unaudited resource: it is public and the same for everyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator

from devid.api.limited import LimitedCalls
from devid.api.openapi import document
from devid.api.ratelimit import RateLimited, RateLimiter
from devid.api.routes import PREFIX, Call, Reply, Route, Schema
from devid.authority import api_tokens
from devid.authority.api_tokens import TokenInfo
from devid.authority.core import Authority
from devid.authority.roles import allows
from devid.errors import AuthenticationRequired, ConflictError, DevidError, PolicyError
from devid.store import audit
from devid.store.engine import reading, unavailable, writing
from devid.web.errors import refusal_headers, status_for
from devid.web.peer import peer_address

log = logging.getLogger("devid.api")

_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}
_BEARER = re.compile(r"Bearer\s+(\S+)\s*$", re.IGNORECASE)
_ETAG = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')
REALM = 'Bearer realm="devid API"'


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_reply(error: DevidError, presented_token: bool) -> Reply:
    """The JSON refusal of an API call; its status is `status_for`'s, with an unknown id a plain 404
    (an API client names objects it may see)."""
    status = status_for(error, reveal_missing=True)
    if status == 500:
        log.error("internal error answering an API call: %s [%s]", error.message, error.code)
        return Reply(error_body("internal", "the server cannot complete this request now"), 500)
    # RFC 6750 section 3: name the error only when a token was presented.
    challenge = f'{REALM}, error="invalid_token"' if presented_token else REALM
    return Reply(error_body(error.code, error.message), status, refusal_headers(error, status, challenge))


def json_response(reply: Reply, default_status: int) -> web.Response:
    status = reply.status or default_status
    if status == 204:
        return web.Response(status=204, headers=reply.headers)
    text = json.dumps(reply.body, separators=(",", ":"))
    return web.Response(status=status, text=text, content_type="application/json", headers=reply.headers)


@dataclass(frozen=True)
class Incoming:
    """What the event loop hands the worker thread: the request, already read."""

    path: str
    query: Sequence[tuple[str, str]]
    match: Mapping[str, str]
    authorization: str | None
    if_match: str | None
    content_type: str
    body: bytes
    peer: str = "-"


#: Arrays and objects nested deeper than this in a request body are refused (400).
MAX_JSON_DEPTH = 32

#: Calls per minute a peer address may make without a valid token: each refusal is audited, so
#: an anonymous client must not be able to grow the audit log at line rate.
ANONYMOUS_RATE = 60


class ApiServer:
    """Dispatches the route table; one per application (it owns the rate buckets)."""

    def __init__(
        self,
        authority: Authority,
        routes: Sequence[Route],
        anonymous_rate: int = ANONYMOUS_RATE,
        share: Callable[[], int] | None = None,
    ) -> None:
        self.authority = authority
        self.anonymous_rate = anonymous_rate
        self.routes = list(routes)
        self.limiter = RateLimiter(share=share) if share is not None else RateLimiter()
        self.limited = LimitedCalls()
        self.document = document(self.routes)
        self._query_validators = {r: _validator(_params_schema(r.query)) for r in self.routes}
        self._path_validators = {r: _validator(_params_schema(r.path_params)) for r in self.routes}
        self._body_validators = {r: _validator(r.body) for r in self.routes if r.body is not None}

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware])
        # Route names are the operation ids: what /metrics counts API requests by.
        app.router.add_get("/openapi.json", self.openapi, allow_head=False, name="openapi")
        for route, path in _router_paths(self.routes).items():
            app.router.add_route(route.method, path, self._handler(route), name=route.operation_id)
        return app

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    def _handler(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read() if route.body is not None else b""
            incoming = Incoming(
                request.path,
                list(request.query.items()),
                dict(request.match_info),
                request.headers.get("Authorization"),
                request.headers.get("If-Match"),
                request.content_type,
                body,
                peer_address(request) or "-",
            )
            reply = await asyncio.to_thread(self._call, route, incoming)
            return json_response(reply, route.status)

        return handle

    def _call(self, route: Route, incoming: Incoming) -> Reply:
        """Authenticate, authorize, limit, validate, run and audit one call (on a worker thread)."""
        actor, token = "anonymous", None
        try:
            token = self._authenticate(incoming.authorization)
            actor = f"token:{token.name}"
            if not allows(token.role, route.permission):
                raise PolicyError(
                    "api-forbidden",
                    f"role {token.role.value!r} may not {route.method} {PREFIX}{route.path} "
                    f"(needs {route.permission.value})",
                )
            self.limiter.take(token.name, token.rate_per_minute)
            result = route.handler(self._parse(route, incoming, token))
            reply = result if isinstance(result, Reply) else Reply(result)
        except AuthenticationRequired as exc:
            reply = error_reply(exc, incoming.authorization is not None)
            try:
                self.limiter.take(
                    f"peer:{incoming.peer}",
                    self.anonymous_rate,
                    f"unauthenticated calls from {incoming.peer}",
                )
            except RateLimited as limited:
                reply = error_reply(limited, incoming.authorization is not None)
        except DevidError as exc:
            reply = error_reply(exc, incoming.authorization is not None)
        except Exception as exc:
            down = unavailable(exc)
            if down is None:
                log.exception("API call %s %s failed", route.method, incoming.path)
                reply = Reply(error_body("internal", "the server cannot complete this request now"), 500)
            else:
                # Nothing to audit into a store that is away: answer 503 with Retry-After now.
                return error_reply(down, incoming.authorization is not None)
        status, detail = reply.status or route.status, {}
        if status == 429:  # audited once per caller and window (devid.api.limited)
            caller = actor if token is not None else f"peer:{incoming.peer}"
            count = self.limited.refused(caller, self.authority.clock.now())
            if count is None:
                return reply
            detail["refused_calls"] = count
        self._audit(route.action, incoming.path, actor, status, reply.body, detail)
        return reply

    def _authenticate(self, header: str | None) -> TokenInfo:
        if header is None:
            raise AuthenticationRequired("api-token-missing", "an API bearer token is required")
        found = _BEARER.match(header)
        if found is None:
            raise AuthenticationRequired("api-token-invalid", "Authorization must be `Bearer <token>`")
        with reading(self.authority.engine) as conn:
            return api_tokens.verify(
                conn, self.authority.credentials, found.group(1), self.authority.clock.now()
            )

    def _parse(self, route: Route, incoming: Incoming, token: TokenInfo) -> Call:
        path = _check(self._path_validators[route], _typed(route.path_params, incoming.match.items()), "path")
        query = _check(self._query_validators[route], _typed(route.query, incoming.query), "query")
        for param in route.query:
            if param.name not in query and "default" in param.schema:
                query[param.name] = param.schema["default"]
        body = None
        if route.body is not None:
            if incoming.content_type not in ("application/json", "") and not incoming.content_type.endswith(
                "+json"
            ):
                raise PolicyError(
                    "content-type", f"the body must be application/json, not {incoming.content_type}"
                )
            try:
                body = json.loads(incoming.body)
                too_deep = not _nests_within(body, MAX_JSON_DEPTH)
            except (ValueError, UnicodeDecodeError) as exc:
                raise PolicyError("request-json", f"the body is not valid JSON: {exc}") from None
            except RecursionError:  # Python's own limit (~1000 levels), far past ours
                too_deep = True
            if too_deep:
                raise PolicyError("request-json-depth", f"the body nests deeper than {MAX_JSON_DEPTH} levels")
            _check(self._body_validators[route], body, "body")
        version = _version(incoming.if_match, body) if route.versioned else None
        return Call(self.authority, token, path, query, body, version)

    def _audit(
        self, action: str, path: str, actor: str, status: int, body: Any, extra: dict[str, Any] | None = None
    ) -> None:
        detail: dict[str, Any] = {"status": status, **(extra or {})}
        if status >= 400 and isinstance(body, dict) and "error" in body:
            detail["error"] = body["error"]["code"]
        now = self.authority.clock.now()
        with writing(self.authority.engine) as conn:
            audit.append(
                conn, [audit.Event(action, path, actor, "ok" if status < 400 else "refused", detail)], now
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """JSON answers for what aiohttp refuses before a route runs (no route, wrong method, body
        too large), audited like any call; such callers were not authenticated."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http-error")
            reply = Reply(error_body(code, exc.reason), exc.status, _allow(exc))
            route = request.match_info.route.resource
            where = route.canonical if route is not None else "(no route)"
            action = f"api.{request.method} {where}"
            await asyncio.to_thread(self._audit, action, request.path, "anonymous", exc.status, reply.body)
            return json_response(reply, exc.status)


def _router_paths(routes: Sequence[Route]) -> dict[Route, str]:
    """Each route's path for aiohttp. A path parameter does not match a fixed segment that another
    route has in its place (`/revocations/lift` beside `/revocations/{id}`): the parameter's route
    would otherwise answer for that path too and list its methods in the fixed path's Allow."""
    fixed: dict[tuple[str, ...], set[str]] = {}
    for route in routes:
        segments = route.path.split("/")
        for i, segment in enumerate(segments):
            if not segment.startswith("{"):
                fixed.setdefault((*segments[:i], str(len(segments))), set()).add(re.escape(segment))
    paths = {}
    for route in routes:
        segments = route.path.split("/")
        for i, segment in enumerate(segments):
            taken = fixed.get((*segments[:i], str(len(segments))))
            if segment.startswith("{") and taken:
                segments[i] = f"{{{segment[1:-1]}:(?!(?:{'|'.join(sorted(taken))})(?:/|$))[^{{}}/]+}}"
        paths[route] = "/".join(segments)
    return paths


def _nests_within(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests arrays and objects at most `limit` levels deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _allow(exc: web.HTTPException) -> dict[str, str]:
    return {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}


def _params_schema(params: Sequence[Any]) -> Schema:
    return {
        "type": "object",
        "properties": {p.name: p.schema for p in params},
        "additionalProperties": True,
    }


def _validator(schema: Schema) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _typed(params: Sequence[Any], given: Any) -> dict[str, Any]:
    """Query or path values converted to their schema's type; an unknown or repeated parameter is
    refused."""
    types = {p.name: p.schema.get("type") for p in params}
    out: dict[str, Any] = {}
    for name, raw in given:
        if name not in types:
            # A misspelt filter (`?stat=`) must not silently answer the unfiltered list.
            known = ", ".join(types) or "none"
            raise PolicyError("request-param", f"unknown parameter {name!r} (known: {known})")
        if name in out:
            raise PolicyError("request-param", f"parameter {name!r} is given more than once")
        if types.get(name) == "integer":
            if not re.fullmatch(r"-?\d{1,19}", raw):
                raise PolicyError("request-param", f"parameter {name!r} must be an integer, not {raw!r}")
            out[name] = int(raw)
        else:
            out[name] = raw
    return out


def _check(validator: Draft202012Validator, value: Any, where: str) -> Any:
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or where
        raise PolicyError("request-invalid", f"{where} {field}: {error.message}")
    return value


def _version(if_match: str | None, body: Any) -> int:
    """The version a change is based on: If-Match (an ETag as this API sends it, or a bare number)
    or the body's `version`; when both are given and differ, one of them is stale (409)."""
    from_body = body.get("version") if isinstance(body, dict) else None
    from_header = None
    if if_match is not None:
        parsed = _ETAG.match(if_match.strip())
        if parsed is None:
            raise PolicyError(
                "request-if-match", f"If-Match must be a version this API sent, not {if_match!r}"
            )
        from_header = int(parsed.group(1))
    if from_header is not None and from_body is not None and from_header != from_body:
        # At most one of them is the current version, so the change is based on a stale read.
        raise ConflictError("stale-version", "If-Match and the body's version differ: read the object again")
    version = from_header if from_header is not None else from_body
    if version is None:
        raise DevidError("version-required", "send If-Match: <version> (or a `version` field) to change this")
    return int(version)


def api_application(
    authority: Authority,
    routes: Sequence[Route] | None = None,
    anonymous_rate: int = ANONYMOUS_RATE,
    share: Callable[[], int] | None = None,
) -> web.Application:
    """The sub-application to mount at /api/v1 (`web.Application.add_subapp`); `anonymous_rate`:
    calls per minute and peer address without a valid token; `share`: the processes every rate
    limit is shared by (`devid.api.ratelimit`)."""
    if routes is None:
        from devid.api.endpoints import ROUTES

        routes = ROUTES
    return ApiServer(authority, routes, anonymous_rate, share).application()


__all__ = ["PREFIX", "ApiServer", "api_application"]
