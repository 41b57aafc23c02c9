"""Certificate serial numbers: positive, at most 20 octets (RFC 5280 4.1.2.2), unpredictable.

A serial devid issues carries the certificate's dense index under its CA: the compact revocation
filter is exact over the indices a CA has issued (a private CA knows its whole universe), and a
gateway or device finds a certificate's index in its serial without asking anyone. Layout, 159
bits: a 7-bit tag (0x4D), a 56-bit index, then 96 bits from the CSPRNG (CA/B Forum asks for 64).
"""

from __future__ import annotations

import re
import secrets

from devid.errors import PolicyError

SERIAL_BITS = 159
RANDOM_BITS = 96
INDEX_BITS = 56
#: Marks a serial that carries an index (the top 7 bits of 159). Serials devid made before indices
#: were fully random: one in 128 of them has this tag by chance, and its "index" is then far past
#: any CA's issued count, which readers treat as outside the filter's universe.
INDEX_TAG = 0x4D
MAX_INDEX = (1 << INDEX_BITS) - 1
_HEX_DIGITS = re.compile(r"[0-9a-f]+")


def random_serial() -> int:
    """A fresh positive serial with no index (CA certificates, servers, tests); 159 bits keep the
    DER INTEGER within 20 octets without a sign byte."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


def indexed_serial(index: int) -> int:
    """The serial of the certificate with dense index `index` under its CA: tag, index, 96 random bits."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"certificate index {index} out of range")
    return (INDEX_TAG << (INDEX_BITS + RANDOM_BITS)) | (index << RANDOM_BITS) | secrets.randbits(RANDOM_BITS)


def serial_index(serial: int) -> int | None:
    """The dense index a serial carries, or None for a serial without one."""
    if serial >> (INDEX_BITS + RANDOM_BITS) != INDEX_TAG:
        return None
    return (serial >> RANDOM_BITS) & MAX_INDEX


def serial_hex(serial: int) -> str:
    """The canonical text form used in the store, the CLI and URLs: lower-case hex, no leading zeros."""
    return format(serial, "x")


def parse_serial(text: str) -> int:
    """Parse a serial typed by a person: hex, with optional `0x` prefix or colons."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    # Only ASCII hex digits: int() alone would also take signs, `_`, a second `0x` and non-ASCII digits.
    if not _HEX_DIGITS.fullmatch(cleaned):
        raise PolicyError("serial-syntax", f"not a hexadecimal serial number: {text!r}")
    value = int(cleaned, 16)
    if value <= 0:
        raise PolicyError("serial-syntax", f"a serial number is positive: {text!r}")
    return value
