"""CAs: devid's own hierarchy (root, manufacturing, operational, OCSP signers), read-only.

A home has a handful of CAs, so the list is one page; each entry carries its PEM, which is what
a client reading CAs usually wants (trust anchors, chain building).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from devid.api.routes import MAYBE_STRING, NAME_PARAM_SCHEMA, STRING, TIME, Call, Param, Route, obj, page_of
from devid.authority.roles import Permission
from devid.errors import NotFoundError
from devid.pki.encoding import cert_pem, fingerprint
from devid.store import repo
from devid.store.engine import reading

CA = obj(
    {
        "name": STRING,
        "role": STRING,
        "parent": MAYBE_STRING,
        "subject": STRING,
        "serial": STRING,
        "not_after": TIME,
        "created_at": TIME,
        "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "pem": STRING,
    }
)


def _ca(row: Any, names: dict[int, str]) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "parent": names.get(row.parent_id) if row.parent_id is not None else None,
        "subject": row.subject,
        "serial": row.serial,
        "not_after": row.not_after.isoformat(),
        "created_at": row.created_at.isoformat(),
        "fingerprint": fingerprint(row.der),
        "pem": cert_pem(x509.load_der_x509_certificate(row.der)).decode(),
    }


def list_cas(call: Call) -> dict[str, Any]:
    """Every CA of this home, root first."""
    with reading(call.authority.engine) as conn:
        rows = repo.all_cas(conn)
    names = {row.id: row.name for row in rows}
    return {"items": [_ca(row, names) for row in rows], "next": None}


def get_ca(call: Call) -> dict[str, Any]:
    """One CA by name."""
    with reading(call.authority.engine) as conn:
        rows = repo.all_cas(conn)
    names = {row.id: row.name for row in rows}
    for row in rows:
        if row.name == call.path["name"]:
            return _ca(row, names)
    raise NotFoundError("unknown-ca", f"no CA named {call.path['name']!r}")


ROUTES = [
    Route("GET", "/cas", Permission.CAS_READ, "List CAs", list_cas, page_of(CA)),
    Route(
        "GET",
        "/cas/{name}",
        Permission.CAS_READ,
        "Show a CA",
        get_ca,
        CA,
        path_params=[Param("name", NAME_PARAM_SCHEMA, "CA name (root, manufacturing, operational, ...)")],
    ),
]
