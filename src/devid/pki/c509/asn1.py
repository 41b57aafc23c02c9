"""The little DER a C509 codec needs: split a TLV, build one, and INTEGER / OID / BIT STRING bodies.

Reading is strict (definite, minimal lengths; single-octet tags): whatever it accepts, `tlv`
writes back identically, which is what makes the type 3 round trip byte-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from devid.errors import C509Unsupported
from devid.pki.der import tlv as tlv

SEQUENCE, SET, INTEGER, BIT_STRING, OCTET_STRING, NULL, OID = 0x30, 0x31, 0x02, 0x03, 0x04, 0x05, 0x06
UTF8_STRING, PRINTABLE_STRING, IA5_STRING = 0x0C, 0x13, 0x16
UTC_TIME, GENERALIZED_TIME, BOOLEAN = 0x17, 0x18, 0x01


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes
    raw: bytes


def read(data: bytes, pos: int, part: str) -> tuple[Tlv, int]:
    """The TLV at `pos` and the offset after it; C509Unsupported for anything but minimal DER."""
    if pos + 2 > len(data):
        raise C509Unsupported(part, f"DER truncated at offset {pos}")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise C509Unsupported(part, "multi-octet DER tags are not supported")
    head = 2
    length = first
    if first & 0x80:
        count = first & 0x7F
        if not 1 <= count <= 4 or pos + 2 + count > len(data):
            raise C509Unsupported(part, "bad DER length")
        length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
        if length < 0x80 or data[pos + 2] == 0:
            raise C509Unsupported(part, "non-minimal DER length")
        head += count
    end = pos + head + length
    if end > len(data):
        raise C509Unsupported(part, "DER value runs past its container")
    return Tlv(tag, data[pos + head : end], data[pos:end]), end


def children(value: bytes, part: str) -> list[Tlv]:
    out, pos = [], 0
    while pos < len(value):
        item, pos = read(value, pos, part)
        out.append(item)
    return out


def expect(item: Tlv, tag: int, part: str) -> bytes:
    if item.tag != tag:
        raise C509Unsupported(part, f"expected DER tag {tag:#04x}, found {item.tag:#04x}")
    return item.value


def unsigned(body: bytes, part: str) -> bytes:
    """The magnitude octets of a non-negative DER INTEGER body (leading 0x00 dropped)."""
    if not body or body[0] & 0x80:
        raise C509Unsupported(part, "a negative or empty INTEGER")
    return body[1:] if len(body) > 1 and body[0] == 0 else body


def integer_body(magnitude: bytes) -> bytes:
    """DER INTEGER body of a non-negative number given by its big-endian octets."""
    stripped = magnitude.lstrip(b"\x00") or b"\x00"
    return b"\x00" + stripped if stripped[0] & 0x80 else stripped


def bit_string(item: Tlv, part: str) -> bytes:
    """The octets of a BIT STRING with no unused bits (keys and signatures)."""
    body = expect(item, BIT_STRING, part)
    if not body or body[0] != 0:
        raise C509Unsupported(part, "a BIT STRING with unused bits")
    return body[1:]


def bit_string_body(octets: bytes) -> bytes:
    return b"\x00" + octets
