"""EST server endpoints (RFC 7030 with the RFC 8951 clarifications) at `/.well-known/est[/<label>]`.

Thin by design: parse the HTTP request, find the credential, await the authority's enrollment
service (`devid.authority.enrollment`), encode the answer. A request with no credential at all is
refused (401 with the challenge) before its body is read; one refused for its framing (content
type, size, encoding) has not been authenticated and is not audited (the service audits the rest).
Operations: `cacerts`, `csrattrs`, `simpleenroll`, `simplereenroll`, `serverkeygen`, plus
`GET .../policy` (JSON, no authentication): the label's renewal policy for device agents.

Bodies are base64 DER, with or without line breaks; a `Content-Transfer-Encoding` header is
ignored (RFC 8951 section 3.2.2); a raw DER or a PEM body is accepted too. Answers are base64 in
64-character CRLF lines and carry `Content-Transfer-Encoding: base64` for older clients.
A client whose `Accept` names a C509 media type (draft-ietf-cose-cbor-encoded-cert) gets binary
CBOR instead: `application/cose-c509-cert+cbor` (enroll: the C509Certificate),
`application/cose-c509+cbor` (enroll: a COSE_C509 of it; cacerts: the chain, `usage=chain`).
Every issued certificate comes with `Devid-Policy` and, unless the policy never renews,
`Devid-Renew-At` (RFC 3339): when this device should renew it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from devid.authority.auth_failures import FailedAuthentications
from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential
from devid.authority.enroll import Credential, EnrollResult, Onboarding, Operation, SecretCredential
from devid.authority.enrollment import EnrollmentService, EnrollRequest, require_credential
from devid.authority.policy import LabelPolicy
from devid.errors import BodyTooLarge, PolicyError
from devid.est.accept import choose
from devid.pki import c509
from devid.pki.csr import csr_attributes
from devid.pki.encoding import certs_only
from devid.web.peer import from_trusted_proxy, peer_address, peer_certificate, peer_chain

WELL_KNOWN = "/.well-known/est"
#: Largest request body any EST endpoint reads (a P-256 CSR in base64 is ~700 bytes).
MAX_BODY = 64 * 1024
PKCS7 = "application/pkcs7-mime"
CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"
PKCS8 = "application/pkcs8"
CSRATTRS = "application/csrattrs"
POLICY_HEADER = "Devid-Policy"
RENEW_AT_HEADER = "Devid-Renew-At"
#: Sent by a device that knows its region (lowest-latency allocation).
REGION_HEADER = "Devid-Region"
#: The registration result, when the device's enrollment allocated it to a hub.
ASSIGNMENT_HEADERS = {"device_id": "Devid-Device-Id", "hub": "Devid-Hub", "hub_url": "Devid-Hub-Url"}
RETRY_AFTER_SECONDS = 60
#: What an issued certificate / the CA certificates can be answered as; the first is the default.
ENROLL_FORMATS = (CERTS_ONLY, c509.MEDIA_TYPE_CERT, c509.MEDIA_TYPE_COSE_C509)
CACERTS_FORMATS = (PKCS7, c509.MEDIA_TYPE_CHAIN)
_LABEL = r"{label:[A-Za-z0-9][A-Za-z0-9._-]{0,63}}"


def b64_lines(der: bytes) -> bytes:
    """Base64 in 64-character lines, CRLF-terminated (RFC 8951: what a strict client expects)."""
    text = base64.b64encode(der)
    return b"".join(text[i : i + 64] + b"\r\n" for i in range(0, len(text), 64))


def decode_body(body: bytes) -> bytes:
    """The DER (or PEM) of a request body. RFC 8951 3.2.2: the payload is base64, with or without
    line breaks, and a `Content-Transfer-Encoding` header carries no meaning in HTTP, so it is
    ignored. A raw DER body (which is never valid base64) or a PEM body is accepted too."""
    stripped = body.strip()
    if not stripped:
        raise PolicyError("csr-empty", "the request body is empty: send a base64 PKCS#10 CSR")
    if stripped.startswith(b"-----BEGIN "):
        return stripped
    compact = b"".join(stripped.split())
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error:
        if body[:1] == b"\x30":
            return body  # DER sent without base64
        raise PolicyError("request-base64", "the request body is not base64 (RFC 7030, RFC 8951)") from None


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def policy_document(policy: LabelPolicy) -> dict[str, object]:
    """What a device agent needs to obey a label's renewal policy."""
    return {
        "label": policy.label,
        "policy": policy.policy.value,
        "profile": policy.profile.value,
        "lifetime_seconds": int(policy.lifetime.total_seconds()),
        "renew_fraction": policy.renew_fraction,
        "jitter_fraction": policy.jitter_fraction,
        "approval": policy.approval,
        "idevid_fallback": policy.idevid_fallback,
    }


