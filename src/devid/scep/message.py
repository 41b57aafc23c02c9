"""SCEP pkiMessages (RFC 8894 3): reading a client's signed and encrypted request, writing the
CertRep the RA signs.

A request is a CMS SignedData, signed by the client's key (a self-signed certificate on first
enrollment, its current certificate on renewal), whose content is an EnvelopedData encrypted to
the RA (`devid.scep.envelope`) holding the PKCS #10 CSR.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from devid.authority.scep_ra import RegistrationAuthority
from devid.pki.der import encode_oid, tlv
from devid.scep.envelope import asn1_certificate, envelope
from devid.scep.status import FailInfo, MessageType, PkiStatus, ScepError, UnreadableMessage

_DATA = "1.2.840.113549.1.7.1"
_SIGNED_DATA = "1.2.840.113549.1.7.2"
#: Largest pkiMessage read (an RSA-3072 request with its self-signed certificate is ~3 KiB).
MAX_MESSAGE = 64 * 1024

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


#: RFC 8894 3.2.1: the SCEP attributes, by OID.
_SCEP_ATTRIBUTES = {
    "2.16.840.1.113733.1.9.2": "message_type",
    "2.16.840.1.113733.1.9.3": "pki_status",
    "2.16.840.1.113733.1.9.4": "fail_info",
    "2.16.840.1.113733.1.9.5": "sender_nonce",
    "2.16.840.1.113733.1.9.6": "recipient_nonce",
    "2.16.840.1.113733.1.9.7": "transaction_id",
}


class _SetOfPrintableString(core.SetOf):  # type: ignore[misc]
    _child_spec = core.PrintableString


# asn1crypto reads attributes by name: teach it SCEP's (RFC 8894 3.2.1).
# (asn1crypto has no other way to name attribute types than its own tables; the names are SCEP's.)
cms.CMSAttributeType._map.update(_SCEP_ATTRIBUTES)
cms.CMSAttribute._oid_specs.update(
    {
        "message_type": _SetOfPrintableString,
        "pki_status": _SetOfPrintableString,
        "fail_info": _SetOfPrintableString,
        "transaction_id": _SetOfPrintableString,
        "sender_nonce": cms.SetOfOctetString,
        "recipient_nonce": cms.SetOfOctetString,
    }
)


@dataclass(frozen=True)
class PkiMessage:
    """A pkiMessage's signed envelope as read (`read_message`); `content` is still encrypted."""

    message_type: str
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate
    signer_der: bytes
    #: The EnvelopedData (DER or BER; empty when absent), opened by `open_envelope`.
    content: bytes
    #: What `check_signature` verifies.
    digest_name: str
    message_digest: object
    signed_attrs: bytes
    signature: bytes
    #: A CertRep's.
    pki_status: str | None = None
    fail_info: str | None = None
    recipient_nonce: bytes | None = None


def _attribute(attrs: cms.CMSAttributes, name: str) -> object:
    for attr in attrs:
        if attr["type"].native == name:
            values = attr["values"]
            return values[0].native if len(values) == 1 else None
    return None


def read_message(der: bytes) -> PkiMessage:
    """The signed envelope of a pkiMessage, its signature not yet checked (`check_signature`);
    UnreadableMessage for anything that is not one."""
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise UnreadableMessage("not a CMS SignedData")
        signed = info["content"]
        signer_info = signed["signer_infos"][0]
        attrs = signer_info["signed_attrs"]
        message_type = _attribute(attrs, "message_type")
        transaction_id = _attribute(attrs, "transaction_id")
        nonce = _attribute(attrs, "sender_nonce")
        if (
            not isinstance(message_type, str)
            or not isinstance(transaction_id, str)
            or not isinstance(nonce, bytes)
        ):
            raise UnreadableMessage("a pkiMessage names its messageType, transactionID and senderNonce")
        sid = signer_info["sid"]
        signer_der = next(
            c.chosen.dump()
            for c in signed["certificates"] or []
            if c.name == "certificate"
            and sid.name == "issuer_and_serial_number"
            and c.chosen.issuer == sid.chosen["issuer"]
            and c.chosen.serial_number == sid.chosen["serial_number"].native
        )
        content = signed["encap_content_info"]["content"]
        body = (content.native if content is not None else None) or b""
        if not isinstance(body, bytes):
            raise UnreadableMessage("the SignedData content is not an OCTET STRING")
        status, fail = _attribute(attrs, "pki_status"), _attribute(attrs, "fail_info")
        recipient_nonce = _attribute(attrs, "recipient_nonce")
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        signature = signer_info["signature"].native
        # Signed as received with the SET OF tag in place of [0] (RFC 5652 5.4): never re-encoded.
        signed_attrs = b"\x31" + attrs.dump()[1:]
        message_digest = _attribute(attrs, "message_digest")
    except UnreadableMessage:
        raise
    except (ValueError, TypeError, KeyError, IndexError, StopIteration) as exc:
        raise UnreadableMessage(f"not a SCEP pkiMessage: {type(exc).__name__}") from None
    try:
        signer = x509.load_der_x509_certificate(signer_der)
    except ValueError:
        raise UnreadableMessage("the signer certificate cannot be read") from None
    return PkiMessage(
        message_type,
        transaction_id,
        nonce,
        signer,
        signer_der,
        body,
        digest_name,
        message_digest,
        signed_attrs,
        signature,
        status if isinstance(status, str) else None,
        fail if isinstance(fail, str) else None,
        recipient_nonce if isinstance(recipient_nonce, bytes) else None,
    )


