"""How big devid's status data is, and how long it takes to reach a device over a constrained link.

For each issuing CA, the report measures what was actually signed and recorded in `published`
(the full CRL, the largest shard CRL, the latest delta CRL, the filter and the delta between its
two latest versions), one OCSP response (RFC 5019 request, the responder certificate attached) and
one compact status answer (COSE_Sign1) signed for the same real certificate, and the allowlist of the
largest hub or enrollment group; and what leaving short-lived and session certificates out of the
CRLs saves. Each size is turned into delivery time over NB-IoT and LoRaWAN downlinks.

The OCSP response, the compact answer and the allowlist come from the status service (a higher
layer): the caller passes them in as `StatusSigners`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from sqlalchemy import Connection, func, select

from devid.authority.core import Authority
from devid.authority.status_signing import blob_signer
from devid.revocation import crl, records
from devid.revocation.filter import diff_filters
from devid.revocation.publisher import FILTER, Publisher
from devid.store.engine import reading
from devid.store.models import certificates, devices, enrollments, hubs, published
from devid.store.states import CertificateStatus, DeviceState

#: NB-IoT application-layer downlink (Cat-NB1, single-tone, after protocol overhead).
NBIOT_BITS_PER_S = 26_000
#: LoRaWAN application payload per downlink frame at SF12 (EU868, DR0).
LORAWAN_PAYLOAD = 51
#: LoRaWAN header and MIC around the payload (MHDR 1, FHDR 7, FPort 1, MIC 4).
LORAWAN_OVERHEAD = 13
LORAWAN_DUTY_CYCLE = 0.01


def lora_airtime(payload: int, sf: int = 12, bandwidth: float = 125_000.0) -> float:
    """Seconds on air of one LoRa frame carrying `payload` application bytes (Semtech AN1200.13:
    preamble of 8 symbols, explicit header, coding rate 4/5, low-data-rate optimisation at SF11 and
    SF12, no payload CRC, as LoRaWAN downlinks are sent)."""
    symbol: float = 2**sf / bandwidth
    low_rate = 1 if sf >= 11 else 0
    bits = 8 * (payload + LORAWAN_OVERHEAD) - 4 * sf + 28
    symbols = 8 + max(math.ceil(bits / (4 * (sf - 2 * low_rate))) * 5, 0)
    return (8 + 4.25) * symbol + symbols * symbol


#: One full SF12 frame: about 2.8 s on air, so 1 % duty cycle allows about 13 frames (650 B) an hour.
FRAME_AIRTIME_S = lora_airtime(LORAWAN_PAYLOAD)


@dataclass(frozen=True)
class Row:
    """One measured item: its size and what delivering it to one device costs."""

    name: str
    bytes: int
    detail: str = ""

    @property
    def nbiot_s(self) -> float:
        return self.bytes * 8 / NBIOT_BITS_PER_S

    @property
    def lorawan_frames(self) -> int:
        return math.ceil(self.bytes / LORAWAN_PAYLOAD)

    @property
    def lorawan_hours(self) -> float:
        return self.lorawan_frames * FRAME_AIRTIME_S / LORAWAN_DUTY_CYCLE / 3600

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bytes": self.bytes,
            "nbiot_s": round(self.nbiot_s, 3),
            "lorawan_frames": self.lorawan_frames,
            "lorawan_hours": round(self.lorawan_hours, 3),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class StatusSigners:
    """What the status service signs on demand: an OCSP response for a request (DER in, DER
    out), the compact status answer (COSE_Sign1) of a CA's serial, and the current allowlist of a
    hub or enrollment group."""

    ocsp: Callable[[bytes], bytes]
    allowlist: Callable[[str], bytes]
    compact: Callable[[str, int], bytes]


def size_report(authority: Authority, signers: StatusSigners) -> list[Row]:
    """The rows of the report for the store as it is now (publishing first if nothing was)."""
    names = [ca.name for ca in authority.device_issuers()]
    with reading(authority.engine) as conn:
        missing = any(records.latest(conn, crl.FULL, name) is None for name in names)
    if missing:
        Publisher(authority).publish()
    rows: list[Row] = []
    entry_sizes: list[int] = []
    with reading(authority.engine) as conn:
        for name in names:
            ca_rows, sizes = _crl_rows(conn, name)
            rows += ca_rows
            entry_sizes += sizes
            rows += _filter_rows(authority, conn, name)
        probes = {name: found for name in names if (found := _probe(conn, name)) is not None}
        largest = _largest_population(conn)
        short_lived = {name: _revoked_short_lived(conn, authority, name) for name in names}
    for name, (cert, status) in probes.items():
        request = ocsp.OCSPRequestBuilder().add_certificate(
            cert, authority.cas[name].certificate, hashes.SHA1()
        )
        der = signers.ocsp(request.build().public_bytes(serialization.Encoding.DER))
        compact = signers.compact(name, cert.serial_number)
        bare = ocsp_without_certs(der)
        rows += [
            Row(f"ocsp {name}", len(der), f"{status} certificate, delegated responder"),
            Row(f"ocsp-nocert {name}", len(bare), "the same, the responder certificate left out"),
            Row(
                f"cose-status {name}",
                len(compact),
                f"{status} certificate, COSE_Sign1 ES256 ({len(der) / len(compact):.1f}x smaller than OCSP, "
                f"{len(bare) / len(compact):.1f}x without its certificate)",
            ),
        ]
    if largest is not None:
        scope, count = largest
        rows.append(Row(f"allowlist {scope}", len(signers.allowlist(scope)), f"{count} active devices"))
    if entry_sizes:  # what one more line of a CRL costs, measured over the CRLs above
        per_entry = sum(entry_sizes) / len(entry_sizes)
        rows += [
            Row(
                f"crl-saved {name}",
                round(count * per_entry),
                f"{count} revoked short-lived x {per_entry:.1f} B/entry",
            )
            for name, count in short_lived.items()
        ]
    return rows


def _crl_rows(conn: Connection, name: str) -> tuple[list[Row], list[int]]:
    """The CA's full, largest shard and delta CRL; and the size of each entry they list."""
    rows: list[Row] = []
    sizes: list[int] = []

    def entries(der: bytes) -> int:
        listed = asn1_crl.CertificateList.load(der)["tbs_cert_list"]["revoked_certificates"]
        sizes.extend(len(entry.dump()) for entry in listed)
        return len(listed)

    full = records.latest(conn, crl.FULL, name)
    if full is not None:
        rows.append(
            Row(f"crl {name}", len(full.data), f"{entries(full.data)} entries, cRLNumber {full.number}")
        )
    shards = [
        found
        for shard in range(records.ca_state(conn, name).crl_shards)
        if (found := records.latest(conn, crl.FULL, crl.scope(name, shard))) is not None
    ]
    if shards:
        big = max(shards, key=lambda s: len(s.data))
        detail = f"largest of {len(shards)} shards, {entries(big.data)} entries"
        rows.append(Row(f"crl {big.scope}", len(big.data), detail))
    delta = records.latest(conn, crl.DELTA, name)
    if delta is not None:
        detail = f"{entries(delta.data)} entries since cRLNumber {delta.base_number}"
        rows.append(Row(f"delta-crl {name}", len(delta.data), detail))
    return rows, sizes


