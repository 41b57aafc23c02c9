"""`devid bench revocation`: issue 9's figures, each beside a baseline measured in the same run.

Sections (`Section`):
- ocsp: `devid.bench.ocsp.run` (a real `devid serve --http-port` against `openssl ocsp -index`).
- compact: `devid.bench.compact_status.figures` (COSE_Sign1 status answers against OCSP responses).
- filter: `devid.bench.filter.filter_figures` (our Golomb filter against Mozilla's filtercascade).
- crl: a full CRL of N revoked certificates through `devid.revocation.crl.build` on a real store,
  against a bare cryptography `CertificateRevocationListBuilder` loop signing the same entries.
- mass: a production lot of N devices revoked in one `revoke(...)`, then `Publisher.publish()`
  (delta CRL, every shard CRL, the filter) and the OCSP responder answering revoked for a sample,
  against the same revocation one device at a time (a sample, extrapolated).
- gateway: `devid.bench.gateway.run`, and the resident memory of a 300,000-revoked filter in the
  gateway's `FilterFormat` against the same set held as a Python set of serials.

Stores are filled by bulk insert, not by issuing (1,000,000 signatures would take the bench's whole
budget): synthetic certificate rows carry what the status code reads (serial, index, shard, status,
reason, times) and a placeholder DER no status path opens.
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import insert, select, update

from devid.authority.core import Authority
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench import compact_status as compact_bench
from devid.bench import filter as filter_bench
from devid.bench import gateway as gateway_bench
from devid.bench import ocsp as ocsp_bench
from devid.errors import RequestInvalid
from devid.gateway.formats import FilterFormat
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import indexed_serial, serial_hex
from devid.publish.service import status_service
from devid.revocation import crl
from devid.revocation.filter import build_filter
from devid.revocation.publisher import Publisher
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates, devices
from devid.store.states import CertificateStatus, DeviceState

CA = "operational"
#: Rows per INSERT executemany: big enough that the per-statement overhead vanishes.
BATCH = 20_000
#: Reasons the synthetic revocations cycle through: with and without a reasonCode entry extension.
_REASONS = (Reason.KEY_COMPROMISE, Reason.CESSATION_OF_OPERATION, Reason.SUPERSEDED, Reason.UNSPECIFIED)
_PASSPHRASE = b"devid bench revocation passphrase"


class Section(StrEnum):
    OCSP = "ocsp"
    COMPACT = "compact"
    FILTER = "filter"
    CRL = "crl"
    MASS = "mass"
    GATEWAY = "gateway"


def parse_sections(text: str) -> tuple[Section, ...]:
    """`ocsp,crl` -> the sections, in the order given; RequestInvalid `bench-section` for others."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = [s.value for s in Section]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise RequestInvalid(
            "bench-section", f"unknown section(s) {', '.join(unknown) or '(none)'}: use {', '.join(known)}"
        )
    return tuple(dict.fromkeys(Section(name) for name in names))


@dataclass(frozen=True)
class Sizes:
    """How big each section's sets are; `QUICK` is a smoke run's."""

    crl_revoked: tuple[int, ...] = (10_000, 1_000_000)
    mass_devices: int = 100_000
    #: Devices of other lots in the same store, untouched by the mass revocation.
    other_devices: int = 100_000
    #: Devices revoked one at a time for the baseline, and OCSP requests answered after the mass one.
    sample: int = 1_000
    filter_issued: int = filter_bench.ISSUED
    filter_revoked: tuple[int, ...] = filter_bench.REVOKED
    filter_gateway_revoked: int = filter_bench.GATEWAY_REVOKED
    filter_lookups: int = filter_bench.LOOKUPS
    gateway_revoked: int = 300_000
    gateway_issued: int = 3_000_000
    gateway_connections: int = 300
    ocsp_seconds: float = 5.0
    #: Certificates asked about by the compact-status section (half of them revoked).
    compact_answers: int = 5_000


QUICK = Sizes(
    crl_revoked=(1_000, 5_000),
    mass_devices=2_000,
    other_devices=1_000,
    sample=50,
    filter_issued=20_000,
    filter_revoked=(200, 2_000),
    filter_gateway_revoked=5_000,
    filter_lookups=10_000,
    gateway_revoked=3_000,
    gateway_issued=30_000,
    gateway_connections=20,
    ocsp_seconds=1.0,
    compact_answers=500,
)


