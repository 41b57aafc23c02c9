"""Matter attestation CAs: a PAA (the trust anchor a commissioner holds, per vendor) and a PAI per
vendor and product line, made on demand beside devid's own hierarchy.

A PAA is a root of its own, not devid's root: the Matter profile fixes its pathLen at 1 (PAA ->
PAI -> DAC) and a commissioner trusts it alone, so devid's root (which also anchors the
manufacturing, operational and OCSP CAs) cannot be one. Both are CAs of the store like the others
(a key in the home's keystore, a row in the CA table, an audit event); DACs are then issued by the
authority as any certificate, the PAI chosen by the request's VID/PID.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from devid.authority.ca_records import record_ca
from devid.authority.core import Authority, IssuingCA
from devid.authority.requests import MatterIds, paa_name
from devid.errors import ConflictError, NotFoundError
from devid.pki.matter import matter_subject, subject_text
from devid.pki.profiles import PROFILES, ProfileName, Template, self_signed_template
from devid.pki.serials import random_serial, serial_hex
from devid.store import audit, repo
from devid.store.engine import reading, writing

PAA_ROLE = ProfileName.MATTER_PAA.value
PAI_ROLE = ProfileName.MATTER_PAI.value
MATTER_ROLES = (PAA_ROLE, PAI_ROLE)


@dataclass(frozen=True)
class MatterCa:
    """A Matter CA just made and recorded."""

    name: str
    role: str
    vid: int | None
    pid: int | None
    serial: str
    subject: str
    not_after: datetime
    certificate: x509.Certificate

    def as_dict(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "role": self.role,
            "vid": None if self.vid is None else f"{self.vid:04X}",
            "pid": None if self.pid is None else f"{self.pid:04X}",
            "serial": self.serial,
            "subject": self.subject,
            "not_after": self.not_after.isoformat(),
        }


def create_paa(authority: Authority, vid: int | None, actor: str) -> MatterCa:
    """A self-signed PAA, naming vendor `vid` (or no vendor: a PAA may serve several)."""
    name = paa_name(vid)
    _refuse_existing(authority, name)
    cn = f"{authority.org} Matter PAA" + ("" if vid is None else f" {vid:04X}")
    subject = (
        matter_subject(cn, vid)
        if vid is not None
        else x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    )
    return _create(authority, name, PAA_ROLE, vid, None, subject, None, actor)


def create_pai(authority: Authority, ids: MatterIds, actor: str) -> MatterCa:
    """The PAI of product line (VID, PID), certified by the vendor's PAA (or a vendor-less one)."""
    name = ids.pai_name
    _refuse_existing(authority, name)
    paa = authority.cas.get(paa_name(ids.vid)) or authority.cas.get(paa_name(None))
    if paa is None:
        raise NotFoundError(
            "matter-no-paa",
            f"no Matter PAA for VID {ids.vid:04X}: `devid matter paa create --vid {ids.vid:04X}` first",
        )
    subject = matter_subject(f"{authority.org} Matter PAI {ids.vid:04X} {ids.pid:04X}", ids.vid, ids.pid)
    return _create(authority, name, PAI_ROLE, ids.vid, ids.pid, subject, paa, actor)


def stored_paas(engine: Engine) -> list[x509.Certificate]:
    """The PAAs of a home: the trust anchors `devid matter verify` uses when given no PAA store."""
    with reading(engine) as conn:
        rows = repo.all_cas(conn)
    return [x509.load_der_x509_certificate(row.der) for row in rows if row.role == PAA_ROLE]


def _refuse_existing(authority: Authority, name: str) -> None:
    if name in authority.cas:
        raise ConflictError("matter-ca-exists", f"CA {name!r} already exists: see `devid ca list`")


def _create(
    authority: Authority,
    name: str,
    role: str,
    vid: int | None,
    pid: int | None,
    subject: x509.Name,
    parent: IssuingCA | None,
    actor: str,
) -> MatterCa:
    keystore = authority.cas["root"].keystore
    label = authority.key_prefix + name
    try:
        key = keystore.generate(label)
    except ConflictError:  # left by an attempt that crashed before its CA was recorded: never used
        key = keystore.load(label)
    now = authority.clock.now().replace(microsecond=0)
    profile = PROFILES[ProfileName(role)]
    serial = random_serial()
    if parent is None:
        template, signer = self_signed_template(profile, subject), key
    else:
        template, signer = Template.for_issuer(profile, parent.certificate), parent.key
    cert = template.builder(subject, key.public_key(), serial, now).sign(signer, hashes.SHA256())
    with writing(authority.engine) as conn:
        try:
            ca_id = record_ca(
                conn,
                name=name,
                role=role,
                parent_id=None if parent is None else parent.id,
                key_label=label,
                certificate=cert,
                now=now,
            )
        except IntegrityError:
            raise ConflictError("matter-ca-exists", f"CA {name!r} was created meanwhile") from None
        detail = {"role": role, "serial": serial_hex(serial), "key_backend": keystore.backend}
        audit.append(conn, [audit.Event("ca.create", name, actor, "ok", detail)], now)
    authority.add_ca(IssuingCA(ca_id, name, role, cert, label, keystore))
    return MatterCa(
        name, role, vid, pid, serial_hex(serial), subject_text(subject), cert.not_valid_after_utc, cert
    )
