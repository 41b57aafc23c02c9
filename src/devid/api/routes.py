"""The route table's vocabulary: a `Route` says everything about one endpoint, once.

The dispatcher validates requests against a route's parameter and body schemas and the OpenAPI
document publishes the same schemas, so what is documented is what is enforced. A resource module
exports a list of Routes; adding an endpoint is one entry and one plain function `Call -> body`,
run on a worker thread (the store is synchronous).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devid.authority.api_tokens import TokenInfo
from devid.authority.core import Authority
from devid.authority.roles import Permission

Schema = dict[str, Any]
PREFIX = "/api/v1"
MAX_PAGE = 1000
DEFAULT_PAGE = 100
#: The largest cursor value (a 63-bit row id) a client may send back.
MAX_CURSOR = 2**63 - 1
#: The JSON Schema of an object's version in a change (what the store's INTEGER column holds).
VERSION_SCHEMA: dict[str, object] = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


@dataclass(frozen=True)
class Param:
    """A path or query parameter: its name, JSON schema and what it means."""

    name: str
    schema: Schema
    description: str = ""


@dataclass(frozen=True)
class Call:
    """One authorized request, parsed and validated, as a handler sees it."""

    authority: Authority
    token: TokenInfo
    path: Mapping[str, Any]
    query: Mapping[str, Any]
    body: Any = None
    #: The version the client read (If-Match or the body's `version`), for versioned routes.
    version: int | None = None

    @property
    def actor(self) -> str:
        """Who the audit log names for changes this call makes."""
        return f"token:{self.token.name}"


@dataclass(frozen=True)
class Reply:
    """A handler's answer when the route's default status or extra headers are not enough."""

    body: Any
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def versioned(body: dict[str, Any], version: int, status: int | None = None) -> Reply:
    """An object's representation with its version as ETag (what a later If-Match names)."""
    return Reply(body, status, {"ETag": f'"{version}"'})


Handler = Callable[[Call], Any]


@dataclass(frozen=True, eq=False)
class Route:
    """One endpoint: method and path (below /api/v1), the permission it needs, its schemas."""

    method: str
    path: str
    permission: Permission
    summary: str
    handler: Handler
    response: Schema
    status: int = 200
    path_params: Sequence[Param] = ()
    query: Sequence[Param] = ()
    body: Schema | None = None
    #: Changes a versioned resource: needs If-Match or a body `version`; 409 when stale, 428 when absent.
    versioned: bool = False
    #: May answer 409 for another reason (a duplicate name, a second revocation).
    conflicts: bool = False
    #: May answer 404 for an object the body names (not only the path).
    not_found: bool = False
    #: A second success status and what it means (a dry run of a change that creates: 200, not 201).
    also: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        named = set(re.findall(r"{(\w+)}", self.path))
        if named != {p.name for p in self.path_params}:
            raise ValueError(f"{self.method} {self.path}: path parameters and their declarations differ")

    @property
    def action(self) -> str:
        """The audit action of a call to this route."""
        return f"api.{self.method} {PREFIX}{self.path}"

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "_", f"{self.method} {self.path}".lower()).strip("_")
        return words

    @property
    def tag(self) -> str:
        return self.path.strip("/").split("/")[0]

    def statuses(self) -> dict[int, str]:
        """Every status this route can answer besides its success, with why."""
        out = {
            401: "missing, unknown, expired or revoked API token",
            403: "the token's role lacks this route's permission",
            429: "the token is over its rate limit; Retry-After says when to retry",
        }
        out[400] = "malformed or unknown parameters, malformed body (the message names the field)"
        if self.path_params or self.not_found:
            out[404] = "no such object"
        if self.body is not None:
            out[413] = "the body is too large"
            out[415] = "the body is not application/json"
        if self.versioned or self.conflicts:
            out[409] = "conflicts with the current state (a stale version: read it again); nothing changed"
        if self.versioned:
            out[428] = "If-Match (or a body `version`) is required"
        return out


# Schema building blocks shared by the resource modules.


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


TIME: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIME = nullable(TIME)
STRING: Schema = {"type": "string"}
MAYBE_STRING = nullable(STRING)
NAME_PARAM_SCHEMA: Schema = {"type": "string", "minLength": 1, "maxLength": 128}


def obj(properties: Mapping[str, Schema], *, optional: Sequence[str] = ()) -> Schema:
    """A closed object schema whose properties are all required unless named in `optional`."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def page_of(item: Schema) -> Schema:
    return obj({"items": {"type": "array", "items": item}, "next": {"type": ["integer", "string", "null"]}})


LIMIT = Param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
    "page size",
)
AFTER = Param(
    "after",
    {"type": "integer", "minimum": 0, "maximum": MAX_CURSOR},
    "cursor: the `next` of the previous page (omit for the first page)",
)


def page(
    rows: Sequence[Any], render: Callable[[Any], dict[str, Any]], limit: int, cursor: Callable[[Any], Any]
) -> dict[str, Any]:
    """A keyset page of `rows`: `next` is the last row's cursor when the page is full (there may
    be more), else null."""
    return {
        "items": [render(row) for row in rows],
        "next": cursor(rows[-1]) if rows and len(rows) == limit else None,
    }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


NAME_AFTER = Param("after", {"type": "string", "maxLength": 128}, "cursor: the `next` of the previous page")
NAME_PATH = Param("name", NAME_PARAM_SCHEMA, "name")


def page_by_name(items: Sequence[dict[str, Any]], call: Call) -> dict[str, Any]:
    """A page of a small registry listing (tens to hundreds of rows, read whole): in name order,
    after the `after` name; the same `{items, next}` contract as the keyset-paged tables."""
    limit, after = call.query["limit"], call.query.get("after", "")
    rows = sorted((i for i in items if i["name"] > after), key=lambda i: str(i["name"]))[:limit]
    return page(rows, lambda item: item, limit, lambda item: item["name"])