def run(sections: Sequence[Section], sizes: Sizes, db: str | None = None) -> Iterator[list[Figure]]:
    """Each section's figures as it finishes (a full run takes minutes). `db`: an empty database
    URL the mass revocation is measured on too (e.g. PostgreSQL), besides SQLite."""
    for section in sections:
        if section is Section.OCSP:
            yield ocsp_bench.run(sizes.ocsp_seconds)
        elif section is Section.COMPACT:
            with _authority() as authority:
                yield compact_bench.figures(authority, sizes.compact_answers)
        elif section is Section.FILTER:
            yield filter_bench.filter_figures(
                1,
                sizes.filter_issued,
                sizes.filter_revoked,
                sizes.filter_gateway_revoked,
                sizes.filter_lookups,
            )
        elif section is Section.CRL:
            yield crl_figures(sizes.crl_revoked)
        elif section is Section.MASS:
            yield mass_figures(sizes.mass_devices, sizes.other_devices, sizes.sample)
            if db is not None:
                yield mass_figures(sizes.mass_devices, sizes.other_devices, sizes.sample, db)
        else:
            yield [
                *gateway_bench.run(sizes.gateway_connections),
                *gateway_memory_figures(sizes.gateway_revoked, sizes.gateway_issued),
            ]


# --- a store filled by bulk insert ----------------------------------------------------------------


@contextmanager
def _authority(db: str | None = None) -> Iterator[Authority]:
    """A throwaway home (SQLite in a temporary directory unless `db`) with a public URL, so
    certificates have CRL shards; its CA keys opened before anything is timed."""
    with tempfile.TemporaryDirectory(prefix="devid-bench-revocation-") as tmp:
        home = init_home(
            Path(tmp) / "home",
            org="Bench",
            passphrase=_PASSPHRASE,
            db_url=db,
            public_url="http://127.0.0.1:8080",
        )
        authority = open_authority(home, _PASSPHRASE)
        try:
            for ca in authority.cas.values():
                _ = ca.key
            yield authority
        finally:
            authority.close()


@dataclass(frozen=True)
class _Filled:
    serials: list[int]
    #: The `devices.serial` of each certificate's device (empty without devices).
    device_serials: list[str]


def _fill(
    authority: Authority,
    count: int,
    *,
    revoked_at: datetime | None = None,
    lot: str | None = None,
) -> _Filled:
    """`count` synthetic LDevID rows under CA `CA` with the next indices (and serials carrying
    them), revoked at `revoked_at` (reasons cycling through _REASONS) or valid; with `lot`, each
    with its own ACTIVE device of that lot."""
    now = authority.clock.now()
    with reading(authority.engine) as conn:
        ca = conn.execute(
            select(cas.c.id, cas.c.next_index, cas.c.revocation_gen, cas.c.crl_shards).where(cas.c.name == CA)
        ).one()
    start = ca.next_index
    serials = [indexed_serial(start + i) for i in range(count)]
    device_serials: list[str] = []
    device_ids: list[int | None] = [None] * count
    if lot is not None:
        device_serials = [f"{lot}-{i:07d}" for i in range(count)]
        for first in range(0, count, BATCH):
            rows = [
                {
                    "serial": serial,
                    "model": "bench",
                    "lot": lot,
                    "state": DeviceState.ACTIVE,
                    "created_at": now,
                    "updated_at": now,
                }
                for serial in device_serials[first : first + BATCH]
            ]
            with writing(authority.engine) as conn:
                conn.execute(insert(devices), rows)
        with reading(authority.engine) as conn:
            ids = dict(conn.execute(select(devices.c.serial, devices.c.id).where(devices.c.lot == lot)).all())
        device_ids = [ids[serial] for serial in device_serials]
    generation = ca.revocation_gen + 1 if revoked_at is not None else None
    status = CertificateStatus.REVOKED if revoked_at is not None else CertificateStatus.VALID
    for first in range(0, count, BATCH):
        rows = []
        for i in range(first, min(first + BATCH, count)):
            idx = start + i
            rows.append(
                {
                    "serial": serial_hex(serials[i]),
                    "issuer_id": ca.id,
                    "device_id": device_ids[i],
                    "profile": ProfileName.LDEVID.value,
                    "subject": f"CN=bench {idx}",
                    "not_before": now - timedelta(days=1),
                    "not_after": now + timedelta(days=365),
                    "fingerprint": f"{ca.id:08x}{idx:056x}",
                    "status": status,
                    "status_at": revoked_at or now,
                    "der": b"\x30\x00",
                    "created_at": now,
                    "idx": idx,
                    "shard": idx % ca.crl_shards,
                    "revoked_at": revoked_at,
                    "reason": int(_REASONS[i % len(_REASONS)]) if revoked_at is not None else None,
                    "status_gen": generation,
                }
            )
        with writing(authority.engine) as conn:
            conn.execute(insert(certificates), rows)
    with writing(authority.engine) as conn:
        bumped = {"next_index": cas.c.next_index + count}
        if generation is not None:
            bumped["revocation_gen"] = cas.c.revocation_gen + 1
        conn.execute(update(cas).where(cas.c.id == ca.id).values(**bumped))
    return _Filled(serials, device_serials)


