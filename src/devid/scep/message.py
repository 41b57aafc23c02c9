"""SCEP pkiMessages (RFC 8894 3): reading a client's signed and encrypted request, writing the
CertRep the RA signs.

A request is a CMS SignedData, signed by the client's key (a self-signed certificate on first
enrollment, its current certificate on renewal), whose content is an EnvelopedData encrypted to
the RA with RSA key transport, holding the PKCS #10 CSR. micromdm's scepclient writes the
EnvelopedData in BER with constructed OCTET STRINGs, which `cryptography`'s PKCS #7 decryption
refuses: it is read here with asn1crypto and decrypted by hand (AES-CBC or 3DES-CBC).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from devid.authority.scep_ra import RegistrationAuthority
from devid.pki.der import encode_oid, tlv

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


class MessageType(StrEnum):
    CERT_REP = "3"
    RENEWAL_REQ = "17"
    PKCS_REQ = "19"
    CERT_POLL = "20"


class PkiStatus(StrEnum):
    SUCCESS = "0"
    FAILURE = "2"
    PENDING = "3"


class FailInfo(StrEnum):
    """RFC 8894 3.2.1.4."""

    BAD_ALG = "0"
    BAD_MESSAGE_CHECK = "1"
    BAD_REQUEST = "2"
    BAD_TIME = "3"
    BAD_CERT_ID = "4"


class ScepError(Exception):
    """A request answered with a CertRep FAILURE (when it could be read far enough to answer it)."""

    def __init__(self, fail_info: FailInfo, message: str) -> None:
        super().__init__(message)
        self.fail_info = fail_info
        self.message = message


class UnreadableMessage(Exception):
    """Not a SCEP pkiMessage at all (no signer, transaction or nonce to answer to): HTTP 400."""


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
        signed_attrs = attrs.untag().dump(force=True)
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


def _encrypted_content(fields: bytes) -> bytes | None:
    """EncryptedContentInfo's `[0] IMPLICIT OCTET STRING`, which BER lets a client (micromdm's)
    send constructed, in chunks; asn1crypto reads only the primitive form."""
    pos = 0
    while pos < len(fields):
        size = parser.peek(fields[pos:])
        cls, method, tag, _, contents, _ = parser.parse(fields[pos : pos + size])
        if cls == 2 and tag == 0:
            return _octets(contents) if method == 1 else contents
        pos += size
    return None


def _octets(chunks: bytes) -> bytes:
    """The bytes of a constructed OCTET STRING's contents (nested chunks joined)."""
    out, pos = [], 0
    while pos < len(chunks):
        size = parser.peek(chunks[pos:])
        _, method, tag, _, contents, _ = parser.parse(chunks[pos : pos + size])
        if tag != 4:
            raise ValueError("a constructed OCTET STRING holds OCTET STRINGs only")
        out.append(_octets(contents) if method == 1 else contents)
        pos += size
    return b"".join(out)


def _hash(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _cipher(name: str, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    if name in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    if name in ("tripledes_3key", "des"):
        # Single DES (micromdm's scepclient encrypts its request with it) is 3DES with one key
        # three times; devid reads it but answers with AES.
        return Cipher(TripleDES(key * 3 if len(key) == 8 else key), modes.CBC(iv))
    raise ScepError(FailInfo.BAD_ALG, f"content encryption {name} is not supported (AES-CBC or 3DES-CBC)")


def open_envelope(content: bytes, recipient: x509.Certificate, unwrap: Callable[[bytes], bytes]) -> bytes:
    """What an EnvelopedData holds for `recipient`, whose key `unwrap`s the content-encryption
    key (RSA key transport). ScepError: badMessageCheck when it was not encrypted to `recipient`
    or does not decrypt, badAlg for a cipher devid does not speak."""
    try:
        info = cms.ContentInfo.load(content)
        if info["content_type"].native != "enveloped_data":
            raise ScepError(FailInfo.BAD_REQUEST, "the message content is not an EnvelopedData")
        enveloped = info["content"]
        mine = _asn1(recipient)
        wrapped = None
        for info in enveloped["recipient_infos"]:
            if info.name != "ktri":
                continue
            rid = info.chosen["rid"]
            if (
                rid.name == "issuer_and_serial_number"
                and rid.chosen["issuer"] == mine.issuer
                and rid.chosen["serial_number"].native == mine.serial_number
            ):
                wrapped = info.chosen["encrypted_key"].native
        if wrapped is None:
            raise ScepError(
                FailInfo.BAD_MESSAGE_CHECK,
                "the message is not encrypted to the expected certificate (the RA's)",
            )
        content_info = enveloped["encrypted_content_info"]
        algorithm = content_info["content_encryption_algorithm"]
        name, iv = algorithm["algorithm"].native, algorithm["parameters"].native
        ciphertext = _encrypted_content(content_info.contents)
    except ScepError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ScepError(
            FailInfo.BAD_REQUEST, f"the EnvelopedData cannot be read: {type(exc).__name__}"
        ) from None
    if not isinstance(iv, bytes) or not isinstance(ciphertext, bytes):
        raise ScepError(FailInfo.BAD_REQUEST, "the EnvelopedData names no IV or carries no content")
    try:
        key = unwrap(wrapped)
        decryptor = _cipher(name, key, iv).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(len(iv) * 8).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ScepError:
        raise
    except ValueError:
        raise ScepError(
            FailInfo.BAD_MESSAGE_CHECK, "the message does not decrypt with the recipient's key"
        ) from None


def envelope(content: bytes, recipient: x509.Certificate) -> bytes:
    """`content` encrypted to `recipient` (RSA key transport) with AES-128-CBC (GetCACaps says
    AES; devid never encrypts with DES, whatever the client used)."""
    key, iv = os.urandom(16), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    public = recipient.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise ScepError(
            FailInfo.BAD_ALG, "the answer is encrypted with RSA key transport: the signer key must be RSA"
        )
    cert = _asn1(recipient)
    recipient_info = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number}),
            ),
            "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}),
            "encrypted_key": public.encrypt(key, padding.PKCS1v15()),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient_info)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": algos.EncryptionAlgorithm(
                    {"algorithm": "aes128_cbc", "parameters": core.OctetString(iv)}
                ),
                "encrypted_content": ciphertext,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


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
    signed with SHA-256 and RSASSA-PKCS1-v1_5 by `sign` (the key of `signer`)."""
    encap: dict[str, object] = {"content_type": "data"}
    if body is not None:
        encap["content"] = body
    attrs = [
        {"type": "content_type", "values": ["data"]},
        {"type": "message_digest", "values": [hashlib.sha256(body or b"").digest()]},
        *({"type": name, "values": [value]} for name, value in scep_attributes.items()),
    ]
    signed_attrs = cms.CMSAttributes(attrs)
    cert = _asn1(signer)
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number}),
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": signed_attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
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


def _asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
