"""An exact, compact codec for a set of certificate indices below a universe size U.

A private CA knows every index it issued, so "is index i in the set?" needs no false positives:
the set is stored exactly, as Golomb-coded gaps (Golomb 1966). For a random R-subset of U the gaps
are near-geometric, and the Golomb code with parameter m = ceil(log(2-p) / -log(1-p)), p = R/U, is
the optimal prefix code for them (Gallager & Van Voorhis 1975): within about 1 % of the information
floor log2 C(U, R) bits. A set holding more than half the universe is stored as its complement.

Hand-written because no maintained PyPI library does Golomb-coded sets (the GCS packages are
unmaintained and probabilistic; `filtercascade` and the Bloom filter packages are approximate).
Pure Python, kept fast by doing bit work in C: codewords are built as '0'/'1' text joined once and
converted with int(text, 2) (linear for base 2), and the decoder scans that text with str.find.

Layout (all numbers LEB128 varints): count << 1 | complemented, then m (absent when count is 0),
then the codewords, each `q` zeros, a one, and the remainder in truncated binary, padded with zero
bits to a whole byte. The universe is not stored: the container states it once.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator
from itertools import accumulate

from devid.errors import PolicyError

#: Universes above this do not fit array('Q') entries with room to spare; certificate indices are 56-bit.
MAX_UNIVERSE = 1 << 62
_MAX_VARINT_BYTES = 10
#: Most indices applying a delta may hold in memory (a Python set: about 60 bytes an index).
MAX_DELTA_MEMBERS = 1 << 24


def format_error(message: str) -> PolicyError:
    return PolicyError("filter-format", f"malformed revocation data: {message}")


def varint(value: int) -> bytes:
    """`value` (non-negative) as an unsigned LEB128 varint."""
    if value < 0:
        raise PolicyError("filter-number", f"{value} is negative")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def text(value: str) -> bytes:
    """A short name (CA, hub, group) as a length byte and its UTF-8."""
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise PolicyError("filter-scope", f"name {value!r} is over 255 bytes")
    return bytes((len(raw),)) + raw


class Reader:
    """Parses untrusted bytes front to back; every shortfall or excess is a `filter-format` error."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.offset:
            raise format_error("truncated")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def varint(self, limit: int = MAX_UNIVERSE) -> int:
        value = 0
        for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise format_error(f"number {value} over its limit {limit}")
                return value
        raise format_error("varint too long")

    def text(self) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise format_error("name is not UTF-8") from None

    def index_set(self, universe: int) -> IndexSet:
        """One coded set (as `IndexSet.encode` wrote it) of indices below `universe`."""
        head = self.varint()
        count, complemented = head >> 1, bool(head & 1)
        if count > universe:
            raise format_error(f"{count} entries in a universe of {universe}")
        if not count:
            return IndexSet(universe, array("Q"), complemented)
        m = self.varint(limit=universe)
        if m < 1:
            raise format_error("Golomb parameter 0")
        try:
            entries, used = _decode_gaps(self.data[self.offset :], count, m)
        except OverflowError:
            raise format_error("index past 64 bits") from None
        if entries[-1] >= universe:
            raise format_error(f"index {entries[-1]} past the universe {universe}")
        self.offset += used
        return IndexSet(universe, entries, complemented)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise format_error(f"{len(self.data) - self.offset} unexpected trailing bytes")


class IndexSet:
    """A decoded set of indices below `universe`: a sorted array('Q') (8 bytes an entry) searched by
    bisection, holding the members, or for a complemented set the absent indices."""

    __slots__ = ("_sorted", "complemented", "universe")

    def __init__(self, universe: int, sorted_entries: array[int], complemented: bool) -> None:
        self.universe = universe
        self._sorted = sorted_entries
        self.complemented = complemented

    @classmethod
    def of(cls, members: Iterable[int], universe: int) -> IndexSet:
        """The set of `members` (any order, repeats ignored), each in [0, universe)."""
        entries = sorted(set(members))
        if entries and (entries[0] < 0 or entries[-1] >= universe):
            bad = entries[0] if entries[0] < 0 else entries[-1]
            raise PolicyError("filter-index-range", f"index {bad} is outside the universe [0, {universe})")
        if not 0 <= universe <= MAX_UNIVERSE:
            raise PolicyError("filter-index-range", f"universe {universe} out of range")
        return cls(universe, array("Q", entries), False)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self.universe:
            return False
        at = bisect_left(self._sorted, index)
        found = at < len(self._sorted) and self._sorted[at] == index
        return found != self.complemented

    def __len__(self) -> int:
        return self.universe - len(self._sorted) if self.complemented else len(self._sorted)

    def __iter__(self) -> Iterator[int]:
        if not self.complemented:
            return iter(self._sorted)
        return _complement(self._sorted, self.universe)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IndexSet):
            return NotImplemented
        if self.complemented == other.complemented:
            return self._sorted == other._sorted and self.universe == other.universe
        return len(self) == len(other) and all(i in other for i in self)

    def __repr__(self) -> str:
        return f"IndexSet({len(self)} of {self.universe})"

    def memory_bytes(self) -> int:
        """What the lookup structure holds in memory (its array buffer)."""
        return self._sorted.itemsize * len(self._sorted)

    def encode(self) -> bytes:
        """The Golomb-coded form (the universe is not included: the container states it)."""
        store_complement = len(self) > self.universe - len(self)
        if store_complement == self.complemented:
            stored: Iterable[int] = self._sorted
        else:
            stored = _complement(self._sorted, self.universe)
        return _encode(list(stored), self.universe, store_complement)


