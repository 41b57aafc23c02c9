"""Compact status answers for constrained links: the status of one certificate as a COSE_Sign1
(RFC 9052, ES256) over a short CBOR array, about a third of an OCSP response. Pure: no I/O.

The answer (Content-Format 18, `application/cose; cose-type="cose-sign1"`, untagged):

    [ h'a10126' ({1: -7}: ES256), {4: kid}, payload, signature (r || s, 64 bytes) ]
    payload = [ serial (bstr), status (0 good, 1 revoked, 2 unknown), thisUpdate, nextUpdate,
                ? revocationTime, ? reason ]   ; times: Unix seconds; reason: RFC 5280 CRLReason

It is signed by the CA's delegated OCSP responder (the same key and certificate as OCSP, so a
device trusts it exactly as it would an OCSP response): `kid` is the first 4 bytes of SHA-256 over
that signer's public key, so it stays the same when the signer is re-certified. The payload names
no issuer: the signer is certified by exactly one CA, which the verifier checks.

The request (FETCH, Content-Format 60, application/cbor) names the certificate:

    [ issuer (bstr: SHA-256 of the issuing CA's subjectPublicKey bits, or its first 4+ bytes),
      serial (bstr, big-endian) ]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from devid.errors import RequestInvalid, StatusAnswerInvalid
from devid.pki.reasons import Reason
from devid.revocation.ocsp import key_bits
from devid.revocation.status import CertStatus

#: CoAP Content-Format of a COSE_Sign1 (RFC 9052 section 11.2) and of the CBOR request (RFC 7049).
CONTENT_FORMAT_COSE_SIGN1 = 18
CONTENT_FORMAT_CBOR = 60
#: The protected header: {1 (alg): -7 (ES256)}.
PROTECTED = cbor2.dumps({1: -7})
KID_BYTES = 4
#: Shortest issuer key-hash prefix a request may name a CA by.
MIN_ISSUER_BYTES = 4
_HEADER_KID = 4
#: How far ahead of the verifier's clock an answer's thisUpdate may be (a device's clock lags).
CLOCK_SKEW = timedelta(minutes=5)
_MAX_SERIAL_BYTES = 20


class WireStatus(IntEnum):
    """The status number in the payload."""

    GOOD = 0
    REVOKED = 1
    UNKNOWN = 2


_WIRE = {
    CertStatus.GOOD: WireStatus.GOOD,
    CertStatus.REVOKED: WireStatus.REVOKED,
    CertStatus.UNKNOWN: WireStatus.UNKNOWN,
}
_STATUS = {wire: status for status, wire in _WIRE.items()}


@dataclass(frozen=True)
class CompactStatus:
    """What one answer says (times to the second)."""

    serial: int
    status: CertStatus
    this_update: datetime
    next_update: datetime
    revoked_at: datetime | None = None
    reason: Reason | None = None


@dataclass(frozen=True)
class StatusQuery:
    """What a request asks: the CA (a prefix of its key hash) and the serial."""

    issuer: bytes
    serial: int


def issuer_key_hash(ca: x509.Certificate) -> bytes:
    """SHA-256 of the CA's subjectPublicKey bits (OCSP's issuerKeyHash with SHA-256)."""
    public = ca.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):  # the bits are the point: no ASN.1 parse
        bits = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    else:
        bits = key_bits(ca)
    return hashlib.sha256(bits).digest()


def signer_kid(signer: x509.Certificate) -> bytes:
    return issuer_key_hash(signer)[:KID_BYTES]


def _serial_bytes(serial: int) -> bytes:
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def encode_request(ca: x509.Certificate, serial: int) -> bytes:
    """The FETCH body asking the status of `serial` under `ca` (the full key hash)."""
    return cbor2.dumps([issuer_key_hash(ca), _serial_bytes(serial)])


def decode_request(body: bytes) -> StatusQuery:
    """The query of a FETCH body; RequestInvalid naming what is wrong."""
    try:
        item = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise RequestInvalid("status-request", f"the request is not CBOR: {exc}") from None
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
        raise RequestInvalid(
            "status-request", "the request must be a CBOR array [issuer (bstr), serial (bstr)]"
        )
    issuer, serial = item
    if not MIN_ISSUER_BYTES <= len(issuer) <= 32:
        raise RequestInvalid("status-request", f"issuer: {MIN_ISSUER_BYTES} to 32 bytes of its key hash")
    if not 1 <= len(serial) <= _MAX_SERIAL_BYTES or not any(serial):
        raise RequestInvalid("status-request", f"serial: a positive number of 1 to {_MAX_SERIAL_BYTES} bytes")
    return StatusQuery(issuer, int.from_bytes(serial, "big"))


def _payload(status: CompactStatus) -> bytes:
    fields: list[Any] = [
        _serial_bytes(status.serial),
        int(_WIRE[status.status]),
        _epoch(status.this_update),
        _epoch(status.next_update),
    ]
    if status.status is CertStatus.REVOKED:
        assert status.revoked_at is not None, "a revoked status has a revocation time"
        fields.append(_epoch(status.revoked_at))
        if status.reason is not None and status.reason is not Reason.UNSPECIFIED:
            fields.append(int(status.reason))
    return cbor2.dumps(fields)


def _to_be_signed(payload: bytes) -> bytes:
    """Sig_structure of a COSE_Sign1 (RFC 9052 4.4), no external AAD."""
    return cbor2.dumps(["Signature1", PROTECTED, b"", payload])


def sign_status(status: CompactStatus, signer: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The COSE_Sign1 answer for `status`, signed with the delegated responder's key."""
    return sign_payload(_payload(status), signer, key)


