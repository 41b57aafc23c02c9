"""C509 certificate type 3: a DER X.509 certificate re-encoded in CBOR, and back to the same bytes.

`encode` checks its own work: it decodes what it produced and compares with the input, so a
certificate it cannot carry exactly raises C509Unsupported instead of yielding lossy bytes.
"""

from __future__ import annotations

import calendar
import io
import re
from datetime import UTC, datetime

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from devid.errors import C509Error, C509Malformed, C509Unsupported
from devid.pki.c509 import asn1, values
from devid.pki.c509.extensions import decode_extensions, encode_extensions
from devid.pki.c509.names import decode_name, encode_name
from devid.pki.c509.registry import (
    EC_KEYS,
    ECDSA_SIGNATURES,
    PUBLIC_KEY_ALGORITHMS,
    RSA_KEY,
    SIGNATURE_ALGORITHMS,
)

#: c509CertificateType: CBOR re-encoded X.509 v3 DER certificate.
TYPE_REENCODED = 3
#: c509CertificateType: natively signed (signature over the CBOR), not produced by devid.
TYPE_NATIVE = 2
_FIELDS = 11
_VERSION_3 = asn1.tlv(0xA0, asn1.tlv(asn1.INTEGER, b"\x02"))
_SIG_BY_DER = {der: code for code, der in SIGNATURE_ALGORITHMS.items()}
_KEY_BY_DER = {der: code for code, der in PUBLIC_KEY_ALGORITHMS.items()}
_CURVES: dict[int, ec.EllipticCurve] = {1: ec.SECP256R1(), 2: ec.SECP384R1(), 3: ec.SECP521R1()}
#: Field sizes of the curves C509 ECDSA signatures are padded to (RFC 9053 section 2.1).
_ECDSA_SIZES = (32, 48, 66)
#: RFC 5280 4.1.2.5: no well-defined expiration; C509 encodes it as null.
_NO_EXPIRY = b"99991231235959Z"
_UTC_TIME = re.compile(rb"\d{12}Z")
_GENERALIZED_TIME = re.compile(rb"\d{14}Z")
_EVEN, _ODD = 0xFE, 0xFD


def encode(der: bytes) -> bytes:
    """The C509 (type 3) encoding of a DER certificate. C509Unsupported if C509 cannot carry it
    byte for byte."""
    items = _items(der)
    data = cbor2.dumps(items)
    try:
        back = decode(data)
    except C509Error as exc:
        raise C509Unsupported("certificate", f"does not survive the round trip ({exc})") from None
    if back != der:
        raise C509Unsupported("certificate", "re-encoding does not give back the same DER")
    return data


def _items(der: bytes) -> list[object]:
    cert, end = asn1.read(der, 0, "certificate")
    if end != len(der):
        raise C509Unsupported("certificate", "trailing data after the certificate")
    parts = asn1.children(asn1.expect(cert, asn1.SEQUENCE, "certificate"), "certificate")
    if len(parts) != 3:
        raise C509Unsupported("certificate", "not SEQUENCE { tbsCertificate, algorithm, signature }")
    tbs_item, outer_alg, signature = parts
    tbs = asn1.children(asn1.expect(tbs_item, asn1.SEQUENCE, "tbsCertificate"), "tbsCertificate")
    if len(tbs) not in (7, 8) or tbs[0].raw != _VERSION_3:
        raise C509Unsupported("version", "only X.509 v3 without unique identifiers is supported")
    serial, alg, issuer, validity, subject, spki = tbs[1:7]
    extensions = tbs[7] if len(tbs) == 8 else None
    if extensions is not None and extensions.tag != 0xA3:
        raise C509Unsupported("extensions", "issuerUniqueID / subjectUniqueID are not supported")
    if outer_alg.raw != alg.raw:
        raise C509Unsupported("signatureAlgorithm", "differs from the signature field")
    times = asn1.children(asn1.expect(validity, asn1.SEQUENCE, "validity"), "validity")
    if len(times) != 2:
        raise C509Unsupported("validity", "not SEQUENCE { notBefore, notAfter }")
    not_before, not_after = times
    sig_alg = _encode_algorithm(alg, _SIG_BY_DER)
    key_alg, key = _encode_key(spki)
    return [
        TYPE_REENCODED,
        asn1.unsigned(asn1.expect(serial, asn1.INTEGER, "serialNumber"), "serialNumber").lstrip(b"\x00"),
        sig_alg,
        None if issuer.raw == subject.raw else encode_name(issuer, "issuer"),
        _encode_time(not_before),
        None
        if not_after.value == _NO_EXPIRY and not_after.tag == asn1.GENERALIZED_TIME
        else _encode_time(not_after),
        encode_name(subject, "subject"),
        key_alg,
        key,
        encode_extensions(extensions),
        _encode_signature(sig_alg, asn1.bit_string(signature, "signatureValue")),
    ]


