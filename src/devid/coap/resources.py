"""The EST-coaps resources (RFC 9148) over devid's enrollment service.

Thin like the HTTPS server (`devid.est.server`): parse the CoAP request, take the DTLS client
certificate as the credential, await the same `EnrollmentService` (one credential check, one
enrollment decision, audited refusals), encode. Bodies are binary DER, told apart by CoAP
Content-Format numbers (`ContentFormat`): answers are chosen by the request's Accept option
through one table per resource (`_OFFERS`), each format with one encoder (`_CERT_ENCODERS`):
DER and PKCS#7, or C509 (the issued certificate as a C509Certificate or a COSE_C509, the CA
chain as a COSE_C509 chain), as the HTTPS server answers on `Accept`.

Paths: `/est/<op>` (the short paths `/.well-known/core` advertises), `/est/<label>/<op>`, and
the same under `/.well-known/est`. Operations: `crts` (cacerts), `sen` (simpleenroll), `sren`
(simplereenroll), `skg` (serverkeygen: key and certificate as application/multipart-core),
`att` (csrattrs). An enrollment awaiting approval is answered 5.03 with Max-Age (where EST says
202 with Retry-After), and every issued certificate comes with devid's renewal instructions in
two elective options of the experimental range (`POLICY_OPTION`, `RENEW_AT_OPTION`), which other
clients ignore.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devid.authority.credentials import CertificateCredential
from devid.authority.enroll import EnrollResult, Operation
from devid.authority.enrollment import EnrollmentService, EnrollRequest
from devid.coap.exchange import TEXT_PLAIN, Request, Response
from devid.coap.message import Code, Option, encode_uint
from devid.errors import AuthenticationRequired, NotFoundError, PolicyError, RequestInvalid
from devid.pki import c509
from devid.pki.csr import csr_attributes
from devid.pki.encoding import cert_der, certs_only


class ContentFormat(IntEnum):
    """CoAP Content-Format numbers (IANA registry; RFC 9148 section 8.3)."""

    TEXT = TEXT_PLAIN
    LINK_FORMAT = 40
    MULTIPART_CORE = 62
    PKCS7_CERTS = 281  # application/pkcs7-mime; smime-type=certs-only
    PKCS8 = 284
    CSRATTRS = 285
    PKCS10 = 286
    PKIX_CERT = 287
    #: C509 (draft-ietf-cose-cbor-encoded-cert): one C509Certificate, a COSE_C509, an ordered chain.
    C509_CERT = c509.CONTENT_FORMAT_CERT
    COSE_C509 = c509.CONTENT_FORMAT_COSE_C509
    C509_CHAIN = c509.CONTENT_FORMAT_CHAIN


#: devid's renewal instructions (the HTTPS server's Devid-Policy / Devid-Renew-At headers), as
#: elective, safe-to-forward options of the experimental range (RFC 7252 12.2: 65000-65535).
POLICY_OPTION = 65000
#: When the device should renew, in seconds since the Unix epoch (uint).
RENEW_AT_OPTION = 65004
#: Where the registry allocated the device (Devid-Hub, Devid-Hub-Url).
HUB_OPTION = 65008
HUB_URL_OPTION = 65012
#: Max-Age of the 5.03 answer to an enrollment awaiting approval (EST's Retry-After).
RETRY_AFTER_SECONDS = 60
_OPERATIONS = {"sen": Operation.ENROLL, "sren": Operation.REENROLL, "skg": Operation.SERVERKEYGEN}
_GET_ONLY = ("crts", "att")
#: The answers each resource offers, by Accept; the first is sent when the request has no Accept.
_OFFERS: dict[str, tuple[ContentFormat, ...]] = {
    "crts": (ContentFormat.PKCS7_CERTS, ContentFormat.PKIX_CERT, ContentFormat.C509_CHAIN),
    "sen": (
        ContentFormat.PKCS7_CERTS,
        ContentFormat.PKIX_CERT,
        ContentFormat.C509_CERT,
        ContentFormat.COSE_C509,
    ),
    "sren": (
        ContentFormat.PKCS7_CERTS,
        ContentFormat.PKIX_CERT,
        ContentFormat.C509_CERT,
        ContentFormat.COSE_C509,
    ),
    "skg": (ContentFormat.MULTIPART_CORE,),
    "att": (ContentFormat.CSRATTRS,),
}
#: Discovery (RFC 6690 link format): the short paths with RFC 9148's resource types.
CORE_LINKS = ",".join(
    ['</est>;rt="ace.est"']
    + [
        f'</est/{op}>;rt="ace.est.{op}";ct="{" ".join(str(int(f)) for f in formats)}"'
        for op, formats in _OFFERS.items()
    ]
).encode()
#: Encoders of a certificate answer: the issued (or CA) certificate, then the rest of its chain.
_CERT_ENCODERS: dict[ContentFormat, Callable[[list[x509.Certificate]], bytes]] = {
    ContentFormat.PKCS7_CERTS: certs_only,
    ContentFormat.PKIX_CERT: lambda certs: cert_der(certs[0]),
    ContentFormat.C509_CERT: lambda certs: c509.encode_certificate(certs[0]),
    ContentFormat.COSE_C509: c509.encode_chain,
    ContentFormat.C509_CHAIN: c509.encode_chain,
}


def route(path: tuple[str, ...]) -> tuple[str, str] | None:
    """(label, operation) of an EST-coaps path, None for any other path."""
    if path[:2] == (".well-known", "est"):
        rest = path[2:]
    elif path[:1] == ("est",):
        rest = path[1:]
    else:
        return None
    if len(rest) == 1 and rest[0] in _OFFERS:
        return "", rest[0]
    if len(rest) == 2 and rest[1] in _OFFERS and rest[0]:
        return rest[0], rest[1]
    return None


def _chosen(op: str, accept: int | None) -> ContentFormat:
    offers = _OFFERS[op]
    if accept is None:
        return offers[0]
    for offer in offers:
        if offer == accept:
            return offer
    wanted = " or ".join(str(int(f)) for f in offers)
    raise _NotAcceptable(f"/est/{op} answers Content-Format {wanted}, not {accept}")


class _NotAcceptable(RequestInvalid):
    def __init__(self, message: str) -> None:
        super().__init__("not-acceptable", message)


class EstCoaps:
    """The EST-coaps resources of one enrollment service (a CoAP request handler)."""

    def __init__(self, service: EnrollmentService, extra_links: tuple[str, ...] = ()) -> None:
        self.service = service
        self.authority = service.authority
        #: /.well-known/core: the EST resources and those served beside them (`extra_links`).
        self.links = ",".join((CORE_LINKS.decode(), *extra_links)).encode()

    async def __call__(self, request: Request) -> Response:
        if request.path == (".well-known", "core"):
            if request.method != Code.GET:
                return _method_not_allowed("/.well-known/core", "GET")
            return Response(Code.CONTENT, self.links, ContentFormat.LINK_FORMAT)
        found = route(request.path)
        if found is None:
            raise NotFoundError("not-found", f"no resource at /{'/'.join(request.path)}")
        label, op = found
        policy = self.authority.label_policy(label)
        fmt = _chosen(op, request.accept)
        if op in _GET_ONLY:
            if request.method != Code.GET:
                return _method_not_allowed(f"/est/{op}", "GET")
            if op == "att":
                return Response(Code.CONTENT, csr_attributes(), fmt)
            return Response(Code.CONTENT, _CERT_ENCODERS[fmt](self.service.ca_certificates(policy)), fmt)
        if request.method != Code.POST:
            return _method_not_allowed(f"/est/{op}", "POST")
        if request.certificate is None:
            raise AuthenticationRequired(
                "auth-required", "EST-coaps enrollment needs a DTLS client certificate (IDevID or LDevID)"
            )
        if request.content_format != ContentFormat.PKCS10:
            raise PolicyError(
                "content-type",
                f"Content-Format {request.content_format} is not accepted: send "
                f"{int(ContentFormat.PKCS10)} (application/pkcs10, a DER CSR)",
            )
        enrollment = EnrollRequest(
            label,
            _OPERATIONS[op],
            CertificateCredential(request.certificate, request.chain),
            request.payload,
            actor=f"coaps:{request.host}",
            peer=request.host,
        )
        return _answer(await self.service.enroll(enrollment), fmt)


def _method_not_allowed(path: str, method: str) -> Response:
    return Response(Code.METHOD_NOT_ALLOWED, f"{path} answers {method} only".encode(), TEXT_PLAIN)


def _answer(result: EnrollResult, fmt: ContentFormat) -> Response:
    options: list[tuple[int, bytes]] = [(POLICY_OPTION, result.policy.policy.value.encode())]
    if result.issued is None:
        text = f"enrollment of device {result.device_serial} awaits operator approval [approval-pending]"
        options.append((Option.MAX_AGE, encode_uint(RETRY_AFTER_SECONDS)))
        return Response(Code.SERVICE_UNAVAILABLE, text.encode(), TEXT_PLAIN, tuple(options))
    if result.renew_at is not None:
        options.append((RENEW_AT_OPTION, encode_uint(int(result.renew_at.timestamp()))))
    for key, number in (("hub", HUB_OPTION), ("hub_url", HUB_URL_OPTION)):
        if result.assignment and result.assignment.get(key):
            options.append((number, str(result.assignment[key]).encode()))
    certificate = [result.issued.certificate]
    if fmt is ContentFormat.MULTIPART_CORE:
        # RFC 9148 4.8: [284, the PKCS#8 key, 281, the certificate]; the key travels only inside
        # the DTLS session of the device that authenticated.
        assert result.private_key is not None
        key_der = result.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        body = cbor2.dumps(
            [int(ContentFormat.PKCS8), key_der, int(ContentFormat.PKCS7_CERTS), certs_only(certificate)]
        )
        return Response(Code.CHANGED, body, fmt, tuple(options))
    return Response(Code.CHANGED, _CERT_ENCODERS[fmt](certificate), fmt, tuple(options))
