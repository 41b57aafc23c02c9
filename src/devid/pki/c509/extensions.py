"""Extensions <-> C509: the draft's specific encodings for what devid's profiles use, the generic
(~oid, bytes) form for everything else.

Each specific encoding is checked on the way out: if decoding it does not give back the very
extnValue octets, the extension goes in the generic form instead, so nothing is ever lost.
"""

from __future__ import annotations

from collections.abc import Callable

from devid.errors import C509Malformed, C509Unsupported
from devid.pki.c509 import asn1, values
from devid.pki.c509.names import decode_name, encode_name
from devid.pki.c509.registry import (
    CERTIFICATE_POLICIES,
    CPS_QUALIFIER,
    EXTENDED_KEY_USAGES,
    EXTENSION_OIDS,
    INFORMATION_ACCESS,
    OTHER_NAMES,
    POLICY_QUALIFIERS,
    USER_NOTICE_QUALIFIER,
    Ext,
)

PART = "extensions"
_CRITICAL = asn1.tlv(asn1.BOOLEAN, b"\xff")
_EXT_BY_OID = {values.oid_body(dotted): ext for ext, dotted in EXTENSION_OIDS.items()}
_EKU_BY_OID = {values.oid_body(dotted): code for code, dotted in EXTENDED_KEY_USAGES.items()}
_CP_BY_OID = {values.oid_body(dotted): code for code, dotted in CERTIFICATE_POLICIES.items()}
_PQ_BY_OID = {values.oid_body(dotted): code for code, dotted in POLICY_QUALIFIERS.items()}
_IA_BY_OID = {values.oid_body(dotted): code for code, dotted in INFORMATION_ACCESS.items()}
_OTHER_BY_OID = {values.oid_body(dotted): code for code, dotted in OTHER_NAMES.items()}
_OTHER_NAME, _DIRECTORY_NAME = 0, 4
#: GeneralName choices whose value is an IA5String (text) or OCTET STRING / OID (bytes): C509 type -> DER tag.
_TEXT_NAMES = {1: 0x81, 2: 0x82, 6: 0x86}
_BYTES_NAMES = {7: 0x87, 8: 0x88}
_NAME_BY_TAG = {tag: code for code, tag in {**_TEXT_NAMES, **_BYTES_NAMES}.items()}


def _oid_of(item: object, registry: dict[int, str], part: str) -> bytes:
    """DER OID of a registered integer or an unwrapped OID."""
    if isinstance(item, bytes):
        return values.oid_tlv(item, part)
    dotted = registry.get(values.integer(item, part))
    if dotted is None:
        raise C509Malformed(part, f"unknown registered value {item}")
    return asn1.tlv(asn1.OID, values.oid_body(dotted))


def _seq(der: bytes) -> list[asn1.Tlv]:
    item, end = asn1.read(der, 0, PART)
    if end != len(der):
        raise C509Unsupported(PART, "trailing data after an extension value")
    return asn1.children(asn1.expect(item, asn1.SEQUENCE, PART), PART)


# --- general names -----------------------------------------------------------------------------


def encode_general_names(items: list[asn1.Tlv]) -> list[object]:
    out: list[object] = []
    for name in items:
        kind = _NAME_BY_TAG.get(name.tag)
        if kind in _TEXT_NAMES:
            out += [kind, name.value.decode("ascii")]
        elif kind is not None:
            out += [kind, name.value]
        elif name.tag == 0xA4:
            out += [_DIRECTORY_NAME, encode_name(asn1.read(name.value, 0, PART)[0], PART)]
        elif name.tag == 0xA0:
            out += _other_name(asn1.children(name.value, PART))
        else:
            raise C509Unsupported(PART, f"GeneralName choice {name.tag:#04x}")
    return out


