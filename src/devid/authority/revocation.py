"""Revocation: one certificate, a device, a production lot, a model, or every device under a
manufacturer CA, in one audited transaction.

A revocation is set-based SQL (a handful of statements, whatever the count): 100,000 devices are
revoked, their certificates marked and every change announced on the outbox in seconds. Each CA
whose certificates change gets its `revocation_gen` bumped in the same transaction and every
changed certificate is stamped with it, so CRLs, deltas, OCSP caches and filters learn exactly
what changed since the generation they were built at.

Rules: a revoked device is final (REVOKED), except under `certificateHold`, which suspends the
device (SUSPENDED) and can be lifted by `unrevoke`; nothing else can. `keyCompromise` of a
device's certificate revokes the device, so its renewal, re-enrollment and session tokens stop
too: a key that leaked from a device says nothing good about the device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from devid.authority.core import Authority
from devid.errors import ConflictError, NotFoundError, PolicyError
from devid.pki.reasons import Reason
from devid.pki.serials import parse_serial, serial_hex
from devid.store import audit, outbox
from devid.store.engine import writing
from devid.store.models import cas, certificates, devices, events, manufacturers, revocations
from devid.store.states import CertificateStatus, DeviceState

MAX_NOTE = 1000
_LIVE = (CertificateStatus.VALID, CertificateStatus.SUPERSEDED)


class Selector(StrEnum):
    """What a revocation names."""

    SERIAL = "serial"
    DEVICE = "device"
    LOT = "lot"
    MODEL = "model"
    MANUFACTURER = "manufacturer"


@dataclass(frozen=True)
class RevokeRequest:
    selector: Selector
    value: str
    reason: Reason
    note: str = ""
    #: Count what would be revoked; change nothing.
    dry_run: bool = False
    #: For a device selector: the device version the caller read (an API edit); refused if it moved.
    expected_version: int | None = None


@dataclass(frozen=True)
class RevocationResult:
    """What a revocation (or the lifting of a hold) changed, or with `dry_run` would change."""

    certificates: int
    devices: int
    dry_run: bool
    #: The `revocations` row; None for a dry run or a lifted hold.
    id: int | None = None
    #: Names of the CAs whose status data changed (their CRLs and filters are rebuilt).
    cas: tuple[str, ...] = ()


def revoke(authority: Authority, request: RevokeRequest, actor: str) -> RevocationResult:
    """Revoke what `request` selects (see the module's rules). Refuses, changing nothing:
    `removeFromCRL` as a reason, a note over MAX_NOTE characters, a selector that matches nothing
    (NotFoundError `revocation-no-match`), and one whose every match is already revoked
    (ConflictError `already-revoked`)."""
    if request.reason is Reason.REMOVE_FROM_CRL:
        raise PolicyError(
            "revocation-reason", "removeFromCRL is not a reason to revoke: use `devid unrevoke`"
        )
    if len(request.note) > MAX_NOTE:
        raise PolicyError("revocation-note", f"the note is longer than {MAX_NOTE} characters")
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        if request.selector is Selector.SERIAL:
            cert = _certificate(conn, request.value)
            if request.reason is Reason.KEY_COMPROMISE and cert.device_id is not None:
                match: ColumnElement[bool] = devices.c.id == cert.device_id
                return _revoke_devices(authority, conn, request, match, now, actor)
            return _revoke_certificate(authority, conn, request, cert, now, actor)
        return _revoke_devices(authority, conn, request, _device_match(conn, request), now, actor)


def unrevoke(
    authority: Authority, selector: Selector, value: str, actor: str, *, dry_run: bool = False
) -> RevocationResult:
    """Lift a `certificateHold`: the certificates get back the status they had, their devices
    become ACTIVE again, and the next delta CRLs list them as removeFromCRL. Nothing else can be
    lifted (PolicyError `not-on-hold`)."""
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        if selector is Selector.SERIAL:
            cert = _certificate(conn, value)
            if cert.status != CertificateStatus.REVOKED or cert.reason != Reason.CERTIFICATE_HOLD:
                raise PolicyError(
                    "not-on-hold", f"certificate {value} is {cert.status}: only certificateHold can be lifted"
                )
            if cert.device_state == DeviceState.SUSPENDED:
                raise PolicyError(
                    "device-on-hold",
                    f"certificate {value} is held with its device: lift the device's hold "
                    f"(`devid unrevoke --device {cert.device_serial}`)",
                )
            if dry_run:
                return RevocationResult(1, 0, True)
            where = certificates.c.id == cert.id
            names = _lift(conn, where, now, [cert.issuer_id])
            audit.append(conn, [_audit("revocation.lift", selector, value, actor, 1, 0)], now)
            return RevocationResult(1, 0, False, cas=names)
        match = _device_match(conn, RevokeRequest(selector, value, Reason.CERTIFICATE_HOLD))
        suspended = and_(match, devices.c.state == DeviceState.SUSPENDED)
        matched, held = conn.execute(
            select(func.count(), func.count(case((devices.c.state == DeviceState.SUSPENDED, 1)))).where(match)
        ).one()
        if not matched:
            raise NotFoundError(
                "revocation-no-match", f"no device matches {selector} {value!r}: nothing lifted"
            )
        if not held:
            raise PolicyError(
                "not-on-hold", f"no device selected by {selector} {value!r} is on hold (certificateHold)"
            )
        held_certs = and_(
            certificates.c.device_id.in_(select(devices.c.id).where(suspended)),
            certificates.c.status == CertificateStatus.REVOKED,
            certificates.c.reason == Reason.CERTIFICATE_HOLD,
        )
        count = conn.execute(select(func.count()).where(held_certs)).scalar_one()
        if dry_run:
            return RevocationResult(count, held, True)
        issuers = [
            row[0] for row in conn.execute(select(certificates.c.issuer_id).where(held_certs).distinct())
        ]
        names = _lift(conn, held_certs, now, issuers)
        _announce_devices(conn, suspended, "device.unrevoked", {"state": str(DeviceState.ACTIVE)}, now)
        conn.execute(
            update(devices)
            .where(suspended)
            .values(state=DeviceState.ACTIVE, updated_at=now, version=devices.c.version + 1)
        )
        audit.append(conn, [_audit("revocation.lift", selector, value, actor, count, held)], now)
        return RevocationResult(count, held, False, cas=names)


# --- selection ----------------------------------------------------------------------------------


def _certificate(conn: Connection, text: str) -> Any:
    """The one certificate with this serial (under any of devid's CAs), with its device."""
    serial = serial_hex(parse_serial(text))
    rows = conn.execute(
        select(
            certificates,
            cas.c.name.label("issuer"),
            devices.c.serial.label("device_serial"),
            devices.c.state.label("device_state"),
        )
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .outerjoin(devices, devices.c.id == certificates.c.device_id)
        .where(certificates.c.serial == serial)
    ).all()
    if not rows:
        raise NotFoundError("unknown-certificate", f"no certificate with serial {serial}")
    if len(rows) > 1:
        raise ConflictError("ambiguous-serial", f"serial {serial} was issued by several CAs")
    return rows[0]


def _device_match(conn: Connection, request: RevokeRequest) -> ColumnElement[bool]:
    """The devices a device, lot, model or manufacturer selector names."""
    value = request.value
    if request.selector is Selector.DEVICE:
        return devices.c.serial == value
    if request.selector is Selector.LOT:
        return devices.c.lot == value
    if request.selector is Selector.MODEL:
        return devices.c.model == value
    maker: int | None = conn.execute(select(manufacturers.c.id).where(manufacturers.c.name == value)).scalar()
    if maker is not None:
        return devices.c.manufacturer_id == maker
    own = conn.execute(select(cas.c.id).where(cas.c.name == value)).scalar()
    if own is None:
        raise NotFoundError(
            "unknown-manufacturer", f"no registered manufacturer CA and no CA of devid named {value!r}"
        )
    # devid's own manufacturing CA: the devices holding a certificate it issued.
    return devices.c.id.in_(select(certificates.c.device_id).where(certificates.c.issuer_id == own))


def _revocable(reason: Reason) -> ColumnElement[bool]:
    """Certificates a revocation for `reason` changes: live ones, and (for a final reason) those
    on hold, which RFC 5280 lets a CA revoke for good."""
    live = certificates.c.status.in_(_LIVE)
    if reason is Reason.CERTIFICATE_HOLD:
        return live
    on_hold = and_(
        certificates.c.status == CertificateStatus.REVOKED, certificates.c.reason == Reason.CERTIFICATE_HOLD
    )
    return or_(live, on_hold)


# --- changes ------------------------------------------------------------------------------------


def _revoke_devices(
    authority: Authority,
    conn: Connection,
    request: RevokeRequest,
    match: ColumnElement[bool],
    now: datetime,
    actor: str,
) -> RevocationResult:
    hold = request.reason is Reason.CERTIFICATE_HOLD
    final = (DeviceState.REVOKED, DeviceState.SUSPENDED) if hold else (DeviceState.REVOKED,)
    # Counted and changed in SQL, never fetched: a lot of 100,000 devices is a few statements.
    live = and_(match, devices.c.state.not_in(final))
    selected, targets = conn.execute(
        select(func.count(), func.count(case((devices.c.state.not_in(final), 1)))).where(match)
    ).one()
    if request.expected_version is not None:
        versions = conn.execute(select(devices.c.serial, devices.c.version).where(match)).all()
        stale = [row for row in versions if row.version != request.expected_version]
        if stale:
            raise ConflictError(
                "stale-version",
                f"device {stale[0].serial!r} changed since version {request.expected_version} "
                f"(now {stale[0].version})",
            )
    if not selected:
        raise NotFoundError(
            "revocation-no-match", f"no device matches {request.selector} {request.value!r}: nothing revoked"
        )
    if not targets:
        raise ConflictError(
            "already-revoked",
            f"every device selected by {request.selector} {request.value!r} is already "
            f"{' or '.join(final)}: nothing changed",
        )
    certs = and_(certificates.c.device_id.in_(select(devices.c.id).where(live)), _revocable(request.reason))
    count = conn.execute(select(func.count()).where(certs)).scalar_one()
    if request.dry_run:
        return RevocationResult(count, targets, True)
    issuers = [row[0] for row in conn.execute(select(certificates.c.issuer_id).where(certs).distinct())]
    revocation_id = _record(conn, request, now, actor, count, targets)
    names = _mark_revoked(conn, certs, request.reason, revocation_id, now, issuers)
    state = DeviceState.SUSPENDED if hold else DeviceState.REVOKED
    fields: dict[str, str | int] = {
        "reason": request.reason.rfc_name,
        "revocation": revocation_id,
        "state": str(state),
    }
    _announce_devices(conn, live, "device.revoked", fields, now)
    conn.execute(
        update(devices).where(live).values(state=state, updated_at=now, version=devices.c.version + 1)
    )
    _announce_certificates(conn, revocation_id, request.reason, now)
    audit.append(
        conn,
        [
            _audit(
                "revocation",
                request.selector,
                request.value,
                actor,
                count,
                targets,
                request,
                revocation_id,
            )
        ],
        now,
    )
    return RevocationResult(count, targets, False, revocation_id, names)


def _revoke_certificate(
    authority: Authority, conn: Connection, request: RevokeRequest, cert: Any, now: datetime, actor: str
) -> RevocationResult:
    on_hold = cert.status == CertificateStatus.REVOKED and cert.reason == Reason.CERTIFICATE_HOLD
    if cert.status not in _LIVE and not (on_hold and request.reason is not Reason.CERTIFICATE_HOLD):
        raise ConflictError(
            "already-revoked", f"certificate {cert.serial} is already {cert.status}: nothing changed"
        )
    if request.dry_run:
        return RevocationResult(1, 0, True)
    revocation_id = _record(conn, request, now, actor, 1, 0)
    names = _mark_revoked(
        conn, certificates.c.id == cert.id, request.reason, revocation_id, now, [cert.issuer_id]
    )
    _announce_certificates(conn, revocation_id, request.reason, now)
    audit.append(
        conn, [_audit("revocation", request.selector, cert.serial, actor, 1, 0, request, revocation_id)], now
    )
    return RevocationResult(1, 0, False, revocation_id, names)


def _bump(conn: Connection, issuer_ids: Sequence[int]) -> tuple[str, ...]:
    """Move the generation of each CA whose status data changes; their names."""
    if not issuer_ids:
        return ()
    conn.execute(update(cas).where(cas.c.id.in_(issuer_ids)).values(revocation_gen=cas.c.revocation_gen + 1))
    return tuple(
        conn.execute(select(cas.c.name).where(cas.c.id.in_(issuer_ids)).order_by(cas.c.id)).scalars()
    )


#: The generation of a certificate's issuer, read inside the UPDATE after `_bump`.
_ISSUER_GEN = select(cas.c.revocation_gen).where(cas.c.id == certificates.c.issuer_id).scalar_subquery()


def _mark_revoked(
    conn: Connection,
    where: ColumnElement[bool],
    reason: Reason,
    revocation_id: int,
    now: datetime,
    issuer_ids: Sequence[int],
) -> tuple[str, ...]:
    names = _bump(conn, issuer_ids)
    conn.execute(
        update(certificates)
        .where(where)
        .values(
            # A certificate on hold keeps the status it had before the hold.
            held_status=case(
                (certificates.c.status.in_(_LIVE), certificates.c.status), else_=certificates.c.held_status
            ),
            status=CertificateStatus.REVOKED,
            reason=int(reason),
            revoked_at=now,
            revocation_id=revocation_id,
            status_gen=_ISSUER_GEN,
        )
    )
    return names


def _lift(
    conn: Connection, where: ColumnElement[bool], now: datetime, issuer_ids: Sequence[int]
) -> tuple[str, ...]:
    names = _bump(conn, issuer_ids)
    # Announced first: `where` selects the certificates by the status the update changes.
    payload = (
        literal(f'{{"at": "{now.isoformat()}", "issuer": "')
        + cas.c.name
        + literal('", "serial": "')
        + certificates.c.serial
        + literal('", "subject": "')
        + certificates.c.serial
        + literal('", "type": "certificate.unrevoked"}')
    )
    outbox.emit_from(
        conn,
        select(
            literal(now, type_=events.c.at.type),
            literal("certificate.unrevoked"),
            certificates.c.serial,
            payload,
        )
        .select_from(certificates)
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .where(where)
        .order_by(certificates.c.id),
    )
    conn.execute(
        update(certificates)
        .where(where)
        .values(
            status=func.coalesce(certificates.c.held_status, CertificateStatus.VALID),
            held_status=None,
            reason=int(Reason.REMOVE_FROM_CRL),
            revoked_at=now,
            status_gen=_ISSUER_GEN,
        )
    )
    return names


def _announce_devices(
    conn: Connection, which: ColumnElement[bool], type_: str, fields: dict[str, str | int], now: datetime
) -> None:
    """One `type_` event per device `which` selects, built in SQL like the certificates'. `fields`
    are constants whose names sort between "at" and "subject" (the JSON is in sorted-key order)."""
    constant = "".join(f'"{name}": {json.dumps(value)}, ' for name, value in sorted(fields.items()))
    payload = (
        literal(f'{{"at": "{now.isoformat()}", {constant}"subject": "')
        + devices.c.serial
        + literal(f'", "type": "{type_}"}}')
    )
    query = (
        select(literal(now, type_=events.c.at.type), literal(type_), devices.c.serial, payload)
        .where(which)
        .order_by(devices.c.id)
    )
    outbox.emit_from(conn, query)


def _announce_certificates(conn: Connection, revocation_id: int, reason: Reason, now: datetime) -> None:
    """One `certificate.revoked` event per certificate of this revocation, built in SQL. The JSON
    is written by hand (as `json.dumps(..., sort_keys=True)` would): every value is a hex serial,
    a CA name, a device serial (letters, digits and `.:-`) or a constant, none needing escapes."""
    stamp = now.isoformat()

    def text(value: str) -> Any:
        return literal(value)

    device = func.coalesce(text('"') + devices.c.serial + text('"'), text("null"))
    payload = (
        text(f'{{"at": "{stamp}", "device": ')
        + device
        + text(', "issuer": "')
        + cas.c.name
        + text(f'", "reason": "{reason.rfc_name}", "revocation": {revocation_id}, "serial": "')
        + certificates.c.serial
        + text('", "subject": "')
        + certificates.c.serial
        + text('", "type": "certificate.revoked"}')
    )
    query = (
        select(
            literal(now, type_=events.c.at.type),
            text("certificate.revoked"),
            certificates.c.serial,
            payload,
        )
        .select_from(certificates)
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .outerjoin(devices, devices.c.id == certificates.c.device_id)
        .where(certificates.c.revocation_id == revocation_id)
        .order_by(certificates.c.id)
    )
    outbox.emit_from(conn, query)


def _record(
    conn: Connection, request: RevokeRequest, now: datetime, actor: str, certs: int, devs: int
) -> int:
    row = conn.execute(
        insert(revocations)
        .values(
            at=now,
            actor=actor,
            selector=request.selector.value,
            value=request.value,
            reason=int(request.reason),
            note=request.note,
            certificates=certs,
            devices=devs,
        )
        .returning(revocations.c.id)
    ).scalar_one()
    return int(row)


def _audit(
    action: str,
    selector: Selector,
    value: str,
    actor: str,
    certs: int,
    devs: int,
    request: RevokeRequest | None = None,
    revocation_id: int | None = None,
) -> audit.Event:
    detail: dict[str, Any] = {"selector": selector.value, "certificates": certs, "devices": devs}
    if request is not None:
        detail.update(reason=request.reason.rfc_name, note=request.note, revocation=revocation_id)
    return audit.Event(action, f"{selector.value}:{value}", actor, "ok", detail)
