"""Repository functions: the queries devid runs, each on an indexed column."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, func, select

# Re-exported: the tables other layers query through `repo`.
from devid.store.models import cas as cas
from devid.store.models import certificates as certificates
from devid.store.models import devices as devices
from devid.store.models import enrollment_secrets as enrollment_secrets
from devid.store.models import enrollments as _enrollments
from devid.store.models import hubs as _hubs
from devid.store.models import manufacturers as _manufacturers
from devid.store.states import CertificateStatus

# Request-path statements are built once with bound parameters: building a select per call costs
# five times what running it against an index does.
_DEVICE_STATES = select(devices.c.serial, devices.c.id, devices.c.state).where(
    devices.c.serial.in_(bindparam("serials", expanding=True))
)
_CERT_BY_FINGERPRINT = (
    select(certificates, devices.c.serial.label("device_serial"), devices.c.state.label("device_state"))
    .outerjoin(devices, devices.c.id == certificates.c.device_id)
    .where(certificates.c.fingerprint == bindparam("fp"))
)
_KEY_HOLDERS = (
    select(certificates.c.public_key_fingerprint, certificates.c.device_id)
    .where(certificates.c.public_key_fingerprint.in_(bindparam("fps", expanding=True)))
    .distinct()
)
_VALID_OF_DEVICES = select(
    certificates.c.fingerprint, certificates.c.device_id, certificates.c.profile
).where(
    certificates.c.device_id.in_(bindparam("ids", expanding=True)),
    certificates.c.status == CertificateStatus.VALID,
)
_DEVICE_BY_SERIAL = select(devices).where(devices.c.serial == bindparam("serial"))
_DEVICE_ON_HUB = select(devices.c.id).where(devices.c.hub_id == bindparam("hub_id")).limit(1)


def device_states(conn: Connection, serials: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Map device serials to (id, state) for the ones that exist (one indexed IN query per 500)."""
    wanted = list(dict.fromkeys(serials))
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = conn.execute(_DEVICE_STATES, {"serials": chunk})
        found.update((serial, (dev_id, state)) for serial, dev_id, state in rows)
    return found


def device_ids(conn: Connection, serials: Iterable[str]) -> dict[str, int]:
    return {serial: dev_id for serial, (dev_id, _) in device_states(conn, serials).items()}


def certificate_by_fingerprint(conn: Connection, fp: str) -> Row[Any] | None:
    return conn.execute(_CERT_BY_FINGERPRINT, {"fp": fp}).first()


def public_key_holders(conn: Connection, fingerprints: Sequence[str]) -> dict[str, set[int | None]]:
    """For each public-key fingerprint on record, the devices (None: no device) it is certified for."""
    found: dict[str, set[int | None]] = {}
    for start in range(0, len(fingerprints), 500):
        rows = conn.execute(_KEY_HOLDERS, {"fps": fingerprints[start : start + 500]})
        for fp, device_id in rows:
            found.setdefault(fp, set()).add(device_id)
    return found


def valid_certificates_of(conn: Connection, device_ids: Sequence[int]) -> list[tuple[str, int, str]]:
    """(fingerprint, device id, profile) of the valid certificates these devices hold."""
    found: list[tuple[str, int, str]] = []
    unique = list(dict.fromkeys(device_ids))
    for start in range(0, len(unique), 500):
        rows = conn.execute(_VALID_OF_DEVICES, {"ids": unique[start : start + 500]})
        found.extend((fp, device_id, profile) for fp, device_id, profile in rows)
    return found


def device_by_serial(conn: Connection, serial: str) -> Row[Any] | None:
    return conn.execute(_DEVICE_BY_SERIAL, {"serial": serial}).first()


#: A device with the names of what it came through: its manufacturer, enrollment and hub.
_DEVICE_VIEW = select(
    devices,
    _manufacturers.c.name.label("manufacturer"),
    _enrollments.c.kind.label("enrollment_kind"),
    _enrollments.c.name.label("enrollment_name"),
    _hubs.c.name.label("hub"),
).select_from(
    devices.outerjoin(_manufacturers, _manufacturers.c.id == devices.c.manufacturer_id)
    .outerjoin(_enrollments, _enrollments.c.id == devices.c.enrollment_id)
    .outerjoin(_hubs, _hubs.c.id == devices.c.hub_id)
)


def device_view(conn: Connection, serial: str) -> Row[Any] | None:
    """One device with its manufacturer, enrollment (kind and name) and hub names."""
    return conn.execute(_DEVICE_VIEW.where(devices.c.serial == serial)).first()


def list_devices(
    conn: Connection,
    *,
    state: str | None = None,
    hub: str | None = None,
    manufacturer: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> Sequence[Row[Any]]:
    """A page of devices in creation order (as `device_view`), optionally filtered.

    Each filter is on a devices column with a (column, id) index (a hub or manufacturer name is
    resolved to its id first), so a page reads its rows in index order and stops: no scan.
    """
    query = _DEVICE_VIEW.where(devices.c.id > after_id).order_by(devices.c.id).limit(limit)
    if state:
        query = query.where(devices.c.state == state)
    if hub is not None:
        query = query.where(devices.c.hub_id == _id_named(_hubs, hub))
    if manufacturer is not None:
        query = query.where(devices.c.manufacturer_id == _id_named(_manufacturers, manufacturer))
    return conn.execute(query).all()


def _id_named(table: Table, name: str) -> Any:
    return select(table.c.id).where(table.c.name == name).scalar_subquery()


def hub_in_use(conn: Connection, hub_id: int) -> bool:
    """Whether any device is allocated to the hub: one probe of the (hub_id, id) index, where a
    count would read every device of the hub."""
    return conn.execute(_DEVICE_ON_HUB, {"hub_id": hub_id}).first() is not None


def certificates_by_serial(conn: Connection, serial_hex: str) -> Sequence[Row[Any]]:
    """Certificates with this serial (normally one; serials are unique per issuer only)."""
    query = (
        select(certificates, cas.c.name.label("issuer_name"), devices.c.serial.label("device_serial"))
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .outerjoin(devices, devices.c.id == certificates.c.device_id)
        .where(certificates.c.serial == serial_hex)
    )
    return conn.execute(query).all()


def list_certificates(
    conn: Connection,
    *,
    device_serial: str | None = None,
    profile: str | None = None,
    expiring_before: datetime | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> Sequence[Any]:
    """A page of certificates in issue order (keyset paging on id: no OFFSET scans)."""
    query = (
        select(
            certificates.c.id,
            certificates.c.serial,
            certificates.c.profile,
            certificates.c.subject,
            certificates.c.not_before,
            certificates.c.not_after,
            certificates.c.status,
            certificates.c.fingerprint,
            cas.c.name.label("issuer_name"),
            devices.c.serial.label("device_serial"),
        )
        .join(cas, cas.c.id == certificates.c.issuer_id)
        .outerjoin(devices, devices.c.id == certificates.c.device_id)
        .where(certificates.c.id > after_id)
        .order_by(certificates.c.id)
        .limit(limit)
    )
    if device_serial is not None:
        query = query.where(devices.c.serial == device_serial)
    if profile is not None:
        query = query.where(certificates.c.profile == profile)
    if expiring_before is not None:
        query = query.where(certificates.c.not_after < expiring_before)
    rows: Sequence[Any] = conn.execute(query).all()
    return rows


def all_cas(conn: Connection) -> Sequence[Row[Any]]:
    return list(conn.execute(select(cas).order_by(cas.c.id)).all())


def count(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
