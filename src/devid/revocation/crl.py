"""CRLs (RFC 5280 5): full, partitioned by shard, and delta against the latest base of a scope.

Every CRL carries a cRLNumber from its CA's one sequence (a row in the store, so numbers grow
across restarts and processes) and the CA's key identifier; entries carry a reasonCode unless
it is `unspecified` (which 5.3.1 says to leave out). A shard CRL carries a critical
issuingDistributionPoint naming the URL its certificates name, so a relying party that fetched
shard 3 cannot take it for the whole list. A base CRL names its delta in freshestCRL when the
deployment has a public URL. Entries are handed to the builder as one list: adding them one by
one is quadratic in cryptography's builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update

from devid.authority.core import Authority
from devid.authority.status_signing import sign_crl
from devid.errors import ConfigError, NotFoundError
from devid.pki.reasons import Reason
from devid.pki.status_urls import crl_path, url
from devid.revocation import records
from devid.store.engine import reading, writing
from devid.store.models import cas

#: A CRL's nextUpdate; the publisher rebuilds at half of it, so a served CRL never goes stale.
CRL_LIFETIME = timedelta(days=2)
FULL = "crl"
DELTA = "delta-crl"


@dataclass(frozen=True)
class BuiltCrl:
    ca: str
    shard: int | None
    delta: bool
    number: int
    base_number: int | None
    entries: int
    this_update: datetime
    next_update: datetime
    der: bytes

    @property
    def pem(self) -> bytes:
        crl = x509.load_der_x509_crl(self.der)
        return crl.public_bytes(serialization.Encoding.PEM)


def scope(ca: str, shard: int | None) -> str:
    return ca if shard is None else f"{ca}/{shard}"


def build(
    authority: Authority,
    ca_name: str,
    *,
    shard: int | None = None,
    delta: bool = False,
    lifetime: timedelta = CRL_LIFETIME,
) -> BuiltCrl:
    """Build, sign and record one CRL of CA `ca_name`. A delta needs a base of the same scope on
    record (NotFoundError `no-base-crl`); a shard needs the deployment's public URL, which its
    certificates name (ConfigError `public-url-required`)."""
    if ca_name not in authority.cas:
        raise NotFoundError("unknown-ca", f"no CA named {ca_name!r}; known: {', '.join(authority.cas)}")
    ca = authority.cas[ca_name]
    base_url = ca.public_url
    if shard is not None:
        if base_url is None:
            raise ConfigError(
                "public-url-required",
                "shard CRLs name the URL their certificates point to: set the public URL "
                "(`devid serve --public-url URL`)",
            )
        if not 0 <= shard < ca.crl_shards:
            raise NotFoundError("unknown-shard", f"CA {ca_name!r} has shards 0 to {ca.crl_shards - 1}")
    now = authority.clock.now().astimezone(UTC).replace(microsecond=0)
    where = scope(ca_name, shard)
    with reading(authority.engine) as conn:
        state = records.ca_state(conn, ca_name)
        base = records.latest(conn, FULL, where) if delta else None
        if delta and base is None:
            raise NotFoundError("no-base-crl", f"no base CRL of {where} on record: build a full one first")
        entries = (
            records.changed(conn, state, base.generation, now, shard)
            if base is not None
            else records.revoked(conn, state, now, shard)
        )
    number = _next_number(authority, state.id)
    extensions: list[x509.ExtensionType] = [
        x509.CRLNumber(number),
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        ),
    ]
    critical = {x509.IssuingDistributionPoint.oid}
    if shard is not None and base_url is not None:
        extensions.append(
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url(base_url, crl_path(ca_name, shard)))],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            )
        )
    if base is not None:
        extensions.append(x509.DeltaCRLIndicator(base.number))
        critical.add(x509.DeltaCRLIndicator.oid)
    elif base_url is not None:
        delta_url = x509.UniformResourceIdentifier(url(base_url, crl_path(ca_name, shard, delta=True)))
        extensions.append(x509.FreshestCRL([x509.DistributionPoint([delta_url], None, None, None)]))
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.certificate.subject,
        last_update=now,
        next_update=now + lifetime,
        extensions=[x509.Extension(e.oid, e.oid in critical, e) for e in extensions],
        revoked_certificates=[_revoked(entry) for entry in entries],
    )
    der = sign_crl(authority, ca_name, builder).public_bytes(serialization.Encoding.DER)
    built = BuiltCrl(
        ca_name,
        shard,
        delta,
        number,
        base.number if base is not None else None,
        len(entries),
        now,
        now + lifetime,
        der,
    )
    records.record(
        authority.engine,
        DELTA if delta else FULL,
        where,
        number,
        state.revocation_gen,
        built.base_number,
        now,
        now + lifetime,
        der,
    )
    return built


def _reason_extensions(reason: Reason) -> list[x509.Extension[x509.ExtensionType]]:
    if reason is Reason.UNSPECIFIED:
        return []
    value = x509.CRLReason(reason.flag)
    return [x509.Extension(value.oid, False, value)]


#: The entry extensions of each reason, made once: a CRL of 1,000,000 entries builds each entry in µs.
_REASON_EXTENSIONS = {reason: _reason_extensions(reason) for reason in Reason}


def _revoked(entry: records.Entry) -> x509.RevokedCertificate:
    return x509.RevokedCertificateBuilder(
        entry.serial, entry.revoked_at, _REASON_EXTENSIONS[entry.reason]
    ).build()


def _next_number(authority: Authority, ca_id: int) -> int:
    """The CA's next cRLNumber: one sequence in the store for every process and replica (one
    atomic increment: the row lock orders concurrent builders, each gets its own number)."""
    with writing(authority.engine) as conn:
        bump = update(cas).where(cas.c.id == ca_id).values(crl_number=cas.c.crl_number + 1)
        return int(conn.execute(bump.returning(cas.c.crl_number)).scalar_one())
