"""Enrollment groups (`/groups`) and individual enrollments (`/enrollments`): one route set made
for each kind, since both carry the same settings and differ only in how they attest devices
(a group by signing certificates, an individual enrollment by device serial and optional pin).

A PATCH changes only the fields it names; the rest keep their current values. It is safe against
concurrent edits because the change applies only at the version the client read (409 otherwise).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from devid.api.routes import (
    LIMIT,
    MAYBE_STRING,
    NAME_AFTER,
    NAME_PATH,
    STRING,
    VERSION_SCHEMA,
    Call,
    Reply,
    Route,
    nullable,
    obj,
    page_by_name,
    page_of,
    versioned,
)
from devid.authority.policy import RenewalPolicy
from devid.authority.roles import Permission
from devid.registry import enrollments
from devid.registry.allocation import Allocation
from devid.registry.enrollments import Kind, Reprovision, Settings
from devid.registry.hubs import NAME as NAME_RE
from devid.store.engine import reading

BOOL: dict[str, Any] = {"type": "boolean"}
PEM: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 65536, "description": "PEM"}
POLICY: dict[str, Any] = {"type": ["string", "null"], "enum": [*(p.value for p in RenewalPolicy), None]}
SETTINGS: dict[str, dict[str, Any]] = {
    "policy": POLICY,
    "lifetime_hours": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 24 * 365 * 30},
    "allocation": {"type": "string", "enum": [a.value for a in Allocation]},
    "hubs": {"type": "array", "items": {"type": "string", "pattern": NAME_RE.pattern}, "maxItems": 256},
    "webhook_url": nullable({"type": "string", "maxLength": 512}),
    "reprovision": {"type": "string", "enum": [r.value for r in Reprovision]},
    "properties": {"type": "object"},
}
_SHOWN = {
    "kind": STRING,
    "name": STRING,
    "enabled": BOOL,
    "version": {"type": "integer"},
    **SETTINGS,
    "policy": MAYBE_STRING,
}
_SIGNERS = {
    "type": "array",
    "items": obj({"subject": STRING, "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}),
}
SHOWN = {
    Kind.GROUP: obj({**_SHOWN, "signing_certificates": _SIGNERS}),
    Kind.INDIVIDUAL: obj({**_SHOWN, "certificate_fingerprint": MAYBE_STRING}),
}
_ATTEST = {
    Kind.GROUP: {"signing_certificate": PEM, "secondary_certificate": PEM},
    Kind.INDIVIDUAL: {"device_certificate": PEM},
}
NEW = {
    kind: obj(
        {"name": {"type": "string", "pattern": NAME_RE.pattern}, **attest, **SETTINGS},
        optional=[*SETTINGS, *(k for k in attest if k != "signing_certificate")],
    )
    for kind, attest in _ATTEST.items()
}
CHANGE = {
    kind: obj(
        {
            **SETTINGS,
            "enabled": BOOL,
            **({"secondary_certificate": PEM} if kind is Kind.GROUP else {}),
            "version": VERSION_SCHEMA,
        },
        optional=[*SETTINGS, "enabled", "secondary_certificate", "version"],
    )
    for kind in Kind
}


def _settings(name: str, body: dict[str, Any], current: Settings) -> Settings:
    """`current` with what `body` names replaced."""
    policy = current.policy
    if "policy" in body or "lifetime_hours" in body:
        kind = body.get("policy", current.policy.policy.value if current.policy else None)
        hours = body.get("lifetime_hours")
        policy = enrollments.make_policy(name, kind, timedelta(hours=hours) if hours else None)
    return replace(
        current,
        policy=policy,
        allocation=Allocation(body.get("allocation", current.allocation)),
        hubs=tuple(body.get("hubs", current.hubs)),
        webhook_url=body.get("webhook_url", current.webhook_url),
        reprovision=Reprovision(body.get("reprovision", current.reprovision)),
        properties=body.get("properties", current.properties),
    )


def _pem(body: dict[str, Any], key: str) -> bytes | None:
    return body[key].encode() if key in body else None


def _reply(info: enrollments.EnrollmentInfo, status: int | None = None) -> Reply:
    return versioned(info.to_json(), info.version, status)


def routes_for(kind: Kind, base: str, what: str) -> list[Route]:
    """List, show, create and change enrollments of one kind under `base`."""

    def list_(call: Call) -> dict[str, Any]:
        with reading(call.authority.engine) as conn:
            return page_by_name([e.to_json() for e in enrollments.list_all(conn, kind)], call)

    def show(call: Call) -> Reply:
        with reading(call.authority.engine) as conn:
            return _reply(enrollments.get(conn, kind, call.path["name"]))

    def create(call: Call) -> Reply:
        name = call.body["name"]
        info = enrollments.create(
            call.authority,
            kind,
            name,
            _settings(f"{kind.value}:{name}", call.body, Settings()),
            signing_cert=_pem(call.body, "signing_certificate"),
            secondary_cert=_pem(call.body, "secondary_certificate"),
            device_cert=_pem(call.body, "device_certificate"),
            actor=call.actor,
        )
        return _reply(info, 201)

    def change(call: Call) -> Reply:
        name, body = call.path["name"], call.body
        settings = None
        if set(body) & set(SETTINGS):
            with reading(call.authority.engine) as conn:
                current = enrollments.get(conn, kind, name).settings
            settings = _settings(f"{kind.value}:{name}", body, current)
        info = enrollments.update(
            call.authority,
            kind,
            name,
            settings=settings,
            enabled=body.get("enabled"),
            secondary_cert=_pem(body, "secondary_certificate"),
            version=call.version,
            actor=call.actor,
        )
        return _reply(info)

    list_.__doc__ = f"{what.capitalize()}s in name order."
    show.__doc__ = f"One {what}; its ETag is its version."
    create.__doc__ = f"A new {what}."
    change.__doc__ = (
        f"Change a {what}'s settings, or enable/disable it (disabling blocks its devices at once)."
    )
    R, W, shown = Permission.REGISTRY_READ, Permission.REGISTRY_WRITE, SHOWN[kind]
    return [
        Route("GET", base, R, f"List {what}s", list_, page_of(shown), query=[NAME_AFTER, LIMIT]),
        Route("GET", f"{base}/{{name}}", R, f"Show a {what}", show, shown, path_params=[NAME_PATH]),
        Route("POST", base, W, f"Create a {what}", create, shown, status=201, body=NEW[kind], conflicts=True),
        Route(
            "PATCH",
            f"{base}/{{name}}",
            W,
            f"Change a {what}",
            change,
            shown,
            path_params=[NAME_PATH],
            body=CHANGE[kind],
            versioned=True,
        ),
    ]


ROUTES = [
    *routes_for(Kind.GROUP, "/groups", "enrollment group"),
    *routes_for(Kind.INDIVIDUAL, "/enrollments", "individual enrollment"),
]
