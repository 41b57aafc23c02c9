"""The compact revocation filter: which certificates of one CA are revoked, exactly.

A private CA knows its whole issued universe (every certificate carries a dense index under its
CA in its serial), so the filter stores the revoked indices exactly (Golomb-coded, within a few
percent of log2 C(N, R) bits) and answers every index below its universe without false positives.
An index at or past the universe was issued after the filter was built: NOT_COVERED, and the
caller asks OCSP or refuses, by its policy.

Payload of a FILTER envelope: universe, then the revoked set. Of a FILTER_DELTA: the new universe,
then the indices newly revoked and those no longer revoked (a hold lifted, or a certificate that
expired and left the filter), both coded below the new universe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric import ec

from devid.errors import PolicyError
from devid.pki.serials import serial_index
from devid.revocation.golomb import MAX_UNIVERSE, IndexSet, apply_changes, format_error, varint
from devid.revocation.signed import (
    Header,
    Kind,
    Signer,
    Versioned,
    check_successor,
    open_envelope,
    seal,
    verifying_key,
)


class FilterAnswer(StrEnum):
    REVOKED = "revoked"
    GOOD = "good"
    #: Issued after the filter was built, or a serial that carries no index: the filter cannot say.
    NOT_COVERED = "not-covered"


@dataclass(frozen=True)
class RevocationFilter(Versioned):
    """A loaded, verified filter of one CA; `apply` a verified delta to get the next version."""

    header: Header
    revoked: IndexSet
    #: The CA key this filter verified with: deltas applied to it must verify with it too.
    public_key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)

    @property
    def ca_name(self) -> str:
        return self.header.scope

    @property
    def universe(self) -> int:
        """Indices below this are covered: the CA had issued up to here when the filter was built."""
        return self.revoked.universe

    def check_index(self, index: int) -> FilterAnswer:
        if not 0 <= index < self.revoked.universe:
            return FilterAnswer.NOT_COVERED
        return FilterAnswer.REVOKED if index in self.revoked else FilterAnswer.GOOD

    def check_serial(self, serial: int) -> FilterAnswer:
        """The answer for a certificate of this CA with serial `serial`."""
        index = serial_index(serial)
        return FilterAnswer.NOT_COVERED if index is None else self.check_index(index)

    def apply(self, delta: bytes) -> RevocationFilter:
        """The filter `delta` (signed by the same CA) makes of this one; this one is left as it was.

        Refuses (PolicyError) a delta that is not newer (`filter-version-older`), that starts from
        another version (`filter-delta-base`), for another CA (`filter-scope`), or broken."""
        header, reader = open_envelope(delta, self.public_key, Kind.FILTER_DELTA)
        check_successor(self.header, header)
        universe = reader.varint(MAX_UNIVERSE)
        added, removed = reader.index_set(universe), reader.index_set(universe)
        reader.end()
        if universe < self.universe:
            raise format_error(f"delta shrinks the universe from {self.universe} to {universe}")
        revoked = IndexSet.of(apply_changes(self.revoked, added, removed), universe)
        return RevocationFilter(header.as_snapshot(Kind.FILTER), revoked, self.public_key)


def build_filter(
    revoked_indices: Iterable[int],
    universe: int,
    *,
    version: int,
    ca_name: str,
    issued_at: datetime,
    next_update: datetime,
    sign: Signer,
) -> bytes:
    """The signed filter of CA `ca_name`: `revoked_indices` are revoked, every other index below
    `universe` (the CA's issued count) is good."""
    revoked = IndexSet.of(revoked_indices, universe)
    header = Header(Kind.FILTER, ca_name, version, issued_at, next_update)
    return seal(header, varint(universe) + revoked.encode(), sign)


def load_filter(
    data: bytes, public_key: ec.EllipticCurvePublicKey, *, held: RevocationFilter | None = None
) -> RevocationFilter:
    """Verify and decode a full filter; with `held`, refuse one for another CA or older than it."""
    header, reader = open_envelope(data, public_key, Kind.FILTER)
    if held is not None:
        check_successor(held.header, header)
    universe = reader.varint(MAX_UNIVERSE)
    revoked = reader.index_set(universe)
    reader.end()
    return RevocationFilter(header, revoked, public_key)


def diff_filters(
    old: RevocationFilter | bytes,
    new: RevocationFilter | bytes,
    *,
    sign: Signer,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> bytes:
    """The signed delta taking `old` to `new` (same CA, newer version, universe not shrinking); it
    carries `new`'s version and times. Filters given as bytes are loaded with `public_key` (by
    default the public half of `sign`, when it is a key)."""
    old_view, new_view = (
        f if isinstance(f, RevocationFilter) else load_filter(f, verifying_key(sign, public_key))
        for f in (old, new)
    )
    if new_view.ca_name != old_view.ca_name:
        raise PolicyError("filter-scope", f"cannot diff {old_view.ca_name!r} against {new_view.ca_name!r}")
    if new_view.version <= old_view.version:
        raise PolicyError("filter-version-older", "a delta goes from an older version to a newer one")
    if new_view.universe < old_view.universe:
        raise PolicyError("filter-index-range", "the universe of a CA only grows")
    before, after = set(old_view.revoked), set(new_view.revoked)
    universe = new_view.universe
    header = Header(
        Kind.FILTER_DELTA,
        new_view.ca_name,
        new_view.version,
        new_view.issued_at,
        new_view.next_update,
        base_version=old_view.version,
    )
    added, removed = IndexSet.of(after - before, universe), IndexSet.of(before - after, universe)
    return seal(header, varint(universe) + added.encode() + removed.encode(), sign)
