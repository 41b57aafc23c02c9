"""Revocations: revoke a certificate, a device, a lot, a model or a manufacturer's devices; lift a
certificateHold; list and show what was revoked, newest first.

A revocation answers 201 with the `revocations` record it made, a dry run 200 with the counts it
would change. Refusals change nothing: a selector that matches nothing (or a serial that is not
one) is 404, one whose every match is already revoked 409, lifting what is not on hold 403 (a
refusal by policy, as elsewhere in the API).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from devid.api.routes import (
    AFTER,
    LIMIT,
    MAX_CURSOR,
    STRING,
    TIME,
    Call,
    Param,
    Reply,
    Route,
    nullable,
    obj,
    page,
    page_of,
)
from devid.authority.revocation import MAX_NOTE, RevocationResult, RevokeRequest, Selector, revoke, unrevoke
from devid.authority.roles import Permission
from devid.errors import NotFoundError, PolicyError
from devid.pki.reasons import Reason
from devid.pki.serials import parse_serial
from devid.store.engine import reading
from devid.store.models import revocations

SELECTOR: dict[str, Any] = {"type": "string", "enum": [s.value for s in Selector]}
REASON: dict[str, Any] = {
    "type": "string",
    "enum": [r.rfc_name for r in Reason if r is not Reason.REMOVE_FROM_CRL],
}
VALUE: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "description": "a certificate serial (hex), device serial, lot, model, or manufacturer CA name",
}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
DRY_RUN: dict[str, Any] = {"type": "boolean", "default": False, "description": "count only; change nothing"}
REVOCATION = obj(
    {
        "id": {"type": "integer", "minimum": 1},
        "at": TIME,
        "actor": STRING,
        "selector": SELECTOR,
        "value": STRING,
        "reason": STRING,
        "note": STRING,
        "certificates": COUNT,
        "devices": COUNT,
    }
)
RESULT = obj(
    {
        "revocation": nullable(REVOCATION),
        "certificates": COUNT,
        "devices": COUNT,
        "dry_run": {"type": "boolean"},
        "cas": {"type": "array", "items": STRING, "description": "CAs whose CRLs and filters change"},
    }
)
REVOKE = obj(
    {
        "selector": SELECTOR,
        "value": VALUE,
        "reason": {**REASON, "default": Reason.UNSPECIFIED.rfc_name},
        "note": {"type": "string", "maxLength": MAX_NOTE, "description": "why, for the audit log"},
        "dry_run": DRY_RUN,
    },
    optional=["reason", "note", "dry_run"],
)
LIFT = obj({"selector": SELECTOR, "value": VALUE, "dry_run": DRY_RUN}, optional=["dry_run"])
ID = Param("id", {"type": "integer", "minimum": 1, "maximum": MAX_CURSOR}, "revocation id")
_REASONS = {r.rfc_name: r for r in Reason}


def revocation_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "selector": row.selector,
        "value": row.value,
        "reason": Reason(row.reason).rfc_name,
        "note": row.note,
        "certificates": row.certificates,
        "devices": row.devices,
    }


def _selected(body: dict[str, Any]) -> tuple[Selector, str]:
    """The selector and value of a body. `value` is any text whatever the selector (the schema cannot
    tie its syntax to the selector), so a serial that is not a positive hex number names no
    certificate (404), like any other value that matches nothing."""
    selector, value = Selector(body["selector"]), body["value"]
    if selector is Selector.SERIAL:
        try:
            parse_serial(value)
        except PolicyError as exc:
            message = f"no certificate with serial {value!r}: {exc.message}"
            raise NotFoundError("unknown-certificate", message) from None
    return selector, value


def _find(call: Call, revocation_id: int) -> dict[str, Any]:
    with reading(call.authority.engine) as conn:
        row = conn.execute(select(revocations).where(revocations.c.id == revocation_id)).first()
    if row is None:
        raise NotFoundError("unknown-revocation", f"no revocation with id {revocation_id}")
    return revocation_json(row)


def _result(call: Call, result: RevocationResult) -> dict[str, Any]:
    return {
        "revocation": _find(call, result.id) if result.id is not None else None,
        "certificates": result.certificates,
        "devices": result.devices,
        "dry_run": result.dry_run,
        "cas": list(result.cas),
    }


def create_revocation(call: Call) -> Reply:
    """Revoke what the selector names, in one audited transaction: 201 with the record, or 200 for
    a dry run. keyCompromise of a device's certificate revokes the device; certificateHold
    suspends the devices until lifted."""
    selector, value = _selected(call.body)
    request = RevokeRequest(
        selector,
        value,
        _REASONS[call.body.get("reason", Reason.UNSPECIFIED.rfc_name)],
        call.body.get("note", ""),
        call.body.get("dry_run", False),
    )
    result = revoke(call.authority, request, call.actor)
    return Reply(_result(call, result), 200 if result.dry_run else 201)


def lift_hold(call: Call) -> dict[str, Any]:
    """Lift a certificateHold (nothing else can be lifted): the certificates are good again and
    their devices ACTIVE."""
    selector, value = _selected(call.body)
    dry_run = call.body.get("dry_run", False)
    return _result(call, unrevoke(call.authority, selector, value, call.actor, dry_run=dry_run))


def list_revocations(call: Call) -> dict[str, Any]:
    """Revocations, newest first; `after` is the `next` of the previous page."""
    limit, after = call.query["limit"], call.query.get("after")
    query = select(revocations).order_by(revocations.c.id.desc()).limit(limit)
    if after is not None:
        query = query.where(revocations.c.id < after)
    with reading(call.authority.engine) as conn:
        rows = conn.execute(query).all()
    return page(rows, revocation_json, limit, lambda row: row.id)


def get_revocation(call: Call) -> dict[str, Any]:
    """One revocation: who revoked what, why, and how many certificates and devices."""
    return _find(call, call.path["id"])


W, R = Permission.DEVICES_WRITE, Permission.DEVICES_READ
ROUTES = [
    Route(
        "POST",
        "/revocations",
        W,
        "Revoke certificates or devices",
        create_revocation,
        RESULT,
        status=201,
        body=REVOKE,
        conflicts=True,
        not_found=True,
        also=(200, "a dry run: what would be revoked; nothing changed"),
    ),
    Route(
        "POST",
        "/revocations/lift",
        W,
        "Lift a certificateHold",
        lift_hold,
        RESULT,
        body=LIFT,
        conflicts=True,
        not_found=True,
    ),
    Route(
        "GET",
        "/revocations",
        R,
        "List revocations",
        list_revocations,
        page_of(REVOCATION),
        query=[AFTER, LIMIT],
    ),
    Route("GET", "/revocations/{id}", R, "Show a revocation", get_revocation, REVOCATION, path_params=[ID]),
]
