"""Certificates: every certificate the authority issued, by device, profile and serial.

Serials are 159 random bits, unique per issuer; `issuer` disambiguates in the (practically
impossible) case of two issuers having used the same serial.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from devid.api.routes import (
    AFTER,
    LIMIT,
    MAYBE_STRING,
    MAYBE_TIME,
    STRING,
    TIME,
    Call,
    Param,
    Route,
    iso,
    obj,
    page,
    page_of,
)
from devid.authority.roles import Permission
from devid.errors import ConflictError, NotFoundError
from devid.pki.encoding import cert_pem
from devid.pki.profiles import ProfileName
from devid.pki.serials import serial_hex
from devid.store import repo
from devid.store.engine import reading

PROFILE: dict[str, Any] = {"type": "string", "enum": [p.value for p in ProfileName]}
_FIELDS = {
    "serial": STRING,
    "issuer": STRING,
    "device": MAYBE_STRING,
    "profile": PROFILE,
    "subject": STRING,
    "not_before": TIME,
    "not_after": TIME,
    "status": STRING,
    "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}
CERTIFICATE = obj(_FIELDS)
CERTIFICATE_DETAIL = obj({**_FIELDS, "status_at": MAYBE_TIME, "pem": STRING})
SERIAL = Param("serial", {"type": "string", "pattern": "^[0-9a-fA-F]{1,40}$"}, "certificate serial (hex)")


def certificate_json(row: Any) -> dict[str, Any]:
    return {
        "serial": row.serial,
        "issuer": row.issuer_name,
        "device": row.device_serial,
        "profile": row.profile,
        "subject": row.subject,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "status": row.status,
        "fingerprint": row.fingerprint,
    }


def list_certificates(call: Call) -> dict[str, Any]:
    """Certificates in issue order, optionally of one device or profile."""
    limit = call.query["limit"]
    with reading(call.authority.engine) as conn:
        rows = repo.list_certificates(
            conn,
            device_serial=call.query.get("device"),
            profile=call.query.get("profile"),
            after_id=call.query.get("after", 0),
            limit=limit,
        )
    return page(rows, certificate_json, limit, lambda row: row.id)


def get_certificate(call: Call) -> dict[str, Any]:
    """One certificate by serial, with its PEM and revocation time."""
    serial, issuer = serial_hex(int(call.path["serial"], 16)), call.query.get("issuer")
    with reading(call.authority.engine) as conn:
        rows = [r for r in repo.certificates_by_serial(conn, serial) if issuer in (None, r.issuer_name)]
    if not rows:
        raise NotFoundError("unknown-certificate", f"no certificate with serial {serial}")
    if len(rows) > 1:
        raise ConflictError("ambiguous-serial", f"serial {serial} was issued by several CAs: add ?issuer=")
    row = rows[0]
    pem = cert_pem(x509.load_der_x509_certificate(row.der)).decode()
    return {**certificate_json(row), "status_at": iso(row.status_at), "pem": pem}


ROUTES = [
    Route(
        "GET",
        "/certificates",
        Permission.CERTIFICATES_READ,
        "List certificates",
        list_certificates,
        page_of(CERTIFICATE),
        query=[
            Param("device", {"type": "string", "minLength": 1, "maxLength": 128}, "only this device's"),
            Param("profile", PROFILE, "only this profile"),
            AFTER,
            LIMIT,
        ],
    ),
    Route(
        "GET",
        "/certificates/{serial}",
        Permission.CERTIFICATES_READ,
        "Show a certificate",
        get_certificate,
        CERTIFICATE_DETAIL,
        path_params=[SERIAL],
        query=[Param("issuer", {"type": "string", "minLength": 1, "maxLength": 64}, "issuing CA name")],
        conflicts=True,
    ),
]