def check_signature(request: PkiMessage) -> None:
    """ScepError unless the request's signature verifies with its signer certificate's key (the
    proof of possession of that key) over its signed attributes, which hash its content."""
    digest_name, signer, body = request.digest_name, request.signer, request.content
    message_digest, signature, signed_attrs = request.message_digest, request.signature, request.signed_attrs
    digest = _HASHES.get(digest_name)
    if digest is None:
        raise ScepError(FailInfo.BAD_ALG, f"digest algorithm {digest_name} is not supported")
    if message_digest != _hash(digest, body):
        raise ScepError(FailInfo.BAD_MESSAGE_CHECK, "the messageDigest does not match the content")
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed_attrs, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed_attrs, ec.ECDSA(digest))
        else:
            raise ScepError(FailInfo.BAD_ALG, "the signer key is neither RSA nor EC")
    except InvalidSignature:
        raise ScepError(FailInfo.BAD_MESSAGE_CHECK, "the request signature does not verify") from None


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """A degenerate certs-only SignedData (RFC 8894 4.2.1.2: GetCACert's RA certificate, then the
    CA chain), written by hand: an ASN.1 library sorts the SET OF certificates, losing that order."""
    signed_data = tlv(
        0x30,
        tlv(0x02, b"\x01")  # version 1
        + tlv(0x31, b"")  # no digestAlgorithms
        + tlv(0x30, encode_oid(_DATA))  # encapContentInfo without content
        + tlv(0xA0, b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs))
        + tlv(0x31, b""),  # no signerInfos
    )
    return tlv(0x30, encode_oid(_SIGNED_DATA) + tlv(0xA0, signed_data))


@dataclass(frozen=True)
class Reply:
    """What a CertRep says to one request."""

    status: PkiStatus
    fail_info: FailInfo | None = None
    #: SUCCESS: the issued certificate, encrypted to the requester.
    certificate: x509.Certificate | None = None


def cert_rep(
    ra: RegistrationAuthority,
    reply: Reply,
    transaction_id: str,
    recipient_nonce: bytes,
    recipient: x509.Certificate | None,
) -> bytes:
    """The CertRep (RFC 8894 3.3.2), signed by the RA; a SUCCESS carries the certificate in a
    certs-only SignedData encrypted to `recipient` (the request's signer)."""
    body = None
    if reply.status is PkiStatus.SUCCESS and reply.certificate is not None and recipient is not None:
        body = envelope(certs_only([reply.certificate]), recipient)
    attrs = {
        "message_type": MessageType.CERT_REP.value,
        "pki_status": reply.status.value,
        "transaction_id": transaction_id,
        "sender_nonce": os.urandom(16),
        "recipient_nonce": recipient_nonce,
    }
    if reply.fail_info is not None:
        attrs["fail_info"] = reply.fail_info.value
    return signed(body, attrs, ra.certificate, ra.sign)


def signed(
    body: bytes | None,
    scep_attributes: dict[str, str | bytes],
    signer: x509.Certificate,
    sign: Callable[[bytes], bytes],
) -> bytes:
    """A pkiMessage: SignedData over `body` (none: a CertRep without content), its SCEP attributes
    signed with SHA-256 and RSASSA-PKCS1-v1_5 or ECDSA (as `signer`'s key is) by `sign`."""
    encap: dict[str, object] = {"content_type": "data"}
    if body is not None:
        encap["content"] = body
    attrs = [
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [hashlib.sha256(body or b"").digest()]},
        *({"type": name, "values": [value]} for name, value in scep_attributes.items()),
    ]
    signed_attrs = cms.CMSAttributes(attrs)
    cert = asn1_certificate(signer)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number}),
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {
                "algorithm": "sha256_ecdsa"
                if isinstance(signer.public_key(), ec.EllipticCurvePublicKey)
                else "rsassa_pkcs1v15"
            },
            "signature": sign(signed_attrs.dump()),
        }
    )
    data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": encap,
            "certificates": [cert],
            "signer_infos": [signer_info],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": data}).dump())