def apply_changes(held: Collection[int], added: Collection[int], removed: Collection[int]) -> set[int]:
    """`held` with `added` put in and `removed` taken out; refuses (`filter-format`) a change that
    adds a member already held or removes one not held: a delta must be exact. Refuses one that
    would build a set of more than MAX_DELTA_MEMBERS (a complemented set of a few bytes can stand
    for 2**62 indices); the gateway then fetches the full snapshot, which is never expanded."""
    total = len(held) + len(added) + len(removed)
    if total > MAX_DELTA_MEMBERS:
        raise format_error(
            f"a delta over {total} members (more than {MAX_DELTA_MEMBERS}): use the full snapshot"
        )
    result = set(held)
    if any(i in result for i in added) or any(i not in result for i in removed):
        raise format_error("delta adds a member already held or removes one not held")
    result.difference_update(removed)
    result.update(added)
    return result


def _complement(entries: Iterable[int], universe: int) -> Iterator[int]:
    start = 0
    for index in entries:
        yield from range(start, index)
        start = index + 1
    yield from range(start, universe)


def golomb_parameter(count: int, universe: int) -> int:
    """The Golomb m for `count` random members of `universe` (Gallager & Van Voorhis, p = count/universe)."""
    p = count / universe
    if p >= 0.5:
        return 1
    m = math.ceil(math.log(2 - p) / -math.log1p(-p))
    return max(1, min(m, universe))


def _encode(entries: list[int], universe: int, complemented: bool) -> bytes:
    header = varint(len(entries) << 1 | complemented)
    if not entries:
        return header
    m = golomb_parameter(len(entries), universe)
    bits = (m - 1).bit_length()
    # Truncated binary: the first `short` remainders take bits-1 bits, the others `bits` bits.
    short = (1 << bits) - m
    short_format, long_format = f"0{max(bits - 1, 0)}b", f"0{bits}b"
    words = []
    previous = -1
    for index in entries:
        q, r = divmod(index - previous - 1, m)
        previous = index
        if not bits:  # m = 1: the gap in unary, no remainder
            words.append("0" * q + "1")
        elif r < short:
            words.append("0" * q + "1" + format(r, short_format))
        else:
            words.append("0" * q + "1" + format(r + short, long_format))
    bit_text = "".join(words)
    size = -(-len(bit_text) // 8)
    bit_text += "0" * (8 * size - len(bit_text))
    return header + varint(m) + int(bit_text, 2).to_bytes(size, "big")


def encode(members: Iterable[int], universe: int) -> bytes:
    """Golomb-code the set `members` (each in [0, universe)); the universe itself is not written."""
    return IndexSet.of(members, universe).encode()


def decode(data: bytes, universe: int) -> IndexSet:
    """The set `encode(members, universe)` wrote; all of `data` must be used (else `filter-format`)."""
    reader = Reader(data)
    found = reader.index_set(universe)
    reader.end()
    return found


def _decode_gaps(data: bytes, count: int, m: int) -> tuple[array[int], int]:
    """The `count` indices coded at the start of `data` with parameter m, and the bytes they used."""
    bits = (m - 1).bit_length()
    available = 8 * len(data)
    # Each codeword takes at least max(bits, 1) bits: refuse a count the data cannot hold before looping.
    if count * max(bits, 1) > available:
        raise format_error("truncated")
    # The bit text, plus `bits` zeros so that a final peek never runs short.
    bit_text = format(int.from_bytes(data, "big"), f"0{available}b") + "0" * bits
    find = bit_text.find
    steps = array("Q")
    step = steps.append
    short = (1 << bits) - m
    position = 0
    for _ in range(count):
        one = find("1", position)
        if one < 0:
            raise format_error("truncated")
        quotient = (one - position) * m
        if bits:
            peek = int(bit_text[one + 1 : one + 1 + bits], 2)
            if peek >> 1 < short:
                step(quotient + (peek >> 1) + 1)
                position = one + bits
            else:
                step(quotient + peek - short + 1)
                position = one + 1 + bits
        else:
            step(quotient + 1)
            position = one + 1
    if position > available:
        raise format_error("truncated")
    used = -(-position // 8)
    if "1" in bit_text[position : 8 * used]:
        raise format_error("non-zero padding")
    # Steps are gap + 1 from the previous index, the first from -1: summing them gives the indices.
    steps[0] -= 1
    return array("Q", accumulate(steps)), used
