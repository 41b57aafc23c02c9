"""Certificate serial numbers: 159 bits from the CSPRNG, positive, at most 20 octets (RFC 5280 4.1.2.2)."""

from __future__ import annotations

import re
import secrets

from devid.errors import PolicyError

SERIAL_BITS = 159
_HEX_DIGITS = re.compile(r"[0-9a-f]+")


def random_serial() -> int:
    """A fresh positive serial; 159 bits keep the DER INTEGER within 20 octets without a sign byte."""
    while True:
        serial = secrets.randbits(SERIAL_BITS)
        if serial:
            return serial


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
