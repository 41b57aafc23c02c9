"""Onboarding: identify devices by their manufacturers' IDevIDs, admit them by enrollment, register
them just in time, and allocate them to hubs.

`Registry` implements `devid.authority.enroll.Onboarding`: the authority's enrollment rules call
it, so every front end (EST today) onboards the same way. It caches the registry (manufacturer
CAs, enrollments, hubs) and reloads it whenever the store's registry generation moved, which one
indexed read per request tells: a change made by any process is seen at once.

Writes happen only in `register`, after the request passed every check, so a refused request
changes no device or registry state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection, Row, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from devid.authority import device_records
from devid.authority.core import Authority
from devid.authority.credentials import Identity
from devid.authority.enroll import Admission
from devid.errors import CredentialRefused, PolicyError
from devid.pki.chain import issuer_among
from devid.pki.client_chain import load_client_certificate
from devid.pki.encoding import fingerprint
from devid.pki.keypolicy import p256_key_of
from devid.pki.profiles import ProfileName
from devid.registry import enrollments, generation, hubs, manufacturers
from devid.registry.allocation import AllocationFailed, Decision, allocate
from devid.registry.enrollments import EnrollmentInfo, Kind, Reprovision
from devid.registry.hubs import HubInfo
from devid.registry.manufacturers import ManufacturerInfo
from devid.store import audit, outbox, repo
from devid.store.engine import reading, writing
from devid.store.states import CertificateStatus, DeviceState, ManufacturerState

#: Longest chain walked from an IDevID up to a registered manufacturer CA.
MAX_CHAIN = 5


@dataclass(frozen=True)
class Snapshot:
    """The registry as of one generation."""

    generation: int
    manufacturers: tuple[ManufacturerInfo, ...]
    groups: tuple[EnrollmentInfo, ...]
    individuals: dict[str, EnrollmentInfo]
    enrollments: dict[int, EnrollmentInfo]
    hubs: dict[str, HubInfo]
    hub_ids: dict[int, str]

    def trust_anchors(self) -> list[x509.Certificate]:
        """What the TLS layer must accept client chains to: manufacturer CAs and group signing
        certificates (whatever their state: refusals come from the application, with a reason)."""
        out = [m.certificate for m in self.manufacturers]
        out += [c for g in self.groups for c in g.signing]
        return out

    def hubs_for(self, enrollment: EnrollmentInfo) -> list[HubInfo]:
        names = enrollment.settings.hubs or tuple(self.hubs)
        return [self.hubs[n] for n in names if n in self.hubs and self.hubs[n].enabled]


def _load(conn: Connection, gen: int) -> Snapshot:
    listed = enrollments.list_all(conn)
    hub_rows = conn.execute(hubs.hubs.select()).all()
    return Snapshot(
        gen,
        tuple(manufacturers.list_all(conn)),
        tuple(e for e in listed if e.kind is Kind.GROUP),
        {e.name: e for e in listed if e.kind is Kind.INDIVIDUAL},
        {e.id: e for e in listed},
        {r.name: HubInfo.from_row(r) for r in hub_rows},
        {r.id: r.name for r in hub_rows},
    )


def device_serial_of(cert: x509.Certificate) -> str:
    """The device's registration id: the IDevID subject's serialNumber (802.1AR), else its CN."""
    for oid in (x509.NameOID.SERIAL_NUMBER, x509.NameOID.COMMON_NAME):
        values = cert.subject.get_attributes_for_oid(oid)
        if len(values) == 1 and str(values[0].value).strip():
            return str(values[0].value)
    raise CredentialRefused(
        "client-cert-identity", "the IDevID subject has no serialNumber or common name to identify the device"
    )


class Registry:
    """The registry as one authority's enrollment rules consult it.

    The store's generation is read at most every `recheck` seconds (one read per request cost a
    sixth of an EST server's CPU): a change made elsewhere (another process or authority) is seen
    within that time, one made through this authority at once.
    """

    def __init__(self, authority: Authority, *, webhook_timeout: float = 2.0, recheck: float = 0.2) -> None:
        self.authority = authority
        self.webhook_timeout = webhook_timeout
        self.recheck = recheck
        self._snapshot: Snapshot | None = None
        self._checked = (-1.0, -1)  # (monotonic time, local changes) of the last store check
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """The cached registry, reloaded if any process changed it since."""
        checked_at, local = self._checked
        cached = self._snapshot
        now = time.monotonic()
        if (
            cached is not None
            and local == generation.local_changes(self.authority)
            and now - checked_at < self.recheck
        ):
            return cached
        self._checked = (now, generation.local_changes(self.authority))
        with reading(self.authority.engine) as conn:
            gen = generation.current(conn)
            cached = self._snapshot
            if cached is not None and cached.generation == gen:
                return cached
            fresh = _load(conn, gen)
        with self._lock:
            if self._snapshot is None or self._snapshot.generation < fresh.generation:
                self._snapshot = fresh
        return fresh

    def active(self) -> bool:
        snap = self.snapshot()
        return bool(snap.manufacturers or snap.enrollments)

    # --- identification (no writes) --------------------------------------------------------------

    def identify(self, der: bytes, chain: Sequence[bytes]) -> Identity:
        """The device behind an IDevID issued outside devid, chaining (through the certificates
        the client sent and the registry's own) to a registered manufacturer CA. The validity of
        every link is checked by `devid.authority.credentials.authenticate`, which calls this."""
        cert = load_client_certificate(der)
        snap = self.snapshot()
        anchors = {m.fingerprint: m for m in snap.manufacturers}
        pool = [m.certificate for m in snap.manufacturers]
        pool += [c for g in snap.groups for c in g.signing]
        pool += [load_client_certificate(d) for d in chain[1:]]
        path = [cert]
        manufacturer = None
        while manufacturer is None and len(path) <= MAX_CHAIN:
            parent = issuer_among(path[-1], pool)
            if parent is None:
                break
            path.append(parent)
            manufacturer = anchors.get(fingerprint(parent.public_bytes(_DER)))
        if manufacturer is None:
            raise CredentialRefused(
                "client-cert-unknown-issuer",
                "client certificate was not issued by this devid's CAs nor by any registered manufacturer CA",
            )
        if manufacturer.state != ManufacturerState.ACTIVE:
            raise PolicyError(
                "manufacturer-inactive",
                f"manufacturer {manufacturer.name!r} is {manufacturer.state}: its devices are not accepted",
            )
        try:
            p256_key_of(cert, "IDevID key", "client-cert-malformed")
        except PolicyError as exc:
            raise CredentialRefused("client-cert-key", exc.message) from None
        serial = device_serial_of(cert)
        fp = fingerprint(der)
        with reading(self.authority.engine) as conn:
            device = repo.device_by_serial(conn, serial)
        if device is not None:
            if device.manufacturer_id is None or device.idevid_fingerprint != fp:
                raise CredentialRefused(
                    "device-identity-conflict",
                    f"device {serial!r} is registered with a different IDevID: this certificate "
                    "is not its identity",
                )
            state, registered = device.state, True
        else:
            individual = snap.individuals.get(serial)
            if not manufacturer.auto_register and individual is None:
                raise PolicyError(
                    "device-not-registered",
                    f"device {serial!r} is not registered and manufacturer {manufacturer.name!r} does not "
                    "register devices just in time (--auto-register) nor has it an individual enrollment",
                )
            state = DeviceState.ACTIVE if manufacturer.auto_activate else DeviceState.PENDING_ACTIVATION
            registered = False
        return Identity(
            cert,
            der,
            fp,
            manufacturer.name,
            ProfileName.IDEVID,
            serial,
            state,
            CertificateStatus.VALID,
            chain=tuple(path[1:]),
            registered=registered,
        )

    def admit(self, client: Identity) -> Admission:
        """Which enrollment covers this device, refusing when it is disabled; its renewal policy
        and the device's current assignment. Reads only."""
        snap = self.snapshot()
        if not snap.enrollments:
            return Admission()
        with reading(self.authority.engine) as conn:
            device = repo.device_by_serial(conn, client.device_serial)
        enrollment = self._enrollment_for(snap, client, device)
        if enrollment is None:
            return Admission()
        if not enrollment.enabled:
            raise PolicyError(
                "enrollment-disabled",
                f"enrollment {enrollment.kind.value} {enrollment.name!r} is disabled: device "
                f"{client.device_serial!r} is not registered or renewed while it is",
            )
        assignment = _assignment(snap, device, enrollment, "unchanged") if device is not None else None
        return Admission(enrollment.settings.policy, assignment, enrollment.id)

    def _enrollment_for(
        self, snap: Snapshot, client: Identity, device: Row[Any] | None
    ) -> EnrollmentInfo | None:
        if client.profile is not ProfileName.IDEVID:
            # An operational certificate renews under the enrollment that registered the device.
            return (
                snap.enrollments.get(device.enrollment_id)
                if device is not None and device.enrollment_id
                else None
            )
        individual = snap.individuals.get(client.device_serial)
        if individual is not None:
            if (
                individual.certificate_fingerprint
                and individual.certificate_fingerprint != client.fingerprint
            ):
                raise PolicyError(
                    "enrollment-certificate-mismatch",
                    f"the individual enrollment of {client.device_serial!r} names a different IDevID",
                )
            return individual
        chain = [fingerprint(c.public_bytes(_DER)) for c in self._chain_of(client)]

        def depth(group: EnrollmentInfo) -> int:
            """Links between the device and the group's signing certificate (len(chain): none)."""
            return next((i for i, fp in enumerate(chain) if fp in group.signing_fingerprints), len(chain))

        # The most specific group (fewest links between device and signing certificate) wins.
        matches = [g for g in snap.groups if depth(g) < len(chain)]
        return min(matches, key=depth) if matches else None

    def _chain_of(self, client: Identity) -> tuple[x509.Certificate, ...]:
        if client.chain:
            return client.chain
        ca = self.authority.cas.get(client.issuer)
        if ca is None:
            return ()
        return (*self.authority.chain(ca.name), self.authority.root)

    # --- registration (writes) --------------------------------------------------------------------

    def register(
        self,
        client: Identity,
        admission: Admission,
        region: str | None = None,
        *,
        defer: bool = False,
    ) -> tuple[Identity, Admission]:
        """Register the device just in time (if new) and allocate it (if its enrollment asks and it
        has no current allocation there): audited, with outbox events, in one transaction.

        With `defer`, an ACTIVE device's writes are not made here but handed back as
        `admission.prepare`, for the authority to run in the transaction that records its
        certificate (one commit for both, and no registration without its certificate); the state
        and assignment returned are what those writes make. A device that must wait for activation
        is registered here and now: its registration is the point of the request.
        """
        snap = self.snapshot()
        enrollment = snap.enrollments.get(admission.enrollment_id) if admission.enrollment_id else None
        with reading(self.authority.engine) as conn:
            device = repo.device_by_serial(conn, client.device_serial)
        substatus = _reallocation(snap, device, enrollment)
        decision = None
        if enrollment is not None and substatus is not None:
            decision = self._decide(snap, client, enrollment, region)
        if client.registered and decision is None:
            return client, admission

        def write(conn: Connection, now: datetime) -> Row[Any]:
            row = device
            if not client.registered:
                # None: registered concurrently by another request; use that record.
                row = self._insert_device(conn, client, snap, now) or repo.device_by_serial(
                    conn, client.device_serial
                )
            assert row is not None
            if decision is not None and enrollment is not None and substatus is not None:
                row = self._allocate(conn, row, enrollment, decision, substatus, now)
            return row

        if defer and client.device_state == DeviceState.ACTIVE:
            planned = None
            if decision is not None and enrollment is not None and substatus is not None:
                planned = _planned(client.device_serial, device, enrollment, decision, substatus)

            def prepare(conn: Connection, now: datetime) -> None:
                write(conn, now)

            return replace(client, registered=True), replace(admission, assignment=planned, prepare=prepare)
        engine = self.authority.engine
        with writing(engine) as conn:
            device = write(conn, self.authority.clock.now())
        client = replace(client, device_state=device.state, registered=True)
        assignment = _assignment(snap, device, enrollment, substatus or "unchanged") if enrollment else None
        return client, replace(admission, assignment=assignment)

    def _decide(
        self, snap: Snapshot, client: Identity, enrollment: EnrollmentInfo, region: str | None
    ) -> Decision:
        settings = enrollment.settings
        registration = {
            "registration_id": client.device_serial,
            "manufacturer": client.issuer,
            "enrollment": f"{enrollment.kind.value}:{enrollment.name}",
            "certificate_fingerprint": client.fingerprint,
            "region": region,
            "properties": settings.properties,
        }
        try:
            return allocate(
                settings.allocation,
                client.device_serial,
                snap.hubs_for(enrollment),
                region=region,
                webhook_url=settings.webhook_url,
                registration=registration,
                timeout=self.webhook_timeout,
            )
        except AllocationFailed as exc:
            self.authority.record_refusal(exc, "device.allocate", client.device_serial, "registry")
            raise

    def _insert_device(
        self, conn: Connection, client: Identity, snap: Snapshot, now: datetime
    ) -> Row[Any] | None:
        manufacturer = next(m for m in snap.manufacturers if m.name == client.issuer)
        detail = {"manufacturer": manufacturer.name, "idevid": client.fingerprint}
        row = {
            "serial": client.device_serial,
            "state": client.device_state,
            "manufacturer_id": manufacturer.id,
            "idevid_fingerprint": client.fingerprint,
            "registered_at": now,
        }
        try:
            with conn.begin_nested():
                device_records.create(conn, [row], now, [detail])
        except IntegrityError:
            return None
        detail |= {"state": client.device_state}
        audit.append(conn, [audit.Event("device.register", client.device_serial, "jitr", "ok", detail)], now)
        return repo.device_by_serial(conn, client.device_serial)

    def _allocate(
        self,
        conn: Connection,
        device: Row[Any],
        enrollment: EnrollmentInfo,
        decision: Decision,
        substatus: str,
        now: datetime,
    ) -> Row[Any]:
        hub_id = conn.execute(_HUB_ID, {"name": decision.hub.name}).scalar_one_or_none()
        if hub_id is None:
            raise AllocationFailed("no-hub", f"hub {decision.hub.name!r} was removed while allocating")
        properties = _properties(device, enrollment, decision, substatus)
        conn.execute(
            update(repo.devices)
            .where(repo.devices.c.id == device.id)
            .values(
                enrollment_id=enrollment.id,
                hub_id=hub_id,
                properties=json.dumps(properties, sort_keys=True),
                updated_at=now,
                version=repo.devices.c.version + 1,
            )
        )
        detail = {
            "hub": decision.hub.name,
            "enrollment": f"{enrollment.kind.value}:{enrollment.name}",
            "substatus": substatus,
        }
        audit.append(conn, [audit.Event("device.allocate", device.serial, "registry", "ok", detail)], now)
        outbox.emit(conn, now, "device.allocated", device.serial, detail)
        row = repo.device_by_serial(conn, device.serial)
        assert row is not None
        return row


_DER = serialization.Encoding.DER
_HUB_ID = select(hubs.hubs.c.id).where(hubs.hubs.c.name == bindparam("name"))


def _reallocation(snap: Snapshot, device: Row[Any] | None, enrollment: EnrollmentInfo | None) -> str | None:
    """Why the device needs (re)allocation, as DPS names it, or None if it keeps its hub."""
    if enrollment is None:
        return None
    if device is None or device.hub_id is None:
        return "initialAssignment"
    hub = snap.hubs.get(snap.hub_ids.get(device.hub_id, ""))
    if device.enrollment_id == enrollment.id and hub is not None and hub.enabled:
        return None
    if (
        device.enrollment_id != enrollment.id
        and enrollment.settings.reprovision is Reprovision.NEVER
        and hub is not None
    ):
        return None
    return "deviceDataReset" if enrollment.settings.reprovision is Reprovision.RESET else "deviceDataMigrated"


def _properties(
    device: Row[Any] | None, enrollment: EnrollmentInfo, decision: Decision, substatus: str
) -> dict[str, Any]:
    """A migrated device keeps its properties; otherwise it starts from its enrollment's initial
    properties and what a custom-allocation webhook added."""
    if substatus == "deviceDataMigrated" and device is not None and device.properties:
        return dict(json.loads(device.properties))
    return {**enrollment.settings.properties, **decision.properties}


def _planned(
    serial: str, device: Row[Any] | None, enrollment: EnrollmentInfo, decision: Decision, substatus: str
) -> dict[str, Any]:
    """The assignment `Registry._allocate` will record."""
    return {
        "device_id": serial,
        "hub": decision.hub.name,
        "hub_url": decision.hub.url,
        "enrollment": f"{enrollment.kind.value}:{enrollment.name}",
        "properties": _properties(device, enrollment, decision, substatus),
        "substatus": substatus,
    }


def _assignment(
    snap: Snapshot, device: Row[Any] | None, enrollment: EnrollmentInfo | None, substatus: str
) -> dict[str, Any] | None:
    if device is None or device.hub_id is None:
        return None
    hub = snap.hubs.get(snap.hub_ids.get(device.hub_id, ""))
    return {
        "device_id": device.serial,
        "hub": hub.name if hub else None,
        "hub_url": hub.url if hub else None,
        "enrollment": f"{enrollment.kind.value}:{enrollment.name}" if enrollment else None,
        "properties": json.loads(device.properties or "{}"),
        "substatus": substatus,
    }
