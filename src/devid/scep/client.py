"""A SCEP client: what a device sends (PKCSReq, RenewalReq) and reads back (CertRep). Used by the
tests' hand-made requests and by `devid bench scep`; devices in the field use their own client
(micromdm's scepclient is the one tested against)."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from devid.pki.der import tlv
from devid.scep.envelope import RecipientKey, envelope, open_envelope
from devid.scep.message import Reply, check_signature, read_message, signed
from devid.scep.status import FailInfo, MessageType, PkiStatus


@dataclass(frozen=True)
class Signer:
    """The client's key and the certificate it signs with: a self-signed one for a PKCSReq, the
    current certificate for a RenewalReq. The CertRep is encrypted to it."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def self_signed(cls, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str) -> Signer:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder(
                issuer_name=name,
                subject_name=name,
                public_key=key.public_key(),
                serial_number=x509.random_serial_number(),
                not_valid_before=now - timedelta(minutes=5),
                not_valid_after=now + timedelta(days=1),
            )
        ).sign(key, hashes.SHA256())
        return cls(key, cert)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def recipient_key(self) -> RecipientKey:
        """What opens the CertRep: the EC key itself (key agreement), or RSA decryption."""
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key
        rsa_key = self.key
        return lambda wrapped: rsa_key.decrypt(wrapped, padding.PKCS1v15())


def csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, common_name: str, challenge: str | None
) -> bytes:
    """A PKCS #10 CSR naming the device serial as commonName, with the challengePassword."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if challenge is not None:
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def request(
    csr_der: bytes, signer: Signer, ra: x509.Certificate, message_type: MessageType = MessageType.PKCS_REQ
) -> tuple[bytes, str, bytes]:
    """A pkiMessage carrying `csr_der` encrypted to the RA: (DER, transactionID, senderNonce)."""
    spki = signer.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    transaction = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    nonce = os.urandom(16)
    attrs: dict[str, str | bytes] = {
        "message_type": message_type.value,
        "transaction_id": transaction,
        "sender_nonce": nonce,
    }
    return signed(envelope(csr_der, ra), attrs, signer.certificate, signer.sign), transaction, nonce


def issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    """A CertPoll's content (RFC 8894 3.3.3): the CA's name and the requester's."""
    return tlv(0x30, issuer.public_bytes() + subject.public_bytes())


def ca_certificates(body: bytes) -> list[x509.Certificate]:
    """GetCACert's answer: the RA certificate first, then the CA chain."""
    info = cms.ContentInfo.load(body)
    return [x509.load_der_x509_certificate(c.chosen.dump()) for c in info["content"]["certificates"]]


def reply(der: bytes, signer: Signer, ra: x509.Certificate, nonce: bytes) -> Reply:
    """The CertRep to a request sent with `nonce`, its signature checked to be the RA's; the
    certificate decrypted on SUCCESS. ValueError for anything else."""
    message = read_message(der)
    check_signature(message)
    if message.signer != ra or message.message_type != MessageType.CERT_REP:
        raise ValueError("not a CertRep signed by the RA")
    if message.recipient_nonce != nonce:
        raise ValueError("the CertRep answers another request (recipientNonce)")
    status = PkiStatus(message.pki_status or "")
    if status is PkiStatus.FAILURE:
        return Reply(status, FailInfo(message.fail_info or ""))
    if status is PkiStatus.PENDING:
        return Reply(status)
    inner = open_envelope(message.content, signer.certificate, signer.recipient_key())
    return Reply(status, certificate=ca_certificates(inner)[0])
