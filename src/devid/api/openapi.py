"""The OpenAPI 3.1 document, generated from the route table the server dispatches.

Nothing here is written by hand per endpoint: paths, parameters, bodies, success and error
responses, the roles allowed and the bearer scheme all come from the `Route` entries, the same
objects the dispatcher validates requests with. OpenAPI 3.1 is used because its schemas are JSON
Schema 2020-12, the dialect the dispatcher validates with, so one schema serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devid import __version__
from devid.api.routes import PREFIX, Route, Schema
from devid.authority.roles import roles_with

ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "stable, for programs"},
                "message": {"type": "string", "description": "for people"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_STRING_HEADER = {"schema": {"type": "string"}}


def _error_response(status: int, why: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": why, "content": {"application/json": {"schema": _ERROR_REF}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {**_STRING_HEADER, "required": True}}
    elif status == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True}}
    elif status == 405:
        response["headers"] = {"Allow": _STRING_HEADER}
    return response


def _operation(route: Route) -> dict[str, Any]:
    roles = ", ".join(role.value for role in roles_with(route.permission))
    parameters: list[dict[str, Any]] = [
        {"name": p.name, "in": "path", "required": True, "schema": p.schema, "description": p.description}
        for p in route.path_params
    ]
    parameters += [
        {"name": p.name, "in": "query", "required": False, "schema": p.schema, "description": p.description}
        for p in route.query
    ]
    if route.versioned:
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": r'^(W/)?"?[0-9]{1,18}"?$'},
                "description": "the version the change is based on (the resource's ETag or `version`)",
            }
        )
    success: dict[str, Any] = {"description": "OK"}
    if route.status != 204:
        success["content"] = {"application/json": {"schema": route.response}}
    if route.versioned:
        success["headers"] = {"ETag": _STRING_HEADER}
    responses: dict[str, Any] = {str(route.status): success}
    if route.also is not None:
        status, why = route.also
        responses[str(status)] = {**success, "description": why}
    for status, why in sorted(route.statuses().items()):
        responses[str(status)] = _error_response(status, why)
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": f"{route.handler.__doc__ or route.summary}\n\nPermission `{route.permission.value}`: "
        f"roles {roles}.",
        "tags": [route.tag],
        "security": [{"bearer": []}],
        "parameters": parameters,
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
    return operation


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI document for `routes` (served at /api/v1/openapi.json)."""
    paths: dict[str, dict[str, Any]] = {
        f"{PREFIX}/openapi.json": {
            "get": {
                "operationId": "get_openapi_json",
                "summary": "This document",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        }
    }
    for route in routes:
        paths.setdefault(f"{PREFIX}{route.path}", {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "devid admin API",
            "version": __version__,
            "description": "Device identity PKI administration: CAs, devices, certificates, audit "
            "events, API tokens and the fleet registry. Authenticate with `Authorization: Bearer "
            "<token>` (`devid api-token create`). Lists are keyset-paged: pass a page's `next` as "
            "`after` for the following page; `next` is null on the last page.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