# --- crl -------------------------------------------------------------------------------------------


def _bare_crl(authority: Authority, serials: Sequence[int], revoked_at: datetime) -> tuple[float, int]:
    """Baseline: the same entries through cryptography's builder alone (no store read, no record),
    signed with the same CA key; seconds and DER size."""
    ca = authority.cas[CA]
    now = authority.clock.now().astimezone(UTC).replace(microsecond=0)
    start = time.perf_counter()
    reasons: dict[Reason, list[x509.Extension[x509.ExtensionType]]] = {
        reason: []
        if reason is Reason.UNSPECIFIED
        else [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(reason.flag))]
        for reason in _REASONS
    }
    entries = [
        x509.RevokedCertificateBuilder(serial, revoked_at, reasons[_REASONS[i % len(_REASONS)]]).build()
        for i, serial in enumerate(serials)
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.certificate.subject,
        last_update=now,
        next_update=now + crl.CRL_LIFETIME,
        extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1))],
        revoked_certificates=entries,
    )
    der = builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return time.perf_counter() - start, len(der)


def crl_figures(revoked_counts: Sequence[int]) -> list[Figure]:
    """Build time and size of the full CRL of CA `operational` with each count revoked (ascending;
    the store grows from one to the next)."""
    figures: list[Figure] = []
    serials: list[int] = []
    with _authority() as authority:
        revoked_at = authority.clock.now().replace(microsecond=0) - timedelta(hours=1)
        for count in sorted(revoked_counts):
            serials += _fill(authority, count - len(serials), revoked_at=revoked_at).serials
            gc.collect()
            start = time.perf_counter()
            built = crl.build(authority, CA)
            seconds = time.perf_counter() - start
            if built.entries != count:
                raise RuntimeError(f"the CRL lists {built.entries} entries, not {count}")
            bare_s, bare_bytes = _bare_crl(authority, serials, revoked_at)
            base = "cryptography's CertificateRevocationListBuilder with the same entries, signed, same key"
            figures += [
                Figure(
                    f"crl.build_s.{count}",
                    seconds,
                    "s",
                    bare_s,
                    base,
                    "devid.revocation.crl.build on SQLite: store read, build, sign, record",
                ),
                Figure(f"crl.bytes.{count}", len(built.der), "B", bare_bytes, base, "DER"),
            ]
    return figures


# --- mass revocation -------------------------------------------------------------------------------


def _statuses(answers: Sequence[bytes]) -> set[ocsp.OCSPCertStatus]:
    return {ocsp.load_der_ocsp_response(der).certificate_status for der in answers}