def _encode_algorithm(alg: asn1.Tlv, registry: dict[bytes, int]) -> object:
    code = registry.get(alg.raw)
    if code is not None:
        return code
    fields = asn1.children(asn1.expect(alg, asn1.SEQUENCE, "algorithm"), "algorithm")
    if not fields or len(fields) > 2:
        raise C509Unsupported("algorithm", "not an AlgorithmIdentifier")
    oid = asn1.expect(fields[0], asn1.OID, "algorithm")
    return oid if len(fields) == 1 else [oid, fields[1].raw]


def _decode_algorithm(item: object, registry: dict[int, bytes], part: str) -> bytes:
    if isinstance(item, int) and not isinstance(item, bool):
        der = registry.get(item)
        if der is None:
            raise C509Unsupported(part, f"algorithm {item} is not known to this decoder")
        return der
    fields = item if isinstance(item, list) else [item]
    if not 1 <= len(fields) <= 2:
        raise C509Malformed(part, "algorithm is not int, ~oid or [~oid, bytes]")
    params = values.octets(fields[1], part) if len(fields) == 2 else b""
    return asn1.tlv(asn1.SEQUENCE, values.oid_tlv(fields[0], part) + params)


def _encode_time(item: asn1.Tlv) -> int:
    if item.tag == asn1.UTC_TIME and _UTC_TIME.fullmatch(item.value):
        year = int(item.value[:2])
        text = (b"19" if year >= 50 else b"20") + item.value
    elif item.tag == asn1.GENERALIZED_TIME and _GENERALIZED_TIME.fullmatch(item.value):
        text = item.value
    else:
        raise C509Unsupported("validity", "a time that is not DER UTCTime / GeneralizedTime")
    try:
        moment = datetime.strptime(text.decode(), "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise C509Unsupported("validity", f"time {text.decode()} (a leap second?)") from None
    seconds = calendar.timegm(moment.timetuple())
    if seconds < 0:
        raise C509Unsupported("validity", "a time before 1970")
    return seconds


def _decode_time(item: object, part: str) -> bytes:
    if item is None:
        return asn1.tlv(asn1.GENERALIZED_TIME, _NO_EXPIRY)
    try:
        moment = datetime.fromtimestamp(values.uint(item, part), UTC)
    except (OverflowError, ValueError, OSError):
        raise C509Malformed(part, "time out of range") from None
    if 1950 <= moment.year <= 2049:
        return asn1.tlv(asn1.UTC_TIME, moment.strftime("%y%m%d%H%M%SZ").encode())
    return asn1.tlv(asn1.GENERALIZED_TIME, f"{moment.year:04d}{moment.strftime('%m%d%H%M%S')}Z".encode())


def _encode_key(spki: asn1.Tlv) -> tuple[object, object]:
    fields = asn1.children(asn1.expect(spki, asn1.SEQUENCE, "subjectPublicKeyInfo"), "subjectPublicKeyInfo")
    if len(fields) != 2:
        raise C509Unsupported("subjectPublicKeyInfo", "not SEQUENCE { algorithm, subjectPublicKey }")
    alg = _encode_algorithm(fields[0], _KEY_BY_DER)
    key = asn1.bit_string(fields[1], "subjectPublicKey")
    if isinstance(alg, int) and alg in EC_KEYS and key[:1] == b"\x04" and len(key) % 2:
        size = len(key) // 2
        return alg, bytes([_ODD if key[-1] & 1 else _EVEN]) + key[1 : 1 + size]
    if alg == RSA_KEY:
        modulus, exponent = (
            asn1.unsigned(asn1.expect(f, asn1.INTEGER, "subjectPublicKey"), "subjectPublicKey")
            for f in _sequence_of(key, "subjectPublicKey")
        )
        return alg, modulus if exponent == b"\x01\x00\x01" else [modulus, exponent]
    return alg, key


def _sequence_of(der: bytes, part: str) -> list[asn1.Tlv]:
    item, end = asn1.read(der, 0, part)
    fields = asn1.children(asn1.expect(item, asn1.SEQUENCE, part), part)
    if end != len(der) or len(fields) != 2:
        raise C509Unsupported(part, "not a SEQUENCE of two")
    return fields


def _decode_key(alg: object, item: object) -> bytes:
    part = "subjectPublicKey"
    if alg == RSA_KEY:
        modulus, exponent = (item, b"\x01\x00\x01") if isinstance(item, bytes) else _two(item, part)
        ints = (
            asn1.tlv(asn1.INTEGER, asn1.integer_body(values.octets(v, part))) for v in (modulus, exponent)
        )
        return asn1.tlv(asn1.SEQUENCE, b"".join(ints))
    key = values.octets(item, part)
    if isinstance(alg, int) and alg in EC_KEYS and key[:1] in (bytes([_EVEN]), bytes([_ODD])):
        compressed = bytes([0x02 if key[0] == _EVEN else 0x03]) + key[1:]
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[alg], compressed)
        except ValueError:
            raise C509Malformed(part, "not a point on the curve") from None
        return point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return key


