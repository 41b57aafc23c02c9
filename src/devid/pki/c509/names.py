"""Name (issuer, subject, directoryName) <-> C509 Name, with the draft's SpecialText compression.

An attribute with a registered integer is (int, SpecialText): the sign says utf8String (+) or
printableString (-); emailAddress and domainComponent are always IA5String. Anything else (an
unregistered attribute, another string type) is (~oid, DER of the value), which keeps its bytes.
"""

from __future__ import annotations

import re

from cbor2 import CBORTag

from devid.errors import C509Malformed, C509Unsupported
from devid.pki.c509 import asn1, values
from devid.pki.c509.registry import ATTRIBUTES, COMMON_NAME, IA5_ATTRIBUTES

MAC_TAG = 48
_BY_OID = {values.oid_body(dotted): code for code, dotted in ATTRIBUTES.items()}
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_EUI64 = re.compile(r"[0-9A-F]{2}(?:-[0-9A-F]{2}){7}")

SpecialText = str | bytes | CBORTag
CborName = list[object] | SpecialText


def special_text(value: str) -> SpecialText:
    """Lower-case hex of even length -> bytes; an EUI-64 "HH-..-HH" -> tag 48 (6 octets when it
    embeds a MAC-48 as HH-HH-HH-FF-FE-HH-HH-HH); else the text itself."""
    if _HEX.fullmatch(value):
        return bytes.fromhex(value)
    if _EUI64.fullmatch(value):
        raw = bytes.fromhex(value.replace("-", ""))
        return CBORTag(MAC_TAG, raw[:3] + raw[5:] if raw[3:5] == b"\xff\xfe" else raw)
    return value


def from_special_text(item: object, part: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.hex()
    if isinstance(item, CBORTag) and item.tag == MAC_TAG and isinstance(item.value, bytes):
        raw = item.value
        if len(raw) == 6:
            raw = raw[:3] + b"\xff\xfe" + raw[3:]
        if len(raw) == 8:
            return "-".join(f"{b:02X}" for b in raw)
    raise C509Malformed(part, "an attribute value is not text, bytes or a tag-48 MAC address")


def encode_name(name: asn1.Tlv, part: str) -> CborName:
    """C509 Name of a DER Name (the whole SEQUENCE TLV)."""
    out: list[object] = []
    for rdn in asn1.children(asn1.expect(name, asn1.SEQUENCE, part), part):
        atvs = asn1.children(asn1.expect(rdn, asn1.SET, part), part)
        if len(atvs) != 1:
            raise C509Unsupported(part, "a RelativeDistinguishedName with more than one attribute")
        fields = asn1.children(asn1.expect(atvs[0], asn1.SEQUENCE, part), part)
        if len(fields) != 2:
            raise C509Unsupported(part, "an AttributeTypeAndValue that is not (type, value)")
        oid, value = asn1.expect(fields[0], asn1.OID, part), fields[1]
        out += _attribute(_BY_OID.get(oid), oid, value)
    if len(out) == 2 and out[0] == COMMON_NAME and isinstance(out[1], str | bytes | CBORTag):
        return out[1]  # a lone utf8String common name: just its SpecialText
    return out


def _attribute(code: int | None, oid: bytes, value: asn1.Tlv) -> list[object]:
    if code is not None:
        sign = _sign(code, value.tag)
        if sign is not None:
            try:
                return [sign * code, special_text(value.value.decode("utf-8"))]
            except UnicodeDecodeError:
                pass
    return [oid, value.raw]


def _sign(code: int, tag: int) -> int | None:
    if code in IA5_ATTRIBUTES:
        return 1 if tag == asn1.IA5_STRING else None
    return {asn1.UTF8_STRING: 1, asn1.PRINTABLE_STRING: -1}.get(tag)


def decode_name(item: object, part: str) -> bytes:
    """DER Name (the SEQUENCE TLV) of a C509 Name."""
    if not isinstance(item, list):
        item = [COMMON_NAME, item]
    rdns = []
    for kind, value in values.pairs(item, part):
        if isinstance(kind, bytes):
            atv = values.oid_tlv(kind, part) + values.octets(value, part)
        else:
            code = values.integer(kind, part)
            dotted = ATTRIBUTES.get(abs(code))
            if dotted is None or (code < 0 and abs(code) in IA5_ATTRIBUTES):
                raise C509Malformed(part, f"unknown RDN attribute {code}")
            text = from_special_text(value, part)
            if abs(code) in IA5_ATTRIBUTES:
                tag, body = asn1.IA5_STRING, values.ia5(text, part)
            else:
                tag = asn1.UTF8_STRING if code > 0 else asn1.PRINTABLE_STRING
                body = text.encode("utf-8")
            atv = asn1.tlv(asn1.OID, values.oid_body(dotted)) + asn1.tlv(tag, body)
        rdns.append(asn1.tlv(asn1.SET, asn1.tlv(asn1.SEQUENCE, atv)))
    return asn1.tlv(asn1.SEQUENCE, b"".join(rdns))
