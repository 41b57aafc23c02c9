"""The one way a CA made after `devid init` (a rotation's successor, a Matter PAA or PAI) is recorded."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Connection, func, insert, select

from devid.pki.serials import serial_hex
from devid.store.models import cas


def record_ca(
    conn: Connection,
    *,
    name: str,
    role: str,
    parent_id: int | None,
    key_label: str,
    certificate: x509.Certificate,
    now: datetime,
    crl_shards: int | None = None,
) -> int:
    """Insert the CA's row in `conn`'s transaction and return its id; IntegrityError when another
    process recorded a CA of that name meanwhile (the caller says what that means for it)."""
    # Ids by hand, as `devid init` numbers its CAs (PostgreSQL's sequence never moved).
    ca_id = int(conn.execute(select(func.max(cas.c.id))).scalar_one()) + 1
    values = {
        "id": ca_id,
        "name": name,
        "role": role,
        "parent_id": parent_id,
        "key_label": key_label,
        "subject": certificate.subject.rfc4514_string(),
        "serial": serial_hex(certificate.serial_number),
        "not_after": certificate.not_valid_after_utc,
        "der": certificate.public_bytes(Encoding.DER),
        "created_at": now,
    }
    if crl_shards is not None:
        values["crl_shards"] = crl_shards
    conn.execute(insert(cas).values(**values))
    return ca_id