def _other_name(fields: list[asn1.Tlv]) -> list[object]:
    if len(fields) != 2 or fields[1].tag != 0xA0:
        raise C509Unsupported(PART, "a malformed otherName")
    type_id = asn1.expect(fields[0], asn1.OID, PART)
    value, end = asn1.read(fields[1].value, 0, PART)
    if end != len(fields[1].value):
        raise C509Unsupported(PART, "trailing data in an otherName")
    code = _OTHER_BY_OID.get(type_id)
    if code == -1:  # hardwareModuleName: SEQUENCE { hwType OID, hwSerialNum OCTET STRING }
        hw = asn1.children(asn1.expect(value, asn1.SEQUENCE, PART), PART)
        if len(hw) == 2:
            return [-1, [asn1.expect(hw[0], asn1.OID, PART), asn1.expect(hw[1], asn1.OCTET_STRING, PART)]]
    elif code == -2 and value.tag == asn1.UTF8_STRING:
        return [-2, value.value.decode("utf-8")]
    elif code == -3 and value.tag == asn1.OCTET_STRING:
        return [-3, value.value]
    return [_OTHER_NAME, [type_id, value.raw]]


def decode_general_names(item: object) -> bytes:
    out = []
    for kind, value in values.pairs(values.array(item, PART), PART):
        code = values.integer(kind, PART)
        if code in _TEXT_NAMES:
            out.append(asn1.tlv(_TEXT_NAMES[code], values.ia5(value, PART)))
        elif code in _BYTES_NAMES:
            out.append(asn1.tlv(_BYTES_NAMES[code], values.octets(value, PART)))
        elif code == _DIRECTORY_NAME:
            out.append(asn1.tlv(0xA4, decode_name(value, PART)))
        elif code in (_OTHER_NAME, *OTHER_NAMES):
            out.append(asn1.tlv(0xA0, _decode_other_name(code, value)))
        else:
            raise C509Malformed(PART, f"unknown GeneralName type {code}")
    return b"".join(out)


def _decode_other_name(code: int, value: object) -> bytes:
    if code == _OTHER_NAME:
        fields = values.array(value, PART)
        if len(fields) != 2:
            raise C509Malformed(PART, "otherName is not [~oid, bytes]")
        return values.oid_tlv(fields[0], PART) + asn1.tlv(0xA0, values.octets(fields[1], PART))
    type_id_der = asn1.tlv(asn1.OID, values.oid_body(OTHER_NAMES[code]))
    if code == -1:
        hw = values.array(value, PART)
        if len(hw) != 2:
            raise C509Malformed(PART, "hardwareModuleName is not [~oid, bytes]")
        inner = asn1.tlv(
            asn1.SEQUENCE,
            values.oid_tlv(hw[0], PART) + asn1.tlv(asn1.OCTET_STRING, values.octets(hw[1], PART)),
        )
    elif code == -2:
        inner = asn1.tlv(asn1.UTF8_STRING, values.text(value, PART).encode("utf-8"))
    else:
        inner = asn1.tlv(asn1.OCTET_STRING, values.octets(value, PART))
    return type_id_der + asn1.tlv(0xA0, inner)


# --- one function pair per registered extension ------------------------------------------------


def _enc_uint(der: bytes) -> object:
    item, _ = asn1.read(der, 0, PART)
    return int.from_bytes(asn1.unsigned(asn1.expect(item, asn1.INTEGER, PART), PART), "big")


