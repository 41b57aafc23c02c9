"""Enrollment groups and individual enrollments (Azure DPS's model).

A group admits every device whose IDevID chain contains its primary or secondary signing
certificate (two, so a manufacturer can rotate its CA without a gap); an individual enrollment
admits one device by registration id (its serial), optionally pinned to one IDevID, and overrides
any group for it. Both carry the renewal policy, allocation policy and hubs, reprovisioning
policy and initial device properties; disabling one blocks registration and renewal at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from sqlalchemy import Connection, Row, insert, select

from devid.authority.core import Authority
from devid.authority.policy import DEFAULT_LABELS, LabelPolicy, RenewalPolicy
from devid.errors import ConflictError, PolicyError
from devid.pki.chain import issuer_among
from devid.pki.encoding import cert_der, fingerprint, load_certificates
from devid.registry import manufacturers
from devid.registry.allocation import Allocation
from devid.registry.hubs import check_name, hubs
from devid.registry.manufacturers import check_ca_certificate
from devid.registry.rows import by_name, change, update_versioned
from devid.store import outbox
from devid.store.models import enrollments

#: How deep a signing certificate may sit under a registered CA.
MAX_DEPTH = 4


class Kind(StrEnum):
    GROUP = "group"
    INDIVIDUAL = "individual"


class Reprovision(StrEnum):
    """What happens when a registered device comes back through a different enrollment."""

    MIGRATE = "migrate"  # re-allocate, keep the device's properties
    RESET = "reset"  # re-allocate, reset properties to the new enrollment's initial ones
    NEVER = "never"  # stay where it is


@dataclass(frozen=True)
class Settings:
    """What an enrollment decides for its devices; every field has a usable default."""

    policy: LabelPolicy | None = None
    allocation: Allocation = Allocation.HASHED
    hubs: tuple[str, ...] = ()
    webhook_url: str | None = None
    reprovision: Reprovision = Reprovision.MIGRATE
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrollmentInfo:
    id: int
    kind: Kind
    name: str
    settings: Settings
    enabled: bool
    version: int
    signing: tuple[x509.Certificate, ...] = ()
    certificate_fingerprint: str | None = None
    #: SHA-256 of each signing certificate's DER, as stored (matched against device chains).
    signing_fingerprints: frozenset[str] = frozenset()

    @classmethod
    def from_row(cls, row: Row[Any]) -> EnrollmentInfo:
        policy = json.loads(row.policy) if row.policy else None
        settings = Settings(
            LabelPolicy.from_config(f"{row.kind}:{row.name}", policy) if policy else None,
            Allocation(row.allocation),
            tuple(json.loads(row.hubs)),
            row.webhook_url,
            Reprovision(row.reprovision),
            json.loads(row.properties),
        )
        signing = tuple(x509.load_der_x509_certificate(d) for d in (row.primary_der, row.secondary_der) if d)
        return cls(
            row.id,
            Kind(row.kind),
            row.name,
            settings,
            row.enabled,
            row.version,
            signing,
            row.certificate_fingerprint,
            frozenset(f for f in (row.primary_fingerprint, row.secondary_fingerprint) if f),
        )

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {
            "kind": self.kind.value,
            "name": self.name,
            "enabled": self.enabled,
            "version": self.version,
            "policy": s.policy.policy.value if s.policy else None,
            "lifetime_hours": s.policy.lifetime / timedelta(hours=1) if s.policy else None,
            "allocation": s.allocation.value,
            "hubs": list(s.hubs),
            "webhook_url": s.webhook_url,
            "reprovision": s.reprovision.value,
            "properties": s.properties,
        }
        if self.kind is Kind.GROUP:
            out["signing_certificates"] = [
                {"subject": c.subject.rfc4514_string(), "fingerprint": fingerprint(cert_der(c))}
                for c in self.signing
            ]
        else:
            out["certificate_fingerprint"] = self.certificate_fingerprint
        return out


def make_policy(name: str, policy: str | None, lifetime: timedelta | None) -> LabelPolicy | None:
    """A renewal policy for an enrollment: `policy` one of long-lived|renew|short-lived|session,
    `lifetime` defaulting to the built-in label with that policy."""
    if policy is None:
        if lifetime is not None:
            raise PolicyError("enrollment-policy", "a lifetime needs a renewal policy (--policy)")
        return None
    try:
        kind = RenewalPolicy(policy)
    except ValueError:
        raise PolicyError(
            "enrollment-policy",
            f"unknown renewal policy {policy!r}; one of {', '.join(p.value for p in RenewalPolicy)}",
        ) from None
    default = next(p for p in DEFAULT_LABELS.values() if p.policy is kind)
    if lifetime is not None and lifetime <= timedelta(0):
        raise PolicyError("enrollment-policy", "lifetime must be positive")
    return replace(default, label=name, lifetime=lifetime or default.lifetime)


def _row_values(settings: Settings) -> dict[str, Any]:
    return {
        "policy": json.dumps(settings.policy.to_config()) if settings.policy else None,
        "allocation": settings.allocation.value,
        "hubs": json.dumps(list(settings.hubs)),
        "webhook_url": settings.webhook_url,
        "reprovision": settings.reprovision.value,
        "properties": json.dumps(settings.properties, sort_keys=True),
    }


def _check_settings(conn: Connection, settings: Settings) -> None:
    known = {r.name for r in conn.execute(select(hubs.c.name))}
    unknown = [h for h in settings.hubs if h not in known]
    if unknown:
        raise PolicyError("unknown-hub", f"no hub named {unknown[0]!r}; create it with `devid hub create`")
    if settings.allocation is Allocation.STATIC and len(settings.hubs) != 1:
        raise PolicyError("static-hubs", "static allocation names exactly one hub (--hub NAME)")
    if settings.allocation is Allocation.CUSTOM and not settings.webhook_url:
        raise PolicyError("allocation-webhook", "custom allocation needs --webhook URL")
    if settings.webhook_url and not settings.webhook_url.startswith(("http://", "https://")):
        raise PolicyError("allocation-webhook", "the allocation webhook must be an http(s) URL")
    if len(json.dumps(settings.properties)) > 16 * 1024:
        raise PolicyError("properties-too-large", "initial properties are limited to 16 KiB of JSON")


def _anchored(conn: Connection, authority: Authority, cert: x509.Certificate) -> None:
    """A group's signing certificate must be, or chain to, a CA devid already trusts for IDevIDs
    (its own manufacturing CA or a registered manufacturer's): proof of possession was done there."""
    pool = [m.certificate for m in manufacturers.list_all(conn)]
    pool += [ca.certificate for ca in authority.cas.values()]
    trusted = {cert_der(p) for p in pool}
    current: x509.Certificate | None = cert
    for _ in range(MAX_DEPTH):
        if current is None:
            break
        if cert_der(current) in trusted:
            return
        current = issuer_among(current, pool)
    raise PolicyError(
        "signing-cert-untrusted",
        f"signing certificate {cert.subject.rfc4514_string()!r} is not devid's manufacturing CA or a "
        "registered manufacturer CA, and is not signed by one: register its CA first",
    )


def _signing(
    conn: Connection, authority: Authority, data: bytes | None, what: str
) -> tuple[bytes | None, str | None]:
    if data is None:
        return None, None
    certs = load_certificates(data)
    if len(certs) != 1:
        raise PolicyError("cert-count", f"the {what} file must hold exactly one certificate")
    check_ca_certificate(certs[0], authority.clock.now(), what)
    _anchored(conn, authority, certs[0])
    der = cert_der(certs[0])
    return der, fingerprint(der)


def create(
    authority: Authority,
    kind: Kind,
    name: str,
    settings: Settings,
    *,
    signing_cert: bytes | None = None,
    secondary_cert: bytes | None = None,
    device_cert: bytes | None = None,
    actor: str = "cli",
) -> EnrollmentInfo:
    """Create a group (needs `signing_cert`) or an individual enrollment (`name` = device serial,
    `device_cert` optionally pins its IDevID)."""
    check_name(name, "enrollment")
    if kind is Kind.GROUP and signing_cert is None:
        raise PolicyError("signing-cert-required", "an enrollment group needs a signing certificate")
    if kind is Kind.INDIVIDUAL and (signing_cert or secondary_cert):
        raise PolicyError("signing-cert-individual", "an individual enrollment has no signing certificates")
    now = authority.clock.now()
    with change(authority, "enrollment.create", f"{kind.value}:{name}", actor, _row_values(settings)) as conn:
        if conn.execute(
            select(enrollments.c.id).where(enrollments.c.kind == kind.value, enrollments.c.name == name)
        ).first():
            raise ConflictError(
                "duplicate-enrollment", f"an enrollment {kind.value} named {name!r} already exists"
            )
        _check_settings(conn, settings)
        primary, primary_fp = _signing(conn, authority, signing_cert, "signing certificate")
        secondary, secondary_fp = _signing(conn, authority, secondary_cert, "secondary signing certificate")
        pinned = None
        if device_cert is not None:
            certs = load_certificates(device_cert)
            if len(certs) != 1:
                raise PolicyError(
                    "cert-count", "the device certificate file must hold exactly one certificate"
                )
            pinned = fingerprint(cert_der(certs[0]))
        conn.execute(
            insert(enrollments).values(
                kind=kind.value,
                name=name,
                primary_der=primary,
                primary_fingerprint=primary_fp,
                secondary_der=secondary,
                secondary_fingerprint=secondary_fp,
                certificate_fingerprint=pinned,
                enabled=True,
                created_at=now,
                updated_at=now,
                version=1,
                **_row_values(settings),
            )
        )
        info = get(conn, kind, name)
        outbox.emit(
            conn, now, "enrollment.changed", f"{kind.value}:{name}", {"change": "created", **info.to_json()}
        )
        return info


def update(
    authority: Authority,
    kind: Kind,
    name: str,
    *,
    settings: Settings | None = None,
    enabled: bool | None = None,
    secondary_cert: bytes | None = None,
    version: int | None = None,
    actor: str = "cli",
) -> EnrollmentInfo:
    """Change an enrollment's settings, enable or disable it, or set its secondary signing
    certificate (CA rotation); a stale `version` gets ConflictError and changes nothing."""
    values: dict[str, Any] = {}
    if settings is not None:
        values.update(_row_values(settings))
    if enabled is not None:
        values["enabled"] = enabled
    now = authority.clock.now()
    action = (
        "enrollment.update" if enabled is None else ("enrollment.enable" if enabled else "enrollment.disable")
    )
    with change(authority, action, f"{kind.value}:{name}", actor, dict(values)) as conn:
        row = by_name(conn, enrollments, name, "enrollment", kind=kind.value)
        if settings is not None:
            _check_settings(conn, settings)
        if secondary_cert is not None:
            if kind is not Kind.GROUP:
                raise PolicyError(
                    "signing-cert-individual", "an individual enrollment has no signing certificates"
                )
            values["secondary_der"], values["secondary_fingerprint"] = _signing(
                conn, authority, secondary_cert, "secondary signing certificate"
            )
        update_versioned(conn, enrollments, row, version, {**values, "updated_at": now})
        info = get(conn, kind, name)
        outbox.emit(
            conn, now, "enrollment.changed", f"{kind.value}:{name}", {"change": action, **info.to_json()}
        )
        return info


def get(conn: Connection, kind: Kind, name: str) -> EnrollmentInfo:
    return EnrollmentInfo.from_row(by_name(conn, enrollments, name, "enrollment", kind=kind.value))


def list_all(conn: Connection, kind: Kind | None = None) -> list[EnrollmentInfo]:
    query = select(enrollments).order_by(enrollments.c.id)
    if kind is not None:
        query = query.where(enrollments.c.kind == kind.value)
    return [EnrollmentInfo.from_row(r) for r in conn.execute(query)]