def _two(item: object, part: str) -> tuple[object, object]:
    pair = values.array(item, part)
    if len(pair) != 2:
        raise C509Malformed(part, "expected two elements")
    return pair[0], pair[1]


def _encode_signature(alg: object, signature: bytes) -> bytes:
    if not (isinstance(alg, int) and alg in ECDSA_SIGNATURES):
        return signature
    r, s = (
        asn1.unsigned(asn1.expect(f, asn1.INTEGER, "signatureValue"), "signatureValue")
        for f in _sequence_of(signature, "signatureValue")
    )
    r, s = r.lstrip(b"\x00"), s.lstrip(b"\x00")
    size = next((n for n in _ECDSA_SIZES if n >= max(len(r), len(s))), None)
    if size is None:
        raise C509Unsupported("signatureValue", "an ECDSA signature larger than P-521's")
    return r.rjust(size, b"\x00") + s.rjust(size, b"\x00")


def _decode_signature(alg: object, item: object) -> bytes:
    signature = values.octets(item, "signatureValue")
    if not (isinstance(alg, int) and alg in ECDSA_SIGNATURES):
        return signature
    if not signature or len(signature) % 2:
        raise C509Malformed("signatureValue", "an ECDSA signature of odd length")
    half = len(signature) // 2
    ints = (asn1.tlv(asn1.INTEGER, asn1.integer_body(v)) for v in (signature[:half], signature[half:]))
    return asn1.tlv(asn1.SEQUENCE, b"".join(ints))


def one_item(data: bytes, part: str) -> object:
    """Exactly one well-formed CBOR item in `data`, nothing after it; else C509Malformed on `part`."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise C509Malformed(part, f"not CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise C509Malformed(part, f"trailing data after the {part}")
    return item


def load(data: bytes) -> list[object]:
    """The C509Certificate array of `data`."""
    fields = values.array(one_item(data, "certificate"), "certificate")
    if len(fields) != _FIELDS:
        raise C509Malformed("certificate", f"expected {_FIELDS} elements, found {len(fields)}")
    kind = values.integer(fields[0], "c509CertificateType")
    if kind == TYPE_NATIVE:
        raise C509Unsupported(
            "c509CertificateType", "natively signed (type 2) certificates are not supported"
        )
    if kind != TYPE_REENCODED:
        raise C509Malformed("c509CertificateType", f"unknown type {kind}")
    return fields


def decode(data: bytes) -> bytes:
    """The DER X.509 certificate a C509 type 3 certificate re-encodes."""
    _, serial, sig_alg, issuer, not_before, not_after, subject, key_alg, key, exts, signature = load(data)
    algorithm = _decode_algorithm(sig_alg, SIGNATURE_ALGORITHMS, "issuerSignatureAlgorithm")
    subject_der = decode_name(subject, "subject")
    spki = asn1.tlv(
        asn1.SEQUENCE,
        _decode_algorithm(key_alg, PUBLIC_KEY_ALGORITHMS, "subjectPublicKeyAlgorithm")
        + asn1.tlv(asn1.BIT_STRING, asn1.bit_string_body(_decode_key(key_alg, key))),
    )
    tbs = asn1.tlv(
        asn1.SEQUENCE,
        _VERSION_3
        + asn1.tlv(asn1.INTEGER, asn1.integer_body(values.octets(serial, "certificateSerialNumber")))
        + algorithm
        + (subject_der if issuer is None else decode_name(issuer, "issuer"))
        + asn1.tlv(
            asn1.SEQUENCE,
            _decode_time(not_before, "validityNotBefore") + _decode_time(not_after, "validityNotAfter"),
        )
        + subject_der
        + spki
        + (decode_extensions(exts) or b""),
    )
    signature_der = asn1.tlv(asn1.BIT_STRING, asn1.bit_string_body(_decode_signature(sig_alg, signature)))
    return asn1.tlv(asn1.SEQUENCE, tbs + algorithm + signature_der)