def sign_payload(payload: bytes, signer: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A COSE_Sign1 (ES256, kid of `signer`) over any `payload` bytes (tests and fuzzers reach the
    payload decoder behind a valid signature with it)."""
    r, s = decode_dss_signature(key.sign(_to_be_signed(payload), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return cbor2.dumps([PROTECTED, {_HEADER_KID: signer_kid(signer)}, payload, signature])


def _sign1(answer: bytes) -> list[Any]:
    """The four items of a COSE_Sign1 (tagged or not), unverified."""
    try:
        item = cbor2.loads(answer)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise StatusAnswerInvalid(f"not CBOR: {exc}") from None
    if isinstance(item, cbor2.CBORTag) and item.tag == 18:  # a tagged COSE_Sign1 is one too
        item = item.value
    if not (isinstance(item, list) and len(item) == 4):
        raise StatusAnswerInvalid("not a COSE_Sign1 (an array of 4)")
    return item


def answer_kid(answer: bytes) -> bytes:
    """The kid an answer names (unverified: which signer certificate to verify it with)."""
    unprotected = _sign1(answer)[1]
    kid = unprotected.get(_HEADER_KID) if isinstance(unprotected, dict) else None
    if not isinstance(kid, bytes):
        raise StatusAnswerInvalid("the answer names no kid")
    return kid


def verify_status(
    answer: bytes,
    signer: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    serial: int | None = None,
    *,
    skew: timedelta = CLOCK_SKEW,
) -> CompactStatus:
    """What `answer` says, once it is shown to be signed by `signer` (a delegated OCSP responder
    of `issuer`: directly issued by it, EKU id-kp-OCSPSigning, valid `now`), about `serial` if
    given, and current at `now` (thisUpdate may be up to `skew` ahead of a device's clock).
    StatusAnswerInvalid otherwise."""
    _check_signer(signer, issuer, now, skew)
    item = _sign1(answer)
    protected, unprotected, payload, signature = item
    if protected != PROTECTED:
        raise StatusAnswerInvalid("the protected header must be exactly {1: -7} (ES256)")
    if not isinstance(unprotected, dict) or unprotected.get(_HEADER_KID) != signer_kid(signer):
        raise StatusAnswerInvalid("the kid does not name this signer")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes) or len(signature) != 64:
        raise StatusAnswerInvalid("payload or signature of the wrong type or size")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise StatusAnswerInvalid("the signer's key is not P-256")
    try:
        public.verify(der, _to_be_signed(payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise StatusAnswerInvalid("bad signature") from None
    status = _decode_payload(payload)
    if serial is not None and status.serial != serial:
        raise StatusAnswerInvalid(f"the answer is about serial {status.serial:x}, not {serial:x}")
    if not status.this_update - skew <= now < status.next_update:
        raise StatusAnswerInvalid(
            f"not current: valid {status.this_update.isoformat()} to {status.next_update.isoformat()}"
        )
    return status


def _check_signer(signer: x509.Certificate, issuer: x509.Certificate, now: datetime, skew: timedelta) -> None:
    try:
        signer.verify_directly_issued_by(issuer)
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise StatusAnswerInvalid("the signer is not a responder certified by this CA") from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise StatusAnswerInvalid("the signer lacks EKU id-kp-OCSPSigning")
    if not signer.not_valid_before_utc - skew <= now <= signer.not_valid_after_utc:
        raise StatusAnswerInvalid("the signer's certificate is outside its validity")


def _decode_payload(payload: bytes) -> CompactStatus:
    try:
        fields = cbor2.loads(payload)
        if not isinstance(fields, list) or len(fields) not in (4, 5, 6):
            raise ValueError("a payload of 4 to 6 items")
        serial, wire, this_update, next_update, *revoked = fields
        # Exact types: cbor2 also yields shared and self-referencing values, which hash badly.
        if not isinstance(serial, bytes) or not all(
            type(n) is int for n in (wire, this_update, next_update, *revoked)
        ):
            raise ValueError("field types")
        status = _STATUS[WireStatus(wire)]
        if (status is CertStatus.REVOKED) != bool(revoked):
            raise ValueError("a revocation time with, and only with, status revoked")
        return CompactStatus(
            int.from_bytes(serial, "big"),
            status,
            datetime.fromtimestamp(this_update, UTC),
            datetime.fromtimestamp(next_update, UTC),
            datetime.fromtimestamp(revoked[0], UTC) if revoked else None,
            Reason(revoked[1]) if len(revoked) == 2 else (Reason.UNSPECIFIED if revoked else None),
        )
    # A time past year 9999 is OverflowError or (EOVERFLOW from the C library) OSError.
    except (
        cbor2.CBORDecodeError,
        ValueError,
        TypeError,
        OverflowError,
        OSError,
        RecursionError,
        EOFError,
    ) as exc:
        raise StatusAnswerInvalid(f"malformed payload: {exc}") from None