def mass_figures(count: int, others: int, sample: int, db: str | None = None) -> list[Figure]:
    """Seconds from `revoke(lot)` of `count` devices (beside `others` of another lot) to every CRL,
    the filter and OCSP answering revoked for a sample; baseline: devices revoked one by one."""
    with _authority(db) as authority:
        dialect = authority.engine.dialect.name
        lot = _fill(authority, count, lot="LOT-MASS")
        rest = _fill(authority, others, lot="LOT-OTHER")
        publisher = Publisher(authority)
        publisher.publish()  # the steady state before: every CRL and filter current
        responder = status_service(authority).responder
        issuer = authority.cas[CA].certificate
        rng = random.Random(2)
        requests = [ocsp_bench.ocsp_request(issuer, s) for s in rng.sample(lot.serials, min(sample, count))]
        if _statuses([responder.respond(r).der for r in requests]) != {ocsp.OCSPCertStatus.GOOD}:
            raise RuntimeError("OCSP does not answer good before the revocation")
        gc.collect()

        start = time.perf_counter()
        result = revoke(
            authority, RevokeRequest(Selector.LOT, "LOT-MASS", Reason.KEY_COMPROMISE, "bench"), "bench"
        )
        revoked_s = time.perf_counter() - start
        built = publisher.publish()
        published_s = time.perf_counter() - start - revoked_s
        responder.refresh()
        answers = [responder.respond(r).der for r in requests]
        total_s = time.perf_counter() - start
        ocsp_s = total_s - revoked_s - published_s
        if result.devices != count or _statuses(answers) != {ocsp.OCSPCertStatus.REVOKED}:
            raise RuntimeError(f"revoked {result.devices} devices of {count}, or OCSP still answers good")

        one_by_one = rng.sample(rest.device_serials, min(sample, others))
        start = time.perf_counter()
        for serial in one_by_one:
            revoke(authority, RevokeRequest(Selector.DEVICE, serial, Reason.KEY_COMPROMISE), "bench")
        per_device_s = (time.perf_counter() - start) / len(one_by_one)
    at = "" if db is None else f".{dialect}"
    base = f"the same revocation one device at a time ({len(one_by_one)} revoke() calls, extrapolated)"
    shards = [b for b in built if "/" in b]
    built_what = ", ".join([b for b in built if "/" not in b] + [f"{len(shards)} shard CRLs"])
    return [
        Figure(
            f"revoke.mass_s.{count}{at}",
            total_s,
            "s",
            per_device_s * count,
            base + "; its publish and OCSP not counted",
            f"revoke + publish + OCSP on {dialect}, {count + others} devices in the store",
        ),
        Figure(
            f"revoke.transaction_s.{count}{at}",
            revoked_s,
            "s",
            per_device_s * count,
            base,
            "one revoke(lot) transaction: devices, certificates, outbox events, audit",
        ),
        Figure(
            f"revoke.publish_s.{count}{at}",
            published_s,
            "s",
            note=f"Publisher.publish() rebuilt {built_what}; a full CRL younger than base_every "
            "stays, the delta carries the revocation",
        ),
        Figure(
            f"revoke.ocsp_s.{count}{at}",
            ocsp_s,
            "s",
            note=f"responder.refresh() (drops the pre-signed answers of every changed serial) and "
            f"{len(requests)} answers signed on demand, all revoked; the other "
            f"{count - len(requests)} are signed when first asked",
        ),
        Figure(
            f"revoke.ocsp_answer_us.{count}{at}",
            ocsp_s / len(requests) * 1e6,
            "µs",
            note="per answer in the OCSP phase (refresh included)",
        ),
    ]


# --- gateway memory --------------------------------------------------------------------------------


def hold_status(mode: str, directory: str) -> None:
    """A fresh process's resident-memory growth (MB, printed) from loading the status data in
    `directory`: `filter` into the gateway's FilterFormat, `set` as a Python set of serials."""
    path = Path(directory)
    public = serialization.load_pem_public_key((path / "key.pem").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    gc.collect()
    before = _rss_mb()
    if mode == "filter":
        data = (path / "filter.bin").read_bytes()
        held: object = FilterFormat().load(data, public)
    else:
        data = (path / "serials.txt").read_bytes()
        held = {int(line, 16) for line in data.split()}
    del data
    gc.collect()
    grown = _rss_mb() - before
    print(grown, type(held).__name__, flush=True)  # `held` is alive until measured


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def gateway_memory_figures(revoked: int, issued: int) -> list[Figure]:
    """RSS growth of a gateway process holding `revoked` of `issued` as a filter (FilterFormat),
    against the same revoked serials in a Python set (what a CRL-holding gateway keeps at least)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    indices = sorted(random.Random(3).sample(range(issued), revoked))
    blob = build_filter(
        indices, issued, version=1, ca_name=CA, issued_at=now, next_update=now + timedelta(hours=6), sign=key
    )
    with tempfile.TemporaryDirectory(prefix="devid-bench-gateway-rss-") as tmp:
        path = Path(tmp)
        (path / "filter.bin").write_bytes(blob)
        (path / "serials.txt").write_text("".join(f"{indexed_serial(i):x}\n" for i in indices))
        (path / "key.pem").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        ours, theirs = (_child_rss(mode, path) for mode in ("filter", "set"))
    case = f"{revoked}_revoked"
    return [
        Figure(
            f"gateway.rss_mb.{case}",
            ours,
            "MB",
            theirs,
            "the same revoked serials as a Python set of ints, in the same kind of fresh process",
            f"resident memory growth of a fresh process loading a {len(blob) / 1e6:.2f} MB filter "
            f"({revoked} of {issued} revoked) into the gateway's FilterFormat",
        ),
        Figure(f"gateway.filter_bytes.{case}", len(blob), "B", note="the signed filter the gateway fetches"),
    ]


def _child_rss(mode: str, directory: Path) -> float:
    code = "import sys; from devid.bench.revocation import hold_status; hold_status(*sys.argv[1:])"
    out = subprocess.run(
        [sys.executable, "-c", code, mode, str(directory)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.split()[0])
