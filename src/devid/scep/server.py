"""SCEP server endpoints (RFC 8894) at `/scep[/<label>]?operation=...`.

Thin like EST: read the pkiMessage (`devid.scep.message`), find the credential, await the same
enrollment service EST uses, answer with a CertRep the RA signs. The credential is the request's
own signature: a PKCSReq carries the device serial (the CSR's commonName) and a single-use
enrollment secret (its challengePassword); a RenewalReq is signed with the device's current
certificate, which then goes through the one credential check.

A request that cannot be read as a pkiMessage at all gets HTTP 400 (there is no transaction to
answer); one that can is answered with a CertRep: SUCCESS with the certificate, PENDING while an
operator's approval is awaited (the client polls with CertPoll, or sends its PKCSReq again; either
completes once approved, and the secret is spent only then), or FAILURE with a failInfo.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AttributeOID, NameOID

from devid.authority import scep_transactions as transactions
from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential
from devid.authority.enroll import Credential, Operation, SecretCredential
from devid.authority.enrollment import EnrollmentService, EnrollRequest
from devid.authority.policy import LabelPolicy
from devid.authority.scep_ra import RegistrationAuthority, registration_authority
from devid.errors import (
    AuthenticationRequired,
    BodyTooLarge,
    CredentialRefused,
    DevidError,
    PolicyError,
    RequestInvalid,
)
from devid.pki.csr import load_csr
from devid.scep.envelope import open_envelope
from devid.scep.message import (
    MAX_MESSAGE,
    PkiMessage,
    Reply,
    cert_rep,
    certs_only,
    check_signature,
    read_message,
)
from devid.scep.status import FailInfo, MessageType, PkiStatus, ScepError, UnreadableMessage
from devid.web.errors import ERROR_HEADER
from devid.web.peer import from_trusted_proxy, peer_address

PATH = "/scep"
#: RFC 8894 3.5.2: what devid's SCEP server does beyond the basics.
CAPABILITIES = ("POSTPKIOperation", "SHA-256", "AES", "Renewal")
PKI_MESSAGE = "application/x-pki-message"
CA_RA_CERT = "application/x-x509-ca-ra-cert"
_LABEL = r"{label:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"
#: Refusals that name an algorithm devid does not accept.
_BAD_ALG_CODES = frozenset({"key-type", "key-curve", "csr-signature-algorithm"})


def fail_info(error: DevidError) -> FailInfo:
    """The failInfo a refusal of the enrollment service is answered with."""
    if error.code in _BAD_ALG_CODES:
        return FailInfo.BAD_ALG
    if isinstance(error, (AuthenticationRequired, CredentialRefused)):
        return FailInfo.BAD_MESSAGE_CHECK
    return FailInfo.BAD_REQUEST


class ScepServer:
    """The SCEP endpoints of one authority, enrolling through `service` (EST's)."""

    def __init__(self, authority: Authority, service: EnrollmentService) -> None:
        self.authority = authority
        self.service = service

    def routes(self) -> list[web.RouteDef]:
        out = []
        for path in (PATH, f"{PATH}/{_LABEL}"):
            out += [web.get(path, self.handle, allow_head=False), web.post(path, self.handle)]
        return out

    async def _ra(self) -> RegistrationAuthority:
        # The first call makes the RSA key and its certificate: not on the event loop.
        return await asyncio.to_thread(registration_authority, self.authority)

    async def handle(self, request: web.Request) -> web.Response:
        policy = self.authority.label_policy(request.match_info.get("label", ""))
        operation = request.query.get("operation", "")
        if operation == "GetCACaps":
            return web.Response(text="\n".join(CAPABILITIES) + "\n", content_type="text/plain")
        if operation == "GetCACert":
            ra = await self._ra()
            body = certs_only([ra.certificate, *ra.chain])
            return web.Response(body=body, headers={"Content-Type": CA_RA_CERT})
        if operation != "PKIOperation":
            raise RequestInvalid(
                "scep-operation",
                f"unknown SCEP operation {operation!r}: GetCACaps, GetCACert or PKIOperation",
            )
        der = await self._message(request)
        ra = await self._ra()
        try:
            message = read_message(der)
        except UnreadableMessage as exc:
            raise RequestInvalid("scep-message", f"not a SCEP pkiMessage: {exc}") from None
        try:
            check_signature(message)
            csr = (
                open_envelope(message.content, ra.certificate, ra.decrypt_key)
                if message.message_type != MessageType.CERT_POLL
                else b""
            )
            reply = await self._operate(request, policy, message, csr)
            headers = {"Content-Type": PKI_MESSAGE}
        except ScepError as exc:
            reply = Reply(PkiStatus.FAILURE, exc.fail_info)
            headers = {"Content-Type": PKI_MESSAGE, ERROR_HEADER: f"scep-{exc.fail_info.name.lower()}"}
        except DevidError as exc:
            # Audited by the enrollment service; the code also travels beside the CertRep.
            reply = Reply(PkiStatus.FAILURE, fail_info(exc))
            headers = {"Content-Type": PKI_MESSAGE, ERROR_HEADER: exc.code}
        body = await asyncio.to_thread(
            cert_rep, ra, reply, message.transaction_id, message.sender_nonce, message.signer
        )
        return web.Response(body=body, headers=headers)

    async def _operate(
        self, request: web.Request, policy: LabelPolicy, message: PkiMessage, csr_der: bytes
    ) -> Reply:
        signer_key = message.signer.public_key()
        p256 = isinstance(signer_key, ec.EllipticCurvePublicKey) and isinstance(
            signer_key.curve, ec.SECP256R1
        )
        if not p256 and not isinstance(signer_key, rsa.RSAPublicKey):
            # Checked before anything is issued: a certificate that cannot be delivered is not made.
            raise ScepError(
                FailInfo.BAD_ALG,
                "the CertRep is encrypted to the request's signer: sign it with a P-256 or RSA key",
            )
        who = transactions.requester(message.signer)
        credential: Credential
        if message.message_type == MessageType.PKCS_REQ:
            credential = _challenge(csr_der)
        elif message.message_type == MessageType.RENEWAL_REQ:
            # The pkiMessage's signature proved the key of this certificate; the one credential
            # check decides whether it authenticates a device.
            credential = CertificateCredential(message.signer_der)
        elif message.message_type == MessageType.CERT_POLL:
            # The PKCSReq this key sent under this transactionID and that was answered PENDING.
            held = await asyncio.to_thread(transactions.pending, self.authority, message.transaction_id, who)
            if held is None:
                raise ScepError(
                    FailInfo.BAD_CERT_ID,
                    "no pending SCEP transaction with this transactionID from this key",
                )
            policy, csr_der = self.authority.label_policy(held.label), held.csr
            credential = _challenge(csr_der)
        else:
            raise ScepError(FailInfo.BAD_REQUEST, f"messageType {message.message_type} is not supported")
        peer = peer_address(request)
        enrollment = EnrollRequest(
            policy.label,
            Operation.ENROLL,
            credential,
            csr_der,
            actor=f"scep:{peer or '-'}",
            peer=None if from_trusted_proxy(request) else peer,
            protocol="scep",
            allow_rsa=policy.scep_rsa,
        )
        result = await self.service.enroll(enrollment)
        if result.issued is None:
            if message.message_type == MessageType.PKCS_REQ:
                await asyncio.to_thread(
                    transactions.remember, self.authority, message.transaction_id, who, policy.label, csr_der
                )
            return Reply(PkiStatus.PENDING)
        if message.message_type == MessageType.CERT_POLL:
            # A PKCSReq sent again instead leaves its row to expire: its secret is spent by then.
            await asyncio.to_thread(transactions.forget, self.authority, message.transaction_id, who)
        return Reply(PkiStatus.SUCCESS, certificate=result.issued.certificate)

    @staticmethod
    async def _message(request: web.Request) -> bytes:
        """The pkiMessage: a POST body (DER), or GET's `message` parameter (base64)."""
        if request.method == "GET":
            # A `+` the client did not percent-encode arrives as a space (form decoding).
            text = request.query.get("message", "").replace(" ", "+")
            if len(text) > MAX_MESSAGE * 4 // 3 + 4:
                raise BodyTooLarge("body-too-large", f"SCEP message exceeds {MAX_MESSAGE} bytes")
            try:
                return base64.b64decode(text, validate=True)
            except binascii.Error:
                raise RequestInvalid("scep-message", "the message parameter is not base64") from None
        declared = request.content_length
        if declared is not None and declared > MAX_MESSAGE:
            raise BodyTooLarge("body-too-large", f"SCEP message of {declared} bytes exceeds {MAX_MESSAGE}")
        body = await request.content.read(MAX_MESSAGE + 1)
        if len(body) > MAX_MESSAGE:
            raise BodyTooLarge("body-too-large", f"SCEP message exceeds {MAX_MESSAGE} bytes")
        return body


def _challenge(csr_der: bytes) -> SecretCredential:
    """The device serial (CSR commonName) and enrollment secret (challengePassword) of a PKCSReq."""
    try:
        csr = load_csr(csr_der)
    except PolicyError as exc:
        raise ScepError(FailInfo.BAD_REQUEST, exc.message) from None
    try:
        password = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except (x509.AttributeNotFound, ValueError):
        raise ScepError(
            FailInfo.BAD_REQUEST, "a PKCSReq needs a challengePassword (an enrollment secret)"
        ) from None
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ScepError(FailInfo.BAD_REQUEST, "the CSR's commonName names the device serial: it has none")
    secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else str(password)
    return SecretCredential(str(names[0].value), secret)