def _dec_uint(item: object) -> bytes:
    value = values.uint(item, PART)
    return asn1.tlv(asn1.INTEGER, asn1.integer_body(value.to_bytes((value.bit_length() + 7) // 8, "big")))


def _enc_key_usage(der: bytes) -> object:
    item, _ = asn1.read(der, 0, PART)
    body = asn1.expect(item, asn1.BIT_STRING, PART)
    bits = int.from_bytes(body[1:], "big") if len(body) > 1 else 0
    width = 8 * (len(body) - 1)
    return sum(1 << i for i in range(width) if bits >> (width - 1 - i) & 1)


def _dec_key_usage(item: object) -> bytes:
    value = values.uint(item, PART)
    count = value.bit_length()
    size = (count + 7) // 8
    packed = sum(1 << (8 * size - 1 - i) for i in range(count) if value >> i & 1)
    return asn1.tlv(asn1.BIT_STRING, bytes([8 * size - count]) + packed.to_bytes(size, "big"))


def _enc_basic_constraints(der: bytes) -> object:
    fields = _seq(der)
    if not fields:
        return -2
    if fields[0].raw != _CRITICAL:  # cA TRUE (DER omits the FALSE default)
        raise C509Unsupported(PART, "basicConstraints")
    if len(fields) == 1:
        return -1
    return _enc_uint(fields[1].raw)


def _dec_basic_constraints(item: object) -> bytes:
    value = values.integer(item, PART)
    if value == -2:
        return asn1.tlv(asn1.SEQUENCE, b"")
    if value == -1:
        return asn1.tlv(asn1.SEQUENCE, _CRITICAL)
    if value < 0:
        raise C509Malformed(PART, f"basicConstraints {value}")
    return asn1.tlv(asn1.SEQUENCE, _CRITICAL + _dec_uint(value))


def _enc_key_id(der: bytes) -> object:
    return asn1.expect(asn1.read(der, 0, PART)[0], asn1.OCTET_STRING, PART)


def _dec_key_id(item: object) -> bytes:
    return asn1.tlv(asn1.OCTET_STRING, values.octets(item, PART))


def _enc_authority_key_id(der: bytes) -> object:
    fields = _seq(der)
    if [f.tag for f in fields] == [0x80]:
        return fields[0].value
    if [f.tag for f in fields] == [0x80, 0xA1, 0x82]:
        names = encode_general_names(asn1.children(fields[1].value, PART))
        return [fields[0].value, names, asn1.unsigned(fields[2].value, PART).lstrip(b"\x00")]
    raise C509Unsupported(PART, "authorityKeyIdentifier")


def _dec_authority_key_id(item: object) -> bytes:
    if not isinstance(item, list):
        return asn1.tlv(asn1.SEQUENCE, asn1.tlv(0x80, values.octets(item, PART)))
    if len(item) != 3:
        raise C509Malformed(PART, "authorityKeyIdentifier is not [keyId, names, serial]")
    key_id, names, serial = item
    return asn1.tlv(
        asn1.SEQUENCE,
        asn1.tlv(0x80, values.octets(key_id, PART))
        + asn1.tlv(0xA1, decode_general_names(names))
        + asn1.tlv(0x82, asn1.integer_body(values.octets(serial, PART))),
    )


def _enc_alt_name(der: bytes) -> object:
    names = encode_general_names(_seq(der))
    return names[1] if len(names) == 2 and names[0] == 2 else names


def _dec_alt_name(item: object) -> bytes:
    return asn1.tlv(asn1.SEQUENCE, decode_general_names([2, item] if isinstance(item, str) else item))


def _enc_ext_key_usage(der: bytes) -> object:
    purposes = [asn1.expect(f, asn1.OID, PART) for f in _seq(der)]
    coded = [_EKU_BY_OID.get(oid, oid) for oid in purposes]
    return coded[0] if len(coded) == 1 else coded


def _dec_ext_key_usage(item: object) -> bytes:
    purposes = item if isinstance(item, list) else [item]
    return asn1.tlv(asn1.SEQUENCE, b"".join(_oid_of(p, EXTENDED_KEY_USAGES, PART) for p in purposes))


def _enc_info_access(der: bytes) -> object:
    out: list[object] = []
    for access in _seq(der):
        fields = asn1.children(asn1.expect(access, asn1.SEQUENCE, PART), PART)
        if len(fields) != 2 or fields[1].tag != 0x86:
            raise C509Unsupported(PART, "an access location that is not a URI")
        method = asn1.expect(fields[0], asn1.OID, PART)
        out += [_IA_BY_OID.get(method, method), fields[1].value.decode("ascii")]
    return out


def _dec_info_access(item: object) -> bytes:
    out = b""
    for method, uri in values.pairs(values.array(item, PART), PART):
        location = asn1.tlv(0x86, values.ia5(uri, PART))
        out += asn1.tlv(asn1.SEQUENCE, _oid_of(method, INFORMATION_ACCESS, PART) + location)
    return asn1.tlv(asn1.SEQUENCE, out)


def _enc_crl_points(der: bytes) -> object:
    points: list[object] = []
    for point in _seq(der):
        fields = asn1.children(asn1.expect(point, asn1.SEQUENCE, PART), PART)
        if len(fields) != 1 or fields[0].tag != 0xA0:
            raise C509Unsupported(PART, "a CRL distribution point with reasons or cRLIssuer")
        names = asn1.children(fields[0].value, PART)
        if len(names) != 1 or names[0].tag != 0xA0:
            raise C509Unsupported(PART, "a CRL distribution point that is not a fullName")
        uris = asn1.children(names[0].value, PART)
        if not uris or any(u.tag != 0x86 for u in uris):
            raise C509Unsupported(PART, "a CRL distribution point name that is not a URI")
        texts = [u.value.decode("ascii") for u in uris]
        points.append([texts[0] if len(texts) == 1 else texts, None, None])
    if len(points) == 1 and isinstance(points[0], list) and isinstance(points[0][0], str):
        return points[0][0]
    return points


def _dec_crl_points(item: object) -> bytes:
    points = [[item, None, None]] if isinstance(item, str) else values.array(item, PART)
    out = b""
    for point in points:
        fields = values.array(point, PART)
        if len(fields) != 3 or fields[1] is not None or fields[2] is not None:
            raise C509Unsupported(PART, "CRL distribution points with reasons or cRLIssuer")
        uris = fields[0] if isinstance(fields[0], list) else [fields[0]]
        full = b"".join(asn1.tlv(0x86, values.ia5(u, PART)) for u in uris)
        out += asn1.tlv(asn1.SEQUENCE, asn1.tlv(0xA0, asn1.tlv(0xA0, full)))
    return asn1.tlv(asn1.SEQUENCE, out)


def _enc_policies(der: bytes) -> object:
    out: list[object] = []
    for info in _seq(der):
        fields = asn1.children(asn1.expect(info, asn1.SEQUENCE, PART), PART)
        if not 1 <= len(fields) <= 2:
            raise C509Unsupported(PART, "a PolicyInformation that is not (id, [qualifiers])")
        policy = asn1.expect(fields[0], asn1.OID, PART)
        qualifiers: list[object] = []
        for qualifier in (
            asn1.children(asn1.expect(fields[1], asn1.SEQUENCE, PART), PART) if len(fields) == 2 else []
        ):
            ident, value = asn1.children(asn1.expect(qualifier, asn1.SEQUENCE, PART), PART)
            code = _PQ_BY_OID.get(asn1.expect(ident, asn1.OID, PART))
            if code == CPS_QUALIFIER and value.tag == asn1.IA5_STRING:
                qualifiers += [code, value.value.decode("ascii")]
            elif code == USER_NOTICE_QUALIFIER:
                [text] = asn1.children(asn1.expect(value, asn1.SEQUENCE, PART), PART)
                qualifiers += [code, asn1.expect(text, asn1.UTF8_STRING, PART).decode("utf-8")]
            else:
                raise C509Unsupported(PART, "a policy qualifier that is not a CPS URI or an explicitText")
        out += [_CP_BY_OID.get(policy, policy), qualifiers]
    return out


def _dec_policies(item: object) -> bytes:
    out = b""
    for policy, qualifiers in values.pairs(values.array(item, PART), PART):
        body = b""
        for code, text in values.pairs(values.array(qualifiers, PART), PART):
            if code == CPS_QUALIFIER:
                qualifier = asn1.tlv(asn1.IA5_STRING, values.ia5(text, PART))
            elif code == USER_NOTICE_QUALIFIER:
                explicit = values.text(text, PART).encode("utf-8")
                qualifier = asn1.tlv(asn1.SEQUENCE, asn1.tlv(asn1.UTF8_STRING, explicit))
            else:
                raise C509Unsupported(PART, f"policy qualifier {code!r} is not known to this decoder")
            body += asn1.tlv(asn1.SEQUENCE, _oid_of(code, POLICY_QUALIFIERS, PART) + qualifier)
        qualifiers_der = asn1.tlv(asn1.SEQUENCE, body) if body else b""
        out += asn1.tlv(asn1.SEQUENCE, _oid_of(policy, CERTIFICATE_POLICIES, PART) + qualifiers_der)
    return asn1.tlv(asn1.SEQUENCE, out)


def _enc_no_check(der: bytes) -> object:
    if der != b"\x05\x00":
        raise C509Unsupported(PART, "ocspNoCheck that is not NULL")
    return None


def _dec_no_check(item: object) -> bytes:
    if item is not None:
        raise C509Malformed(PART, "ocspNoCheck is not null")
    return b"\x05\x00"


_CODECS: dict[Ext, tuple[Callable[[bytes], object], Callable[[object], bytes]]] = {
    Ext.SUBJECT_KEY_ID: (_enc_key_id, _dec_key_id),
    Ext.KEY_USAGE: (_enc_key_usage, _dec_key_usage),
    Ext.SUBJECT_ALT_NAME: (_enc_alt_name, _dec_alt_name),
    Ext.ISSUER_ALT_NAME: (_enc_alt_name, _dec_alt_name),
    Ext.FRESHEST_CRL: (_enc_crl_points, _dec_crl_points),
    Ext.INHIBIT_ANY_POLICY: (_enc_uint, _dec_uint),
    Ext.SUBJECT_INFO_ACCESS: (_enc_info_access, _dec_info_access),
    Ext.BASIC_CONSTRAINTS: (_enc_basic_constraints, _dec_basic_constraints),
    Ext.CRL_DISTRIBUTION_POINTS: (_enc_crl_points, _dec_crl_points),
    Ext.CERTIFICATE_POLICIES: (_enc_policies, _dec_policies),
    Ext.AUTHORITY_KEY_ID: (_enc_authority_key_id, _dec_authority_key_id),
    Ext.EXT_KEY_USAGE: (_enc_ext_key_usage, _dec_ext_key_usage),
    Ext.AUTHORITY_INFO_ACCESS: (_enc_info_access, _dec_info_access),
    Ext.OCSP_NO_CHECK: (_enc_no_check, _dec_no_check),
}


# --- the extensions field ----------------------------------------------------------------------


def encode_extensions(field: asn1.Tlv | None) -> object:
    """C509 Extensions of the DER `[3] Extensions` field (None: absent)."""
    if field is None:
        return []
    outer, end = asn1.read(field.value, 0, PART)
    if end != len(field.value):
        raise C509Unsupported(PART, "trailing data after the extensions")
    out: list[object] = []
    for ext in asn1.children(asn1.expect(outer, asn1.SEQUENCE, PART), PART):
        out += _encode_one(asn1.children(asn1.expect(ext, asn1.SEQUENCE, PART), PART))
    if len(out) == 2:  # keyUsage alone: the bare integer, signed by criticality
        ident, value = out
        if isinstance(ident, int) and abs(ident) == Ext.KEY_USAGE and isinstance(value, int) and value > 0:
            return value if ident > 0 else -value
    return out


def _encode_one(fields: list[asn1.Tlv]) -> list[object]:
    if len(fields) == 3 and fields[1].raw == _CRITICAL:
        critical, fields = True, [fields[0], fields[2]]
    elif len(fields) == 2:
        critical = False
    else:
        raise C509Unsupported(PART, "an Extension that is not (id, [critical TRUE], value)")
    oid = asn1.expect(fields[0], asn1.OID, PART)
    value = asn1.expect(fields[1], asn1.OCTET_STRING, PART)
    ext = _EXT_BY_OID.get(oid)
    if ext is not None:
        encode, decode = _CODECS[ext]
        try:
            coded = encode(value)
            if decode(coded) == value:
                return [-int(ext) if critical else int(ext), coded]
        except ValueError:  # C509Error, UnicodeError, a structure of the wrong shape: generic form
            pass
    return [oid, [value] if critical else value]


def decode_extensions(item: object) -> bytes | None:
    """DER `[3] Extensions` field (None when there are none)."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = [int(Ext.KEY_USAGE) if item >= 0 else -Ext.KEY_USAGE, abs(item)]
    out = []
    for ident, value in values.pairs(values.array(item, PART), PART):
        if isinstance(ident, bytes):
            critical = isinstance(value, list)
            if isinstance(value, list):
                value = value[0] if len(value) == 1 else None
            oid, der = values.oid_tlv(ident, PART), values.octets(value, PART)
        else:
            code = values.integer(ident, PART)
            try:
                ext = Ext(abs(code))
            except ValueError:
                raise C509Unsupported(PART, f"extension {code} is not known to this decoder") from None
            critical, oid = code < 0, asn1.tlv(asn1.OID, values.oid_body(EXTENSION_OIDS[ext]))
            der = _CODECS[ext][1](value)
        flag = _CRITICAL if critical else b""
        out.append(asn1.tlv(asn1.SEQUENCE, oid + flag + asn1.tlv(asn1.OCTET_STRING, der)))
    if not out:
        return None
    return asn1.tlv(0xA3, asn1.tlv(asn1.SEQUENCE, b"".join(out)))