def _filter_rows(authority: Authority, conn: Connection, name: str) -> list[Row]:
    """The CA's latest filter and the signed delta from the version before it (if kept)."""
    latest_two = conn.execute(
        select(published.c.number, published.c.base_number, published.c.data)
        .where(published.c.kind == FILTER, published.c.scope == name)
        .order_by(published.c.number.desc())
        .limit(2)
    ).all()
    if not latest_two:
        return []
    new = latest_two[0]
    rows = [Row(f"filter {name}", len(new.data), f"version {new.number}, universe {new.base_number}")]
    if len(latest_two) == 2:
        old = latest_two[1]
        delta = diff_filters(old.data, new.data, sign=blob_signer(authority, name))
        rows.append(Row(f"filter-delta {name}", len(delta), f"version {old.number} to {new.number}"))
    return rows


def ocsp_without_certs(der: bytes) -> bytes:
    """An OCSP response without the responder certificate it carries (outside the signed part, so
    it still verifies): what a device that holds the responder certificate needs."""
    response = asn1_ocsp.OCSPResponse.load(der)
    basic = response["response_bytes"]["response"].parsed
    basic["certs"] = None
    response["response_bytes"]["response"] = basic
    return bytes(response.dump(force=True))


def _probe(conn: Connection, name: str) -> tuple[x509.Certificate, str] | None:
    """The CA's latest revoked certificate (a revoked answer is the larger), else its latest one,
    and its status: what the OCSP and compact status rows ask about; None if the CA issued none."""
    found = conn.execute(
        select(certificates.c.der, certificates.c.status)
        .where(certificates.c.issuer_id == records.ca_state(conn, name).id)
        .order_by((certificates.c.status == CertificateStatus.REVOKED).desc(), certificates.c.id.desc())
        .limit(1)
    ).first()
    if found is None:
        return None
    return x509.load_der_x509_certificate(found.der), str(found.status)


def _largest_population(conn: Connection) -> tuple[str, int] | None:
    """The hub or enrollment group with the most active devices, and how many."""
    found: list[tuple[str, int]] = []
    for table, column in ((hubs, devices.c.hub_id), (enrollments, devices.c.enrollment_id)):
        row = conn.execute(
            select(table.c.name, func.count().label("n"))
            .join(devices, column == table.c.id)
            .where(devices.c.state == DeviceState.ACTIVE)
            .group_by(table.c.name)
            .order_by(func.count().desc(), table.c.name)
            .limit(1)
        ).first()
        if row is not None:
            found.append((row.name, row.n))
    return max(found, key=lambda f: f[1]) if found else None


def _revoked_short_lived(conn: Connection, authority: Authority, name: str) -> int:
    """Revoked, unexpired certificates of the CA that no CRL lists: short-lived and session ones
    (an index, no shard)."""
    return int(
        conn.execute(
            select(func.count()).where(
                certificates.c.issuer_id == records.ca_state(conn, name).id,
                certificates.c.status == CertificateStatus.REVOKED,
                certificates.c.idx.is_not(None),
                certificates.c.shard.is_(None),
                certificates.c.not_after > authority.clock.now(),
            )
        ).scalar_one()
    )
