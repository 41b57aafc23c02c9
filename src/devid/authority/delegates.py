"""Certificates a CA issues to the authority's own helpers (a delegated OCSP responder, the SCEP
registration authority): made on first use, recorded and audited like every certificate devid
issues, and certified again when a third of their life is left."""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import insert, select

from devid.authority.core import Authority
from devid.pki.encoding import public_key_fingerprint
from devid.pki.profiles import PROFILES, ProfileName, ca_subject, subject_text
from devid.pki.serials import random_serial, serial_hex
from devid.store import audit
from devid.store.engine import reading, writing
from devid.store.models import certificates
from devid.store.states import CertificateStatus

HelperKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def renew_due(cert: x509.Certificate, now: datetime) -> bool:
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return now >= cert.not_valid_after_utc - life / 3


def _spki(key: HelperKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def current(
    authority: Authority,
    ca_name: str,
    profile: ProfileName,
    key: HelperKey,
    now: datetime,
    *,
    earliest: bool = False,
) -> x509.Certificate | None:
    """The newest valid certificate of `profile` CA `ca_name` issued for `key`, unless due for
    renewal; with `earliest`, the oldest such one, so processes that certified the same key at
    once all settle on the same certificate (the first recorded)."""
    ca = authority.cas[ca_name]
    with reading(authority.engine) as conn:
        rows = conn.execute(
            select(certificates.c.der)
            .where(
                certificates.c.issuer_id == ca.id,
                certificates.c.profile == profile.value,
                certificates.c.status == CertificateStatus.VALID,
            )
            .order_by(certificates.c.id if earliest else certificates.c.id.desc())
            .limit(None if earliest else 1)
        ).all()
    for (der,) in rows:
        cert = x509.load_der_x509_certificate(der)
        if _spki(cert.public_key()) == _spki(key) and not renew_due(cert, now):  # type: ignore[arg-type]
            return cert
    return None


def issue(
    authority: Authority,
    ca_name: str,
    profile_name: ProfileName,
    common_name: str,
    key: HelperKey,
    now: datetime,
) -> x509.Certificate:
    """Certify `key` for one of the authority's helpers, recorded and audited in one transaction."""
    ca = authority.cas[ca_name]
    profile = PROFILES[profile_name]
    now = now.replace(microsecond=0)
    subject = ca_subject(authority.org, common_name)
    serial = random_serial()
    cert = ca.template(profile).builder(subject, key, serial, now).sign(ca.key, hashes.SHA256())
    der = cert.public_bytes(serialization.Encoding.DER)
    fingerprint = hashlib.sha256(der).hexdigest()
    with writing(authority.engine) as conn:
        conn.execute(
            insert(certificates).values(
                serial=serial_hex(serial),
                issuer_id=ca.id,
                device_id=None,
                profile=profile_name.value,
                subject=subject_text(subject),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                fingerprint=fingerprint,
                public_key_fingerprint=public_key_fingerprint(key),
                status=CertificateStatus.VALID,
                der=der,
                created_at=now,
            )
        )
        detail = {"profile": profile_name.value, "issuer": ca_name, "fingerprint": fingerprint}
        audit.append(
            conn, [audit.Event("certificate.issue", serial_hex(serial), "system", "ok", detail)], now
        )
    return cert
