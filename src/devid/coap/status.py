"""Compact certificate status over CoAP: `FETCH /st` (RFC 8132), for devices that authenticate
peers and LoRaWAN network servers, one short signed answer per certificate.

Request: Content-Format 60 (application/cbor), `[issuer key hash (or its first 4+ bytes),
serial]` (`devid.revocation.cose_status`). Answer: 2.05 with Content-Format 18, a COSE_Sign1 of
about 110 bytes signed by the CA's delegated OCSP responder, with Max-Age until the responder
would sign it again. A serial the CA never issued is answered (signed) with status unknown, as
OCSP does; a CA the server does not know is 4.04; a body that is not such an array 4.00, another
Content-Format 4.15, another Accept 4.06, another method 4.05. Any DTLS peer may ask (status is
public, as over OCSP).
"""

from __future__ import annotations

from devid.coap.exchange import TEXT_PLAIN, Request, Response
from devid.coap.message import Code, Option, encode_uint
from devid.errors import PolicyError, RequestInvalid
from devid.revocation.cose_responder import CoseStatusResponder
from devid.revocation.cose_status import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_COSE_SIGN1, decode_request

STATUS_PATH = ("st",)
#: Its entry in /.well-known/core.
STATUS_LINK = f'</st>;rt="devid.status";ct={CONTENT_FORMAT_COSE_SIGN1}'


class StatusCoaps:
    """The `/st` resource over `responder`."""

    def __init__(self, responder: CoseStatusResponder) -> None:
        self.responder = responder

    async def __call__(self, request: Request) -> Response:
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
