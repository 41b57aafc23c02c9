"""The Authority: policy, signing and recording in one place.

Every certificate devid hands out goes through `issue_many`: requests are checked against policy,
signed, and written (certificate, device record, audit event) in one transaction that commits
before any caller sees the result. A batch is atomic; callers that want per-item isolation (the
factory) retry a refused batch one request at a time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, Engine, insert, update
from sqlalchemy.exc import IntegrityError

from devid.authority import device_records
from devid.authority.credential_key import CredentialKey
from devid.authority.indices import IndexAllocator
from devid.authority.policy import DEFAULT_LABELS, LabelPolicy
from devid.authority.requests import Issued, IssueRequest, MatterIds, NewDevice, check_device_serial
from devid.clock import Clock, SystemClock
from devid.errors import ConfigError, ConflictError, DevidError, NotFoundError, PolicyError
from devid.keys.base import KeyStore
from devid.pki.csr import load_and_check_csr
from devid.pki.der import HardwareModuleName
from devid.pki.encoding import public_key_fingerprint
from devid.pki.keypolicy import require_p256, require_scep_rsa
from devid.pki.matter import matter_subject
from devid.pki.profiles import (
    CLOCK_SKEW,
    PROFILES,
    Profile,
    ProfileName,
    Template,
    device_subject,
    device_subject_text,
    server_names,
    subject_text,
)
from devid.pki.serials import indexed_serial, serial_hex
from devid.pki.status_urls import OCSP_PATH, crl_path, url
from devid.store import audit, repo
from devid.store.engine import writing
from devid.store.states import CertificateStatus, DeviceState

#: Which CA role signs which profile: the role's newest CA (`devid init` names the first one after
#: its role; `devid ca rotate` adds successors).
ISSUER_OF: dict[ProfileName, str] = {
    ProfileName.IDEVID: "manufacturing",
    ProfileName.LDEVID: "operational",
    ProfileName.SESSION: "operational",
    ProfileName.SERVER: "operational",
    ProfileName.SCEP_RSA: "operational",
}
#: The roles whose CAs issue end-entity certificates, and so roll over.
ISSUING_ROLES = frozenset(ISSUER_OF.values())
#: The role a rolled-over CA takes when `devid ca retire` ends its overlap: it issues nothing and
#: authenticates no client; the CRLs and OCSP answers for what it issued go on being served.
RETIRED_ROLE = "retired"


class CaState(StrEnum):
    """Where a CA stands in a rotation, derived from the roles (no column of its own): the newest CA
    of an issuing role is ACTIVE, older ones of that role are RETIRING (still trusted for client
    authentication during the overlap), and a retired one has the role `retired`."""

    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"


class _CaRecord(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...


def ca_states(records: Iterable[_CaRecord]) -> dict[str, CaState]:
    """The state of each CA (stored rows or `IssuingCA`s), by name."""
    ordered = sorted(records, key=lambda ca: ca.id)
    newest = {ca.role: ca.name for ca in ordered if ca.role in ISSUING_ROLES}

    def state(ca: _CaRecord) -> CaState:
        if ca.role == RETIRED_ROLE:
            return CaState.RETIRED
        return CaState.ACTIVE if newest.get(ca.role, ca.name) == ca.name else CaState.RETIRING

    return {ca.name: state(ca) for ca in ordered}


_DER = serialization.Encoding.DER
#: The key that signs audit checkpoints, labelled `<key prefix>audit` beside the CA keys.
AUDIT_KEY_NAME = "audit"
_INSERT_CERTIFICATES = insert(repo.certificates)


_T = TypeVar("_T")


def _mark_superseded(conn: Connection, fingerprints: list[str], now: datetime) -> None:
    if fingerprints:
        certs = repo.certificates
        conn.execute(
            update(certs)
            .where(certs.c.fingerprint.in_(fingerprints))
            .values(status=CertificateStatus.SUPERSEDED, status_at=now)
        )


def _close(resource: object) -> None:
    close = getattr(resource, "close", None)
    if callable(close):
        close()


@dataclass
class IssuingCA:
    """A CA as the authority uses it: its certificate, its key (opened on first use), its templates."""

    id: int
    name: str
    role: str
    certificate: x509.Certificate
    key_label: str | None
    keystore: KeyStore
    #: CRL partitions; a certificate's shard is its index modulo this.
    crl_shards: int = 16
    #: The deployment's public URL: certificates then name their shard's CRL and the OCSP responder.
    public_url: str | None = None
    _key: ec.EllipticCurvePrivateKey | None = None
    _templates: dict[tuple[ProfileName, timedelta | None], Template] = field(default_factory=dict)

    @property
    def issues_devices(self) -> bool:
        """Whether this CA issues or issued end-entity certificates (retired or not)."""
        return self.role in ISSUING_ROLES or self.role == RETIRED_ROLE

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            if self.key_label is None:
                raise PolicyError("ca-no-key", f"CA {self.name!r} has no signing key here")
            self._key = self.keystore.load(self.key_label)
        return self._key

    def template(self, profile: Profile) -> Template:
        key = (profile.name, profile.validity)
        tpl = self._templates.get(key)
        if tpl is None or tpl.profile != profile:
            base = self.public_url if profile.status_urls else None
            tpl = self._templates[key] = Template.for_issuer(
                profile,
                self.certificate,
                ocsp_url=url(base, OCSP_PATH) if base else None,
                crl_urls=[url(base, crl_path(self.name, k)) for k in range(self.crl_shards)] if base else (),
            )
        return tpl


class Authority:
    """Issues certificates under devid's policy; the only object in devid that holds CA keys."""

    def __init__(
        self,
        engine: Engine,
        org: str,
        cas: dict[str, IssuingCA],
        *,
        credentials: CredentialKey,
        clock: Clock | None = None,
        hw_type: str,
        lifetimes: dict[ProfileName, timedelta | None] | None = None,
        labels: dict[str, LabelPolicy] | None = None,
    ) -> None:
        self.engine = engine
        self.org = org
        self.cas = cas
        #: Keyed storage of API tokens, enrollment secrets, registration codes and sink secrets.
        self.credentials = credentials
        self.clock = clock or SystemClock()
        self.hw_type = hw_type
        self.labels = labels or dict(DEFAULT_LABELS)
        self.profiles = {
            name: PROFILES[name].with_validity(validity) for name, validity in (lifetimes or {}).items()
        }
        self._states = ca_states(cas.values())
        #: Each issuing role's ACTIVE CA: the newest of that role.
        self._active = {
            ca.role: ca
            for ca in cas.values()
            if ca.role in ISSUING_ROLES and self._states[ca.name] is CaState.ACTIVE
        }
        self._audit_key: ec.EllipticCurvePrivateKey | None = None
        self._indices = IndexAllocator(engine)
        self._owned: dict[type, Any] = {}
        self._owned_lock = threading.RLock()
        self._closed = False
        #: Called with each committed batch and the seconds it took (signing to commit): the
        #: server's metrics hook in here, as the authority may not import the layers above it.
        self.issuance_observers: list[Callable[[Sequence[Issued], float], None]] = []

    # --- what the authority owns ----------------------------------------------------------------

    def owned(self, kind: type[_T], make: Callable[[], _T]) -> _T:
        """The authority's one `kind` (its group committer, token keyring, token policy...), made
        by `make` on first use. Packages above keep such things here, not in module globals, so
        `close()` can stop them and two authorities in one process never share them."""
        with self._owned_lock:
            found = self._owned.get(kind)
            if found is None:
                if self._closed:
                    raise ConfigError("authority-closed", "this authority was closed")
                found = self._owned[kind] = make()
            return cast(_T, found)

    def own(self, kind: type[_T], value: _T) -> _T:
        """Make `value` the authority's `kind`, closing the one it replaces (if it has `close`)."""
        with self._owned_lock:
            previous = self._owned.get(kind)
            self._owned[kind] = value
        if previous is not None and previous is not value:
            _close(previous)
        return value

    def close(self) -> None:
        """Stop and close what this authority owns, newest first (a group committer commits what
        it was given, then its thread ends), then dispose of its engine. Idempotent."""
        with self._owned_lock:
            self._closed = True
            owned, self._owned = list(self._owned.values()), {}
        for resource in reversed(owned):
            _close(resource)
        self.engine.dispose()

    def __enter__(self) -> Authority:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def label_policy(self, label: str) -> LabelPolicy:
        try:
            return self.labels[label]
        except KeyError:
            raise NotFoundError("unknown-label", f"no EST label {label!r} is configured") from None

    def profile(self, name: ProfileName) -> Profile:
        return self.profiles.get(name) or PROFILES[name]

    def issuer_for(self, name: ProfileName, matter: MatterIds | None = None) -> IssuingCA:
        """The ACTIVE CA of the role that signs profile `name`; for a Matter DAC, the PAI of its
        product line."""
        if name is ProfileName.MATTER_DAC:
            if matter is None:
                raise PolicyError("matter-ids-required", "a Matter DAC needs a Vendor ID and a Product ID")
            pai = self.cas.get(matter.pai_name)
            if pai is None:
                raise NotFoundError(
                    "matter-no-pai",
                    f"no PAI for VID {matter.vid:04X} PID {matter.pid:04X}: "
                    f"`devid matter pai create --vid {matter.vid:04X} --pid {matter.pid:04X}` first",
                )
            return pai
        try:
            return self._active[ISSUER_OF[name]]
        except KeyError:
            raise PolicyError(
                "profile-not-issuable", f"devid does not issue {name.value} certificates on request"
            ) from None

    def issuers_of(self, role: str) -> list[IssuingCA]:
        """The CAs of `role` a client certificate may come from: the ACTIVE one, then the RETIRING
        ones, newest first (a retired CA has left its role)."""
        return sorted((ca for ca in self.cas.values() if ca.role == role), key=lambda ca: -ca.id)

    def device_issuers(self) -> list[IssuingCA]:
        """Every CA that issues or issued end-entity certificates, retired ones included: those whose
        revocation status devid serves."""
        return [ca for ca in self.cas.values() if ca.issues_devices]

    def ca_state(self, name: str) -> CaState:
        return self._states[name]

    def chain(self, ca_name: str, *, with_root: bool = False) -> list[x509.Certificate]:
        """The CA certificates from `ca_name` up to its self-signed root (included if `with_root`)."""
        chain = [self.cas[ca_name].certificate]
        while chain[-1].issuer != chain[-1].subject:
            parent = next(ca for ca in self.cas.values() if ca.certificate.subject == chain[-1].issuer)
            chain.append(parent.certificate)
        return chain if with_root else chain[:-1]

    def add_ca(self, ca: IssuingCA) -> None:
        """A CA just recorded in the store (a Matter PAA or PAI) joins this authority's CAs."""
        self.cas[ca.name] = ca
        self._states = ca_states(self.cas.values())

    @property
    def root(self) -> x509.Certificate:
        return self.cas["root"].certificate

    # --- issuance -------------------------------------------------------------------------------

    def issue(self, request: IssueRequest, actor: str = "system") -> Issued:
        return self.issue_many([request], actor)[0]

    def issue_csr(
        self,
        csr_data: bytes,
        profile: ProfileName,
        *,
        device_serial: str | None = None,
        new_device: NewDevice | None = None,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        actor: str = "system",
    ) -> Issued:
        """Issue from a PEM or DER CSR after the CSR checks; only the key is taken from the CSR."""
        subject = (new_device.serial if new_device else device_serial) or ",".join(dns) or "-"
        try:
            _, key = load_and_check_csr(csr_data)
        except PolicyError as exc:
            self.record_refusal(exc, "certificate.issue", subject, actor, {"profile": profile.value})
            raise
        request = IssueRequest(profile, key, device_serial, new_device, dns=tuple(dns), ips=tuple(ips))
        return self.issue(request, actor)

    def issue_many(self, requests: Sequence[IssueRequest], actor: str = "system") -> list[Issued]:
        """Sign and record a batch atomically; raise (and audit the refusal) if any request is refused."""
        try:
            return self._issue_many(requests, actor)
        except DevidError as exc:
            first = requests[0] if requests else None
            subject = (first.serial_of_device or "-") if first else "-"
            self.record_refusal(
                exc,
                "certificate.issue",
                subject,
                actor,
                {"batch": len(requests), "profile": first.profile.value if first else None},
            )
            raise

    def issue_each(
        self, requests: Sequence[IssueRequest], actor: str | Sequence[str] = "system"
    ) -> list[Issued | DevidError]:
        """Issue a batch in one transaction (one commit for all: the factory and the EST server's
        group commit); if the batch is refused, issue each request alone, so only the refused ones
        fail, each refusal audited on its own."""
        if not requests:
            return []
        try:
            return list(self._issue_many(requests, actor))
        except DevidError:
            pass
        outcomes: list[Issued | DevidError] = []
        for i, request in enumerate(requests):
            try:
                outcomes.append(self.issue(request, actor if isinstance(actor, str) else actor[i]))
            except DevidError as exc:
                outcomes.append(exc)
        return outcomes

    def _issue_many(self, requests: Sequence[IssueRequest], actor: str | Sequence[str]) -> list[Issued]:
        started = time.perf_counter()
        # Whole seconds: X.509 times have no fraction, and the stored validity must be the certificate's.
        now = self.clock.now().astimezone(UTC).replace(microsecond=0)
        for req in requests:
            self._check(req)
        actors = [actor] * len(requests) if isinstance(actor, str) else list(actor)
        # Sign before the transaction: the store's write lock (SQLite's is database-wide) is then
        # held for the inserts and the commit only, not for hundreds of signatures, so stations and
        # server processes writing to one store do not queue behind each other's signing. A batch
        # the transaction refuses is discarded unseen: nothing is handed out unrecorded.
        issued, rows, events = [], [], []
        for req, req_actor in zip(requests, actors, strict=True):
            item, row = self._sign(req, now)
            issued.append(item)
            rows.append(row)
            events.append(
                audit.Event(
                    "certificate.issue",
                    serial_hex(item.serial),
                    req_actor,
                    "ok",
                    {
                        "profile": req.profile.value,
                        "issuer": item.issuer,
                        "device": item.device_serial,
                        "fingerprint": item.fingerprint,
                    },
                )
            )
        with writing(self.engine) as conn:
            for req in requests:
                if req.prepare is not None:
                    req.prepare(conn, now)
            known = self._existing_devices(conn, [r.device_serial for r in requests if r.device_serial])
            superseding = [(r.supersedes, a) for r, a in zip(requests, actors, strict=True) if r.supersedes]
            replaced = self._supersede(conn, superseding, now)
            new_devices = [r.new_device for r in requests if r.new_device]
            if new_devices:
                known.update(self._insert_devices(conn, new_devices, now))
            for item, row in zip(issued, rows, strict=True):
                row["device_id"] = known[item.device_serial] if item.device_serial else None
            self._check_keys_unshared(conn, rows)
            held = [
                (row, a) for req, row, a in zip(requests, rows, actors, strict=True) if req.supersedes_held
            ]
            replaced += self._supersede_held(conn, held, now)
            try:
                conn.execute(_INSERT_CERTIFICATES, rows)
            except IntegrityError as exc:
                raise ConflictError(
                    "certificate-conflict", f"certificate could not be recorded: {exc.orig}"
                ) from None
            audit.append(conn, replaced + events, now)
        elapsed = time.perf_counter() - started
        for observe in self.issuance_observers:
            observe(issued, elapsed)
        return issued

    def _existing_devices(self, conn: Connection, serials: list[str]) -> dict[str, int]:
        """Ids of the devices named; each must exist and be ACTIVE to receive a certificate."""
        states = repo.device_states(conn, serials)
        for serial in serials:
            if serial not in states:
                raise NotFoundError("unknown-device", f"no device with serial {serial!r}")
            state = states[serial][1]
            if state != DeviceState.ACTIVE:
                raise PolicyError(
                    "device-not-active", f"device {serial!r} is {state}: no certificate is issued to it"
                )
        return {serial: dev_id for serial, (dev_id, _) in states.items()}

    def _supersede(
        self, conn: Connection, superseding: list[tuple[str, str]], now: datetime
    ) -> list[audit.Event]:
        """Mark the certificates being replaced as superseded; each must still be current. Returns
        the audit events, for the batch's one append."""
        if not superseding:
            return []
        fingerprints = [fp for fp, _ in superseding]
        for fp in fingerprints:
            row = repo.certificate_by_fingerprint(conn, fp)
            if row is None:
                raise NotFoundError("unknown-certificate", f"no certificate with fingerprint {fp}")
            if row.status != CertificateStatus.VALID:
                raise PolicyError(f"certificate-{row.status}", f"certificate {row.serial} is {row.status}")
        _mark_superseded(conn, fingerprints, now)
        return [audit.Event("certificate.supersede", fp, actor) for fp, actor in superseding]

    def _check_keys_unshared(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """One key, one holder: refuse a public key that is or was certified (in any state) for
        another device, or for a device when this certificate is for none and the reverse; in the
        batch or on record. A device may certify its own key again (a renewal that keeps its key)."""
        holders: dict[str, int | None] = {}
        for row in rows:
            holders.setdefault(row["public_key_fingerprint"], row["device_id"])
        on_record = repo.public_key_holders(conn, list(holders))
        for row in rows:
            fp, device_id = row["public_key_fingerprint"], row["device_id"]
            others = {holders[fp], *on_record.get(fp, ())} - {device_id}
            if others:
                raise PolicyError(
                    "public-key-in-use",
                    "this public key is already certified for another device: every device needs its own key",
                )

    def _supersede_held(
        self, conn: Connection, held: list[tuple[dict[str, Any], str]], now: datetime
    ) -> list[audit.Event]:
        """Supersede the valid certificates the devices hold of the profiles being issued (one
        query and one update for the whole batch); returns the audit events."""
        if not held:
            return []
        by = {(row["device_id"], row["profile"]): (row["fingerprint"], actor) for row, actor in held}
        current = repo.valid_certificates_of(conn, [device_id for device_id, _ in by])
        replaced = [(fp, by[(dev, prof)]) for fp, dev, prof in current if (dev, prof) in by]
        _mark_superseded(conn, [fp for fp, _ in replaced], now)
        return [
            audit.Event("certificate.supersede", fp, actor, "ok", {"by": new})
            for fp, (new, actor) in replaced
        ]

    def _check(self, req: IssueRequest) -> None:
        if req.profile is ProfileName.SCEP_RSA:
            require_scep_rsa(req.public_key)
        else:
            require_p256(req.public_key)
        profile = self.profile(req.profile)
        self.issuer_for(req.profile, req.matter)
        if req.matter is not None and req.profile is not ProfileName.MATTER_DAC:
            raise PolicyError("matter-ids-unexpected", f"a {req.profile.value} certificate names no VID/PID")
        if profile.for_device:
            serial = req.serial_of_device
            if serial is None:
                raise PolicyError(
                    "device-required", f"a {req.profile.value} certificate needs a device serial"
                )
            check_device_serial(serial)
        if req.profile == ProfileName.SERVER and not (req.dns or req.ips):
            raise PolicyError(
                "server-names-required", "a server certificate needs at least one DNS name or IP"
            )

    def _insert_devices(
        self, conn: Connection, devices: Sequence[NewDevice], now: datetime
    ) -> dict[str, int]:
        serials = [d.serial for d in devices]
        if len(set(serials)) != len(serials):
            raise ConflictError("duplicate-device", "the same device serial appears twice in one batch")
        existing = repo.device_ids(conn, serials)
        if existing:
            raise ConflictError(
                "duplicate-device", f"device {next(iter(existing))!r} already exists: not issued twice"
            )
        rows = [
            {
                "serial": d.serial,
                "model": d.model,
                "lot": d.lot,
                "line": d.line,
                "state": DeviceState.ACTIVE,
                "se_backend": d.se_backend,
                "directory": d.directory,
            }
            for d in devices
        ]
        try:
            # A plain executemany and one indexed read back: RETURNING with ordered rows makes
            # SQLite's dialect insert row by row.
            device_records.create(conn, rows, now)
        except IntegrityError:
            raise ConflictError(
                "duplicate-device", "a device serial in this batch already exists: not issued twice"
            ) from None
        return repo.device_ids(conn, serials)

    def _sign(self, req: IssueRequest, now: datetime) -> tuple[Issued, dict[str, Any]]:
        profile = self.profile(req.profile)
        if req.lifetime is not None:
            profile = profile.with_validity(req.lifetime)
        ca = self.issuer_for(req.profile, req.matter)
        device = req.serial_of_device
        alt: list[x509.GeneralName] = []
        if profile.hardware_module_name and device:
            alt.append(HardwareModuleName(self.hw_type, device.encode()).to_other_name())
        if req.dns or req.ips:
            alt.extend(server_names(req.dns, req.ips))
        if req.matter is not None and device:
            # Matter 6.2.2.3: the VID and PID attributes; the CN names the device.
            subject = matter_subject(device, req.matter.vid, req.matter.pid)
            text = subject_text(subject)
        elif profile.for_device and device:
            subject = device_subject(self.org, device, req.common_name)
            text = device_subject_text(self.org, device, req.common_name)
        else:
            subject = x509.Name(
                [
                    x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, self.org),
                    x509.NameAttribute(x509.NameOID.COMMON_NAME, req.common_name or (req.dns or req.ips)[0]),
                ]
            )
            text = subject_text(subject)
        index = self._indices.take(ca.id)[0]
        serial = indexed_serial(index)
        # Short-lived and session certificates never enter a CRL: expiry is their revocation.
        shard = None if req.short_lived or req.profile is ProfileName.SESSION else index % ca.crl_shards
        builder = ca.template(profile).builder(subject, req.public_key, serial, now, alt, shard)
        cert = builder.sign(ca.key, hashes.SHA256())
        der = cert.public_bytes(_DER)
        fp = hashlib.sha256(der).hexdigest()
        issued = Issued(cert, der, serial, fp, req.profile, ca.name, device)
        row = {
            "serial": serial_hex(serial),
            "issuer_id": ca.id,
            "device_id": None,  # filled in inside the transaction that records it
            "profile": req.profile.value,
            "subject": text,
            "not_before": now - CLOCK_SKEW,
            "not_after": profile.not_after(now, ca.certificate.not_valid_after_utc),
            "fingerprint": fp,
            "public_key_fingerprint": public_key_fingerprint(req.public_key),
            "status": CertificateStatus.VALID,
            "der": der,
            "created_at": now,
            "idx": index,
            "shard": shard,
        }
        return issued, row

    # --- audit ----------------------------------------------------------------------------------

    @property
    def key_prefix(self) -> str:
        """The home's key prefix: the CA keys are labelled `<prefix><CA name>`."""
        root = self.cas["root"]
        return (root.key_label or "devid-").removesuffix(root.name)

    @property
    def audit_key_label(self) -> str:
        """The audit key sits beside the CA keys, under the home's key prefix: `<prefix>audit`."""
        return self.key_prefix + AUDIT_KEY_NAME

    def audit_key(self) -> ec.EllipticCurvePrivateKey:
        """The P-256 key that signs audit checkpoints, in the CA keys' keystore (passphrase-sealed
        file or HSM); a home made before checkpoints existed gets it on first use."""
        if self._audit_key is None:
            keystore, label = self.cas["root"].keystore, self.audit_key_label
            try:
                self._audit_key = keystore.load(label)
            except NotFoundError:
                try:
                    self._audit_key = keystore.generate(label)
                except ConflictError:  # another process made it first
                    self._audit_key = keystore.load(label)
        return self._audit_key

    def checkpoint_audit(self) -> audit.Checkpoint | None:
        """Sign the audit chain's head (seq, hash, time) and store it as a checkpoint, so that a
        chain rewritten from the database no longer matches a signature; None if no event came
        after the last checkpoint. Signed outside the write lock, like certificates."""
        with self.engine.connect() as conn:
            seq, digest = audit.head(conn)
            last = audit.last_checkpoint(conn)
        if seq == 0 or (last is not None and last.seq >= seq):
            return None
        at = self.clock.now()
        signature = self.audit_key().sign(
            audit.checkpoint_message(seq, digest, at), ec.ECDSA(hashes.SHA256())
        )
        checkpoint = audit.Checkpoint(seq, digest, at, self.audit_key_label, signature)
        with writing(self.engine) as conn:
            audit.add_checkpoint(conn, checkpoint)
        return checkpoint

    def verify_audit(self) -> audit.Verification:
        """The whole chain and every checkpoint against the audit key's public half."""
        with self.engine.connect() as conn:
            return audit.verify(conn, self.audit_key().public_key())

    def record_refusal(
        self, error: DevidError, action: str, subject: str, actor: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Audit a refusal in its own transaction: the refusal is recorded, nothing else changes.
        The error is marked `audited`, so no caller records it again."""
        event = audit.Event(
            action, subject, actor, "refused", {"code": error.code, "reason": error.message, **(detail or {})}
        )
        with writing(self.engine) as conn:
            audit.append(conn, [event], self.clock.now())
        error.mark_audited()
