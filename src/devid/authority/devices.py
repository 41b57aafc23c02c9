"""Device standing: states, single-use enrollment secrets and enrollment approval.

These decide whether a device may receive a certificate; the authority consults them, so they
live beside it. Every change is audited in the transaction that makes it.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from devid.authority import device_records
from devid.authority.core import Authority
from devid.authority.credential_key import CredentialKey, Purpose, legacy_digest
from devid.authority.requests import NewDevice, check_device_serial
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.errors import DevidError, NotFoundError, PolicyError
from devid.pki.reasons import Reason
from devid.store import audit, repo
from devid.store.engine import writing
from devid.store.states import DeviceState

SECRET_TTL = timedelta(days=7)


def device_state(text: str) -> DeviceState:
    """The state named `text`; PolicyError `device-state` naming the known ones otherwise."""
    try:
        return DeviceState(text)
    except ValueError:
        raise PolicyError(
            "device-state", f"unknown device state {text!r}; known: {', '.join(DeviceState)}"
        ) from None


def _device(conn: Connection, serial: str) -> Any:
    row = repo.device_by_serial(conn, serial)
    if row is None:
        raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
    return row


def set_state(
    authority: Authority,
    serial: str,
    state: str,
    actor: str,
    reason: str = "",
    version: int | None = None,
    from_states: tuple[DeviceState, ...] | None = None,
) -> None:
    """Change a device's state (ACTIVE, INACTIVE, ...): INACTIVE blocks enrollment and renewal at once.
    With `version`, refuse (ConflictError) if the device changed since that version was read; with
    `from_states`, refuse (PolicyError) a device in any other state. Either leaves it as it was.
    A REVOKED device stays REVOKED: revocation is final. Setting REVOKED revokes the device's
    certificates (reason unspecified, `devid.authority.revocation`); SUSPENDED is a hold, set and
    lifted only by revocation."""
    new = device_state(state)
    if new is DeviceState.SUSPENDED:
        raise PolicyError(
            "device-state-transition",
            "a device is SUSPENDED by `devid revoke --reason certificateHold`, not by setting its state",
        )
    if new is DeviceState.REVOKED:
        request = RevokeRequest(Selector.DEVICE, serial, Reason.UNSPECIFIED, reason, expected_version=version)
        revoke(authority, request, actor)
        return
    with writing(authority.engine) as conn:
        device_records.change_state(
            conn,
            [serial],
            new,
            authority.clock.now(),
            actor,
            reason=reason,
            version=version,
            from_states=from_states,
        )


def add(authority: Authority, device: NewDevice, actor: str) -> None:
    """A device record with no certificate yet, ACTIVE: for a device that has no IDevID to register
    it (HTTP Basic enrollment with a secret from `create_enrollment_secret`)."""
    check_device_serial(device.serial)
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        authority._insert_devices(conn, [device], now)
        detail = {"model": device.model, "lot": device.lot}
        audit.append(conn, [audit.Event("device.create", device.serial, actor, "ok", detail)], now)


def create_enrollment_secret(
    authority: Authority, serial: str, actor: str, ttl: timedelta = SECRET_TTL
) -> str:
    """A new single-use secret for HTTP Basic EST enrollment (user = device serial). Shown once; the
    store keeps its MAC under the credential key, so making one needs the CA secret unlocked."""
    secret = secrets.token_urlsafe(24)
    mac = authority.credentials.mac(Purpose.ENROLLMENT_SECRET, secret)
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        device = _device(conn, serial)
        conn.execute(
            insert(repo.enrollment_secrets).values(
                device_id=device.id, secret_hash=mac, created_at=now, expires_at=now + ttl
            )
        )
        audit.append(
            conn,
            [audit.Event("device.enroll-secret", serial, actor, "ok", {"expires": (now + ttl).isoformat()})],
            now,
        )
    return secret


def usable_secret(
    conn: Connection,
    key: CredentialKey,
    serial: str,
    secret: str,
    now: datetime,
    wrong: type[DevidError] = PolicyError,
) -> Any:
    """The secret's row if it belongs to this device and is unused and unexpired; a wrong serial or
    secret raises `wrong` (code `enroll-secret`, or `enroll-secret-legacy` for one stored as a plain
    hash by an older devid), a spent or expired one PolicyError."""
    table = repo.enrollment_secrets
    device = repo.device_by_serial(conn, serial)
    mac = key.mac(Purpose.ENROLLMENT_SECRET, secret)
    row = conn.execute(select(table).where(table.c.secret_hash == mac)).first()
    if (
        row is None
        and conn.execute(select(table.c.id).where(table.c.secret_hash == legacy_digest(secret))).first()
    ):
        raise wrong(
            "enroll-secret-legacy",
            "this enrollment secret was stored as a plain hash by an older devid and is no longer "
            "accepted: make a new one with `devid device enroll-secret`",
        )
    if (
        device is None
        or row is None
        or not hmac.compare_digest(row.secret_hash, mac)
        or not hmac.compare_digest(str(row.device_id), str(device.id))
    ):
        raise wrong("enroll-secret", "wrong device serial or enrollment secret")
    if row.used_at is not None:
        raise PolicyError("enroll-secret-reused", "this enrollment secret was already used")
    if row.expires_at <= now:
        raise PolicyError("enroll-secret-expired", "this enrollment secret has expired")
    return row


def consume_enrollment_secret(authority: Authority, serial: str, secret: str) -> None:
    """Spend a secret: it must belong to this device, be unexpired and unused. Raises PolicyError
    `enroll-secret` (wrong, expired) or `enroll-secret-reused`."""
    now = authority.clock.now()
    table = repo.enrollment_secrets
    with writing(authority.engine) as conn:
        row = usable_secret(conn, authority.credentials, serial, secret, now)
        done = conn.execute(
            update(table).where(table.c.id == row.id, table.c.used_at.is_(None)).values(used_at=now)
        )
        if done.rowcount != 1:
            raise PolicyError("enroll-secret-reused", "this enrollment secret was already used")
        audit.append(conn, [audit.Event("device.enroll-secret-used", serial, "est", "ok")], now)


def approval_pending(authority: Authority, serial: str) -> bool:
    """For policies that hold enrollments: record the request; True while it awaits an operator."""
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        device = _device(conn, serial)
        if device.approved_at is not None:
            return False
        if device.approval_requested_at is None:
            conn.execute(
                update(repo.devices)
                .where(repo.devices.c.id == device.id)
                .values(approval_requested_at=now, updated_at=now)
            )
            audit.append(conn, [audit.Event("device.approval-requested", serial, "est", "ok")], now)
        return True


def approve(authority: Authority, serial: str, actor: str) -> None:
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        device = _device(conn, serial)
        conn.execute(
            update(repo.devices).where(repo.devices.c.id == device.id).values(approved_at=now, updated_at=now)
        )
        audit.append(conn, [audit.Event("device.approve", serial, actor, "ok")], now)