def basic_credential(header: str | None) -> SecretCredential | None:
    """HTTP Basic user/password, or None when absent, empty or unusable (a client may send an empty
    Basic header alongside its certificate: the certificate decides then)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        return None
    return SecretCredential(user, password)


class EstServer:
    """The EST endpoints of one authority; `close()` it with the application."""

    def __init__(
        self,
        authority: Authority,
        onboarding: Onboarding | None = None,
        *,
        share: Callable[[], int] | None = None,
    ) -> None:
        """`share`: the server processes the failed-authentication limits are shared by."""
        self.authority = authority
        self.service = EnrollmentService(authority, onboarding, failures=FailedAuthentications(share=share))
        self._cacerts: dict[tuple[str, str], bytes] = {}
        self._csrattrs = b64_lines(csr_attributes())

    async def close(self, app: web.Application | None = None) -> None:
        """Stop the enrollment service (an aiohttp `on_cleanup` handler)."""
        await asyncio.to_thread(self.service.close)

    def routes(self) -> list[web.RouteDef]:
        out = []
        for prefix in (WELL_KNOWN, f"{WELL_KNOWN}/{_LABEL}"):
            out += [
                web.get(f"{prefix}/cacerts", self.cacerts, allow_head=False),
                web.get(f"{prefix}/csrattrs", self.csrattrs, allow_head=False),
                web.get(f"{prefix}/policy", self.policy, allow_head=False),
                web.post(f"{prefix}/simpleenroll", self.simpleenroll),
                web.post(f"{prefix}/simplereenroll", self.simplereenroll),
                web.post(f"{prefix}/serverkeygen", self.serverkeygen),
            ]
        return out

    def _policy(self, request: web.Request) -> LabelPolicy:
        return self.authority.label_policy(request.match_info.get("label", ""))

    # --- unauthenticated ---------------------------------------------------------------------

    async def cacerts(self, request: web.Request) -> web.Response:
        """The CA certificates a device needs for this label: the issuing CA and the root; during a
        CA rotation's overlap, the issuing CA being retired too (after the new one), so a device
        still holding a certificate of it finds its chain (RFC 7030 4.1.3)."""
        policy = self._policy(request)
        answer = choose(request.headers.get("Accept"), CACERTS_FORMATS)
        body = self._cacerts.get((policy.label, answer))
        if body is None:
            chain = self.service.ca_certificates(policy)
            encoded = c509.encode_chain(chain) if answer != PKCS7 else b64_lines(certs_only(chain))
            body = self._cacerts[(policy.label, answer)] = encoded
        headers = {"Content-Type": answer, "Vary": "Accept"}
        if answer == PKCS7:
            headers["Content-Transfer-Encoding"] = "base64"
        return web.Response(body=body, headers=headers)

    async def csrattrs(self, request: web.Request) -> web.Response:
        self._policy(request)
        return web.Response(
            body=self._csrattrs, headers={"Content-Type": CSRATTRS, "Content-Transfer-Encoding": "base64"}
        )

    async def policy(self, request: web.Request) -> web.Response:
        return web.json_response(policy_document(self._policy(request)))

    # --- enrollment --------------------------------------------------------------------------

    async def simpleenroll(self, request: web.Request) -> web.Response:
        return await self._enroll(request, Operation.ENROLL)

    async def simplereenroll(self, request: web.Request) -> web.Response:
        return await self._enroll(request, Operation.REENROLL)

    async def serverkeygen(self, request: web.Request) -> web.Response:
        return await self._enroll(request, Operation.SERVERKEYGEN)

    async def _enroll(self, request: web.Request, operation: Operation) -> web.Response:
        label = request.match_info.get("label", "")
        self.authority.label_policy(label)
        credential = require_credential(self._credential(request))
        csr = await self._read_csr(request)
        peer = peer_address(request)
        enrollment = EnrollRequest(
            label,
            operation,
            credential,
            csr,
            actor=f"est:{peer or '-'}",
            peer=None if from_trusted_proxy(request) else peer,
            region=request.headers.get(REGION_HEADER, "")[:64] or None,
        )
        answer = choose(request.headers.get("Accept"), ENROLL_FORMATS)
        return self._answer(await self.service.enroll(enrollment), operation, answer)

    @staticmethod
    def _credential(request: web.Request) -> Credential | None:
        """The client certificate if there is one (it wins over any Authorization header), else
        HTTP Basic, else None. A certificate from this server's own handshake is marked verified
        (its chain to devid's root); one from a trusted proxy's header is not."""
        der = peer_certificate(request)
        if der:
            return CertificateCredential(
                der, peer_chain(request), chain_verified=not from_trusted_proxy(request)
            )
        return basic_credential(request.headers.get("Authorization"))

    @staticmethod
    async def _read_csr(request: web.Request) -> bytes:
        if request.content_type != PKCS10:
            raise PolicyError(
                "content-type",
                f"Content-Type {request.content_type!r} is not accepted: send {PKCS10} (base64 DER CSR)",
            )
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise BodyTooLarge("body-too-large", f"request body of {declared} bytes exceeds {MAX_BODY}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLarge("body-too-large", f"request body exceeds {MAX_BODY} bytes") from None
        return decode_body(body)

    @staticmethod
    def _answer(result: EnrollResult, operation: Operation, answer: str = CERTS_ONLY) -> web.Response:
        """`answer`: the media type of the issued certificate (not for serverkeygen's multipart)."""
        headers = {POLICY_HEADER: result.policy.policy.value, "Vary": "Accept"}
        if result.issued is None:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return web.Response(
                status=202,
                text=f"enrollment of device {result.device_serial} awaits operator approval\n",
                headers=headers,
            )
        renew_at = result.renew_at
        if renew_at is not None:
            headers[RENEW_AT_HEADER] = rfc3339(renew_at)
        for key, header in ASSIGNMENT_HEADERS.items():
            if result.assignment and result.assignment.get(key):
                headers[header] = str(result.assignment[key])
        if operation is not Operation.SERVERKEYGEN and answer != CERTS_ONLY:
            issued = result.issued.certificate
            headers["Content-Type"] = answer
            body = (
                c509.encode_certificate(issued)
                if answer == c509.MEDIA_TYPE_CERT
                else c509.encode_chain([issued])
            )
            return web.Response(body=body, headers=headers)
        certs = b64_lines(certs_only([result.issued.certificate]))
        if operation is not Operation.SERVERKEYGEN or result.private_key is None:
            headers.update({"Content-Type": CERTS_ONLY, "Content-Transfer-Encoding": "base64"})
            return web.Response(body=certs, headers=headers)
        # RFC 7030 4.4.2: the key travels unencrypted inside the TLS session (no additional
        # encryption was requested), so it is only ever sent to an authenticated device.
        key_der = result.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        boundary = f"est-{os.urandom(12).hex()}"
        parts = [
            (PKCS8, b64_lines(key_der)),
            (CERTS_ONLY, certs),
        ]
        body = b"".join(
            f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n\r\n".encode()
            + payload
            for ctype, payload in parts
        )
        body += f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/mixed; boundary={boundary}"
        headers["Cache-Control"] = "no-store"
        return web.Response(body=body, headers=headers)
