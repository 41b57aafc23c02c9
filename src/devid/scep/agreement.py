"""CMS key agreement for an EC P-256 recipient (RFC 5652 6.2.2 with RFC 5753): how a CertRep's
content-encryption key reaches a requester whose key cannot do RSA key transport.

dhSinglePass-stdDH-sha256kdf-scheme: ephemeral-static ECDH on P-256, the X9.63 KDF with SHA-256
over the shared secret and the ECC-CMS-SharedInfo, then AES-128 key wrap (RFC 3394). OpenSSL
decrypts it (`openssl cms -decrypt`) and writes it with `-keyopt ecdh_kdf_md:sha256`.
"""

from __future__ import annotations

from asn1crypto import cms, core, keys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from devid.pki.der import encode_oid, tlv

#: RFC 5753 7.1.4, with the key-wrap algorithm it names as parameters (RFC 3565: absent parameters).
DH_SINGLE_PASS_SHA256 = "1.3.132.1.11.1"
AES128_WRAP = "2.16.840.1.101.3.4.1.5"
_WRAP_BITS = 128


def _shared_info() -> bytes:
    """ECC-CMS-SharedInfo (RFC 5753 7.2): keyInfo the wrap algorithm, no entityUInfo (no ukm),
    suppPubInfo the wrapping key's length in bits as a 4-byte big-endian OCTET STRING."""
    key_info = tlv(0x30, encode_oid(AES128_WRAP))
    supp_pub_info = tlv(0xA2, tlv(0x04, _WRAP_BITS.to_bytes(4, "big")))
    return tlv(0x30, key_info + supp_pub_info)


def _kek(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    shared = private.exchange(ec.ECDH(), peer)
    kdf = X963KDF(algorithm=hashes.SHA256(), length=_WRAP_BITS // 8, sharedinfo=_shared_info())
    return kdf.derive(shared)


def key_agree_recipient(
    cek: bytes, recipient: ec.EllipticCurvePublicKey, rid: cms.IssuerAndSerialNumber
) -> cms.RecipientInfo:
    """A KeyAgreeRecipientInfo carrying `cek` to `recipient` (named by `rid`), from a fresh
    ephemeral key sent as originatorKey."""
    ephemeral = ec.generate_private_key(recipient.curve)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    wrap_algorithm = core.Any.load(tlv(0x30, encode_oid(AES128_WRAP)))
    info = cms.KeyAgreeRecipientInfo(
        {
            "version": "v3",
            "originator": cms.OriginatorIdentifierOrKey(
                name="originator_key",
                value=keys.PublicKeyInfo({"algorithm": {"algorithm": "ec"}, "public_key": point}),
            ),
            "key_encryption_algorithm": {"algorithm": DH_SINGLE_PASS_SHA256, "parameters": wrap_algorithm},
            "recipient_encrypted_keys": [
                {
                    "rid": cms.KeyAgreementRecipientIdentifier(name="issuer_and_serial_number", value=rid),
                    "encrypted_key": aes_key_wrap(_kek(ephemeral, recipient), cek),
                }
            ],
        }
    )
    return cms.RecipientInfo(name="kari", value=info)


def agreed_key(
    info: cms.KeyAgreeRecipientInfo, encrypted_key: bytes, key: ec.EllipticCurvePrivateKey
) -> bytes:
    """The content-encryption key a KeyAgreeRecipientInfo wrapped for `key`'s holder. ValueError
    for another scheme or curve, or when it does not unwrap."""
    if info["key_encryption_algorithm"]["algorithm"].dotted != DH_SINGLE_PASS_SHA256:
        raise ValueError("only dhSinglePass-stdDH-sha256kdf-scheme is read")
    wrap = core.Sequence.load(info["key_encryption_algorithm"]["parameters"].dump())
    if wrap[0].dump() != encode_oid(AES128_WRAP):
        raise ValueError("only aes128-wrap is read")
    originator = info["originator"]
    if originator.name != "originator_key":
        raise ValueError("the originator is not an ephemeral key")
    point = originator.chosen["public_key"].native
    peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, point)
    try:
        return aes_key_unwrap(_kek(key, peer), encrypted_key)
    except InvalidUnwrap:
        raise ValueError("the key does not unwrap") from None
