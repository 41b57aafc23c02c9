"""Compact certificate status over CoAP: `FETCH /st` (RFC 8132), for devices that authenticate
peers and LoRaWAN network servers, one short signed answer per certificate.

Request: Content-Format 60 (application/cbor), `[issuer key hash (or its first 4+ bytes),
serial]` (`devid.revocation.cose_status`). Answer: 2.05 with Content-Format 18, a COSE_Sign1 of
about 110 bytes signed by the CA's delegated OCSP responder, with Max-Age until the responder
would sign it again. A serial the CA never issued is answered (signed) with status unknown, as
OCSP does; a CA the server does not know is 4.04; a body that is not such an array 4.00, another
Content-Format 4.15, another Accept 4.06, another method 4.05. Any DTLS peer may ask (status is
public, as over OCSP).

`GET /st/signers`: the delegated responders' certificates (281 PKCS#7 certs-only, or 65003 a
COSE_C509 bag), for devices that do not hold them yet; each is certified by its CA, which the
device checks (`verify_status`), so fetching them needs no more trust than the answers.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

from devid.coap.exchange import TEXT_PLAIN, Request, Response
from devid.coap.message import Code, Option, encode_uint
from devid.coap.resources import ContentFormat
from devid.errors import NotFoundError, PolicyError, RequestInvalid
from devid.pki import c509
from devid.pki.encoding import certs_only
from devid.revocation.cose_responder import CoseStatusResponder
from devid.revocation.cose_status import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_COSE_SIGN1, decode_request

STATUS_PATH = ("st",)
SIGNERS_PATH = ("st", "signers")
_SIGNER_FORMATS: dict[int, Callable[[list[x509.Certificate]], bytes]] = {
    ContentFormat.PKCS7_CERTS: certs_only,
    ContentFormat.COSE_C509: c509.encode_chain,
}
#: The entries of `/st` and `/st/signers` in /.well-known/core.
STATUS_LINK = (
    f'</st>;rt="devid.status";ct={CONTENT_FORMAT_COSE_SIGN1},'
    f'</st/signers>;rt="devid.status.signers";ct="{" ".join(str(int(f)) for f in _SIGNER_FORMATS)}"'
)


class StatusCoaps:
    """The `/st` resource over `responder`."""

    def __init__(self, responder: CoseStatusResponder) -> None:
        self.responder = responder

    async def __call__(self, request: Request) -> Response:
        if request.path == SIGNERS_PATH:
            return self._signers(request)
        if request.path != STATUS_PATH:
            raise NotFoundError("not-found", f"no resource at /{'/'.join(request.path)}")
        if request.method != Code.FETCH:
            return Response(Code.METHOD_NOT_ALLOWED, b"/st answers FETCH only", TEXT_PLAIN)
        if request.accept not in (None, CONTENT_FORMAT_COSE_SIGN1):
            raise RequestInvalid(
                "not-acceptable",
                f"/st answers Content-Format {CONTENT_FORMAT_COSE_SIGN1}, not {request.accept}",
            )
        if request.content_format != CONTENT_FORMAT_CBOR:
            raise PolicyError(
                "content-type",
                f"Content-Format {request.content_format} is not accepted: send {CONTENT_FORMAT_CBOR} "
                "(application/cbor, [issuer key hash, serial])",
            )
        signed = self.responder.answer(decode_request(request.payload))
        max_age = ((Option.MAX_AGE, encode_uint(self.responder.max_age(signed))),)
        return Response(Code.CONTENT, signed.answer, CONTENT_FORMAT_COSE_SIGN1, max_age)

    def _signers(self, request: Request) -> Response:
        """The delegated responders' certificates (what `verify_status` needs), a PKCS#7 bag or a
        COSE_C509 bag; a device picks the one whose kid an answer names."""
        if request.method != Code.GET:
            return Response(Code.METHOD_NOT_ALLOWED, b"/st/signers answers GET only", TEXT_PLAIN)
        fmt = ContentFormat.PKCS7_CERTS if request.accept is None else request.accept
        encode = _SIGNER_FORMATS.get(fmt)
        if encode is None:
            wanted = " or ".join(str(int(f)) for f in _SIGNER_FORMATS)
            raise RequestInvalid("not-acceptable", f"/st/signers answers Content-Format {wanted}, not {fmt}")
        return Response(Code.CONTENT, encode([i.signer_cert for i in self.responder.issuers]), fmt)
