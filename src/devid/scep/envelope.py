"""CMS EnvelopedData as SCEP uses it (RFC 8894 3.2.2): the CSR encrypted to the RA with RSA key
transport, the issued certificate encrypted to the requester with RSA key transport (an RSA
requester) or ECDH key agreement (a P-256 one, `devid.scep.agreement`).

micromdm's scepclient writes its EnvelopedData in BER with constructed OCTET STRINGs, which
`cryptography`'s PKCS #7 decryption refuses, and encrypts with single DES: it is read here with
asn1crypto and decrypted by hand (AES-CBC, 3DES-CBC or DES-CBC). devid always answers with
AES-128-CBC.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from devid.scep.agreement import agreed_key, key_agree_recipient
from devid.scep.status import FailInfo, ScepError

#: How a recipient recovers the content-encryption key: its RSA decryption of a key-transport
#: recipient's encryptedKey, or its EC private key for a key-agreement recipient.
RecipientKey = Callable[[bytes], bytes] | ec.EllipticCurvePrivateKey


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


def _cipher(name: str, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    if name in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    if name in ("tripledes_3key", "des"):
        # Single DES (micromdm's scepclient encrypts its request with it) is 3DES with one key
        # three times; devid reads it but answers with AES.
        return Cipher(TripleDES(key * 3 if len(key) == 8 else key), modes.CBC(iv))
    raise ScepError(FailInfo.BAD_ALG, f"content encryption {name} is not supported (AES-CBC or 3DES-CBC)")


def _mine(rid: cms.IssuerAndSerialNumber, cert: asn1_x509.Certificate) -> bool:
    return bool(rid["issuer"] == cert.issuer and rid["serial_number"].native == cert.serial_number)


def _wrapped_key(
    enveloped: cms.EnvelopedData, mine: asn1_x509.Certificate, key: RecipientKey
) -> bytes | None:
    """The content-encryption key of the recipient info addressed to `mine` (None: there is none).
    ValueError when it does not decrypt."""
    for info in enveloped["recipient_infos"]:
        if info.name == "ktri" and not isinstance(key, ec.EllipticCurvePrivateKey):
            rid = info.chosen["rid"]
            if rid.name == "issuer_and_serial_number" and _mine(rid.chosen, mine):
                return key(info.chosen["encrypted_key"].native)
        elif info.name == "kari" and isinstance(key, ec.EllipticCurvePrivateKey):
            for recipient in info.chosen["recipient_encrypted_keys"]:
                rid = recipient["rid"]
                if rid.name == "issuer_and_serial_number" and _mine(rid.chosen, mine):
                    return agreed_key(info.chosen, recipient["encrypted_key"].native, key)
    return None


def open_envelope(content: bytes, recipient: x509.Certificate, key: RecipientKey) -> bytes:
    """What an EnvelopedData holds for `recipient`, whose `key` recovers the content-encryption
    key. ScepError: badMessageCheck when it was not encrypted to `recipient` or does not decrypt,
    badAlg for a cipher devid does not speak."""
    try:
        info = cms.ContentInfo.load(content)
        if info["content_type"].native != "enveloped_data":
            raise ScepError(FailInfo.BAD_REQUEST, "the message content is not an EnvelopedData")
        enveloped = info["content"]
        mine = asn1_certificate(recipient)
        # Parsed before any key is used: a malformed envelope is a bad request.
        recipient_infos = list(enveloped["recipient_infos"])
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
    if not recipient_infos:
        raise ScepError(FailInfo.BAD_REQUEST, "the EnvelopedData has no recipient")
    if not isinstance(iv, bytes) or not isinstance(ciphertext, bytes):
        raise ScepError(FailInfo.BAD_REQUEST, "the EnvelopedData names no IV or carries no content")
    try:
        cek = _wrapped_key(enveloped, mine, key)
        if cek is None:
            raise ScepError(
                FailInfo.BAD_MESSAGE_CHECK, "the message is not encrypted to the expected certificate"
            )
        decryptor = _cipher(name, cek, iv).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(len(iv) * 8).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ScepError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepError(
            FailInfo.BAD_MESSAGE_CHECK, f"the message does not decrypt with the recipient's key: {exc}"
        ) from None


def envelope(content: bytes, recipient: x509.Certificate) -> bytes:
    """`content` encrypted to `recipient` (RSA key transport, or ECDH key agreement for a P-256
    key) with AES-128-CBC (GetCACaps says AES; devid never encrypts with DES, whatever the client
    used). ScepError badAlg for any other key."""
    key, iv = os.urandom(16), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    cert = asn1_certificate(recipient)
    rid = cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number})
    public = recipient.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        recipient_info, version = key_agree_recipient(key, public, rid), "v2"
    elif isinstance(public, rsa.RSAPublicKey):
        transport = cms.KeyTransRecipientInfo(
            {
                "version": "v0",
                "rid": cms.RecipientIdentifier(name="issuer_and_serial_number", value=rid),
                "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"}),
                "encrypted_key": public.encrypt(key, padding.PKCS1v15()),
            }
        )
        recipient_info, version = cms.RecipientInfo(name="ktri", value=transport), "v0"
    else:
        raise ScepError(FailInfo.BAD_ALG, "the requester's key must be EC P-256 or RSA to receive the answer")
    enveloped = cms.EnvelopedData(
        {
            "version": version,
            "recipient_infos": [recipient_info],
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


def asn1_certificate(cert: x509.Certificate) -> asn1_x509.Certificate:
    """`cert` as asn1crypto's object, to place it in a CMS structure."""
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
