"""The few DER structures no library builds or reads for us: RFC 4108 hardwareModuleName, and a
certificate's extensions as raw DER.

`cryptography` carries an otherName as opaque DER and has no public ASN.1 encoder, so this
module encodes and decodes exactly SEQUENCE { OBJECT IDENTIFIER, OCTET STRING }. It also refuses
to read the extensions of a certificate whose basicConstraints says cA=FALSE with a pathLen;
a verifier that must name that fault (Matter's) reads them raw with `raw_extensions`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509

from devid.errors import PolicyError

ID_ON_HARDWARE_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")

_SEQUENCE, _OID, _OCTET_STRING, _BOOLEAN = 0x30, 0x06, 0x04, 0x01


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


@functools.lru_cache(maxsize=256)
def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = _base128(40 * arcs[0] + arcs[1]) + b"".join(_base128(a) for a in arcs[2:])
    return tlv(_OID, body)


def read_tlv(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The content of the DER element with `tag` at `pos`, and the position after it."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise PolicyError("der-malformed", f"expected DER tag {tag:#x} at offset {pos}")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise PolicyError("der-malformed", "bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        # DER: the shortest length encoding only (no long form below 128, no leading zero octet).
        if length < 0x80 or data[pos] == 0:
            raise PolicyError("der-malformed", "non-minimal DER length")
        pos += count
    end = pos + length
    if end > len(data):
        raise PolicyError("der-malformed", "DER value runs past its container")
    return data[pos:end], end


def read_any(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Tag, content and end of the DER element at `pos`, whatever its (single-octet) tag."""
    if pos >= len(data):
        raise PolicyError("der-malformed", f"no DER element at offset {pos}")
    content, end = read_tlv(data, pos, data[pos])
    return data[pos], content, end


def decode_oid(body: bytes) -> str:
    arcs: list[int] = []
    value = 0
    if body and body[-1] & 0x80:
        raise PolicyError("der-malformed", "OBJECT IDENTIFIER ends inside an arc")
    for i, byte in enumerate(body):
        if byte == 0x80 and (i == 0 or not body[i - 1] & 0x80):
            raise PolicyError("der-malformed", "OBJECT IDENTIFIER arc with a leading 0x80 octet")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise PolicyError("der-malformed", "empty OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


@dataclass(frozen=True)
class HardwareModuleName:
    """RFC 4108 hardwareModuleName: the hardware type OID and the module's serial number."""

    hw_type: str
    hw_serial: bytes

    def to_other_name(self) -> x509.OtherName:
        inner = encode_oid(self.hw_type) + tlv(_OCTET_STRING, self.hw_serial)
        return x509.OtherName(ID_ON_HARDWARE_MODULE_NAME, tlv(_SEQUENCE, inner))

    @classmethod
    def from_other_name(cls, name: x509.OtherName) -> HardwareModuleName:
        if name.type_id != ID_ON_HARDWARE_MODULE_NAME:
            raise PolicyError(
                "der-malformed", f"otherName {name.type_id.dotted_string} is not hardwareModuleName"
            )
        seq, end = read_tlv(name.value, 0, _SEQUENCE)
        if end != len(name.value):
            raise PolicyError("der-malformed", "trailing data after hardwareModuleName")
        oid_body, pos = read_tlv(seq, 0, _OID)
        serial, pos = read_tlv(seq, pos, _OCTET_STRING)
        if pos != len(seq):
            raise PolicyError("der-malformed", "trailing data inside hardwareModuleName")
        return cls(decode_oid(oid_body), serial)


def hardware_module_names(cert: x509.Certificate) -> list[HardwareModuleName]:
    """All hardwareModuleName entries in a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        HardwareModuleName.from_other_name(n)
        for n in san.get_values_for_type(x509.OtherName)
        if n.type_id == ID_ON_HARDWARE_MODULE_NAME
    ]


@dataclass(frozen=True)
class RawExtension:
    critical: bool
    #: The extnValue's content: the DER of the extension's own structure.
    value: bytes


def raw_extensions(tbs: bytes) -> list[tuple[str, RawExtension]]:
    """The extensions of a TBSCertificate (RFC 5280 4.1) in order, by dotted OID, undecoded."""
    body, _ = read_tlv(tbs, 0, _SEQUENCE)
    pos, found = 0, []
    while pos < len(body):
        tag, content, pos = read_any(body, pos)
        if tag != 0xA3:  # [3] EXPLICIT Extensions: the other fields are not looked at
            continue
        extensions, _ = read_tlv(content, 0, _SEQUENCE)
        at = 0
        while at < len(extensions):
            ext, at = read_tlv(extensions, at, _SEQUENCE)
            oid, inner = read_tlv(ext, 0, _OID)
            critical = False
            if inner < len(ext) and ext[inner] == _BOOLEAN:
                flag, inner = read_tlv(ext, inner, _BOOLEAN)
                critical = flag != b"\x00"
            value, _ = read_tlv(ext, inner, _OCTET_STRING)
            found.append((decode_oid(oid), RawExtension(critical, value)))
    return found
