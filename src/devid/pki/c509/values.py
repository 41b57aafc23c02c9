"""Typed reading of decoded CBOR items: anything of the wrong type is C509Malformed, never a crash."""

from __future__ import annotations

from devid.errors import C509Malformed
from devid.pki.c509 import asn1
from devid.pki.der import decode_oid, encode_oid


def integer(item: object, part: str) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise C509Malformed(part, f"expected an integer, found {type(item).__name__}")
    return item


def uint(item: object, part: str) -> int:
    value = integer(item, part)
    if value < 0:
        raise C509Malformed(part, f"expected an unsigned integer, found {value}")
    return value


def octets(item: object, part: str) -> bytes:
    if not isinstance(item, bytes):
        raise C509Malformed(part, f"expected a byte string, found {type(item).__name__}")
    return item


def text(item: object, part: str) -> str:
    if not isinstance(item, str):
        raise C509Malformed(part, f"expected a text string, found {type(item).__name__}")
    return item


def ia5(item: object, part: str) -> bytes:
    """The octets of an IA5String carried as CBOR text (URIs, DNS names, e-mail addresses)."""
    value = text(item, part)
    if not value.isascii():
        raise C509Malformed(part, "an IA5String value with non-ASCII characters")
    return value.encode("ascii")


def array(item: object, part: str, *, even: bool = False) -> list[object]:
    if not isinstance(item, list):
        raise C509Malformed(part, f"expected an array, found {type(item).__name__}")
    if even and len(item) % 2:
        raise C509Malformed(part, "expected an array of pairs")
    return item


def pairs(item: object, part: str) -> list[tuple[object, object]]:
    items = array(item, part, even=True)
    return list(zip(items[::2], items[1::2], strict=True))


def oid_body(dotted: str) -> bytes:
    """The unwrapped OID (~oid): the content octets of the DER OBJECT IDENTIFIER."""
    return encode_oid(dotted)[2:]


def oid_tlv(item: object, part: str) -> bytes:
    """DER OBJECT IDENTIFIER from an unwrapped CBOR OID (a byte string), checked."""
    body = octets(item, part)
    try:
        decode_oid(body)
    except ValueError:
        raise C509Malformed(part, "not a valid OBJECT IDENTIFIER") from None
    return asn1.tlv(asn1.OID, body)
