"""Revocation filter figures for `devid bench revocation`: size, build and lookup time of the exact
Golomb-coded filter against Mozilla's `filtercascade` (the Bloom filter cascade behind CRLite)
built from the same sets in the same run, beside the information floor log2 C(N, R) / R.

Synthetic sets: N certificates issued, R of them revoked at random. The cascade is given what
CRLite gives it: the revoked keys to include and every other issued key to exclude. Our sizes
include the envelope header and the 64-byte signature; the cascade's are its bare file.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from filtercascade import FilterCascade

from devid.bench import Figure
from devid.revocation.filter import build_filter, diff_filters, load_filter

ISSUED = 1_000_000
REVOKED = (10_000, 100_000)
DELTA_REVOCATIONS = 100
LOOKUPS = 100_000
#: A gateway holds the filter of a CA with this many revocations in memory.
GATEWAY_REVOKED = 300_000


def _key(index: int) -> bytes:
    return index.to_bytes(8, "big")


def _cascade(revoked: set[int], issued: int) -> tuple[FilterCascade, int, float]:
    """Mozilla's cascade for the same set, its serialized size and build seconds."""
    include = {_key(i) for i in revoked}
    exclude = [_key(i) for i in range(issued) if i not in revoked]
    start = time.perf_counter()
    cascade = FilterCascade()
    cascade.set_crlite_error_rates(include_len=len(include), exclude_len=len(exclude))
    cascade.initialize(include=include, exclude=exclude)
    seconds = time.perf_counter() - start
    out = io.BytesIO()
    cascade.tofile(out)
    return cascade, len(out.getvalue()), seconds


def _floor_bytes(revoked: int, issued: int) -> float:
    """log2 C(issued, revoked) / 8: the fewest bytes any exact encoding needs on average."""
    bits = math.lgamma(issued + 1) - math.lgamma(revoked + 1) - math.lgamma(issued - revoked + 1)
    return bits / math.log(2) / 8


def filter_figures(
    seed: int,
    issued: int = ISSUED,
    revoked_counts: Sequence[int] = REVOKED,
    gateway_revoked: int = GATEWAY_REVOKED,
    lookups: int = LOOKUPS,
) -> list[Figure]:
    """The filter figures for random sets of `revoked_counts` (and `gateway_revoked`) of `issued`
    drawn from `seed`. Signed with a throwaway P-256 key made for the run: a signature's size and
    cost do not depend on which key makes it."""
    signer = ec.generate_private_key(ec.SECP256R1())
    public = signer.public_key()
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)

    def build(revoked: set[int], issued: int, version: int) -> bytes:
        return build_filter(
            revoked,
            issued,
            version=version,
            ca_name="operational",
            issued_at=now,
            next_update=now + timedelta(hours=6),
            sign=signer,
        )

    figures: list[Figure] = []
    probes = [rng.randrange(issued) for _ in range(lookups)]
    for count in revoked_counts:
        case = f"{count}_of_{issued}"
        revoked = set(rng.sample(range(issued), count))
        start = time.perf_counter()
        blob = build(revoked, issued, 1)
        build_s = time.perf_counter() - start
        cascade, cascade_bytes, cascade_s = _cascade(revoked, issued)
        figures += [
            Figure(
                f"filter.bytes_per_revoked.{case}",
                len(blob) / count,
                "B/revoked",
                cascade_bytes / count,
                "filtercascade (CRLite)",
                f"signed, header included; the floor is {_floor_bytes(count, issued) / count:.3f}",
            ),
            Figure(
                f"filter.floor_bytes_per_revoked.{case}", _floor_bytes(count, issued) / count, "B/revoked"
            ),
            Figure(f"filter.build_s.{case}", build_s, "s", cascade_s, "filtercascade (CRLite)", "signed"),
        ]
        start = time.perf_counter()
        view = load_filter(blob, public)
        figures.append(
            Figure(f"filter.load_s.{case}", time.perf_counter() - start, "s", note="verify + decode")
        )
        if count == revoked_counts[-1]:
            start = time.perf_counter()
            for i in probes:
                view.check_index(i)
            ours_us = (time.perf_counter() - start) / lookups * 1e6
            keys = [_key(i) for i in probes]
            start = time.perf_counter()
            for key in keys:
                _ = key in cascade
            cascade_us = (time.perf_counter() - start) / lookups * 1e6
            figures.append(
                Figure("filter.lookup_us", ours_us, "µs", cascade_us, "filtercascade (CRLite)", case)
            )
        if count == revoked_counts[0]:
            good = [i for i in range(issued) if i not in revoked]
            newer = build(revoked | set(rng.sample(good, DELTA_REVOCATIONS)), issued, 2)
            delta = diff_filters(blob, newer, sign=signer)
            figures.append(
                Figure(
                    f"filter.delta_bytes.{DELTA_REVOCATIONS}",
                    len(delta),
                    "B",
                    len(newer),
                    "the full new filter",
                    f"signed delta: {DELTA_REVOCATIONS} new revocations onto {case}",
                )
            )
    revoked = set(rng.sample(range(issued), gateway_revoked))
    blob = build(revoked, issued, 1)
    start = time.perf_counter()
    view = load_filter(blob, public)
    case = f"{gateway_revoked}_of_{issued}"
    figures += [
        Figure(f"filter.load_s.{case}", time.perf_counter() - start, "s", note="what a gateway loads"),
        Figure(
            f"filter.memory_mb.{case}",
            view.revoked.memory_bytes() / 1e6,
            "MB",
            note="the loaded lookup structure (a sorted array of 8-byte indices)",
        ),
    ]
    return figures
