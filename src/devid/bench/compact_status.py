"""`devid bench revocation --only compact`: the compact status answer (COSE_Sign1 over CBOR,
`devid.revocation.cose_status`) beside the OCSP response for the same certificates, in one run.

Both responders sign with the same delegated responder of a throwaway home's operational CA and
read one in-memory status source (half the serials revoked), so the figures compare the formats,
not the store: bytes of one answer (good, revoked), answers signed per second on first ask,
answers per second from the pre-signed cache, and a device's verifications per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from devid.authority.core import Authority
from devid.bench import Figure
from devid.bench.ocsp import MemoryStatusSource, ocsp_request
from devid.pki.reasons import Reason
from devid.pki.serials import indexed_serial
from devid.publish.service import status_service
from devid.revocation.cose_responder import CoseStatusResponder
from devid.revocation.cose_status import StatusQuery, issuer_key_hash, verify_status
from devid.revocation.ocsp import OcspResponder
from devid.revocation.report import ocsp_without_certs
from devid.revocation.status import CertStatus, StatusEntry

CA = "operational"


def _rate(count: int, call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return count / (time.perf_counter() - start)


def figures(authority: Authority, count: int) -> list[Figure]:
    """The figures over `count` certificates of `authority`'s operational CA (serials as devid
    issues them: 20 bytes)."""
    issuer = next(i for i in status_service(authority).compact.issuers if i.ca_name == CA)
    now = authority.clock.now()
    source = MemoryStatusSource(CA)
    serials = [indexed_serial(i) for i in range(count)]
    for n, serial in enumerate(serials):
        revoked = n % 2 == 1
        source.set(
            StatusEntry(serial, CertStatus.REVOKED, now - timedelta(hours=1), Reason.KEY_COMPROMISE)
            if revoked
            else StatusEntry(serial, CertStatus.GOOD)
        )
    compact = CoseStatusResponder([issuer], source, authority.clock)
    responder = OcspResponder([issuer], source, authority.clock)
    key_hash = issuer_key_hash(issuer.ca_cert)
    queries = [StatusQuery(key_hash, serial) for serial in serials]
    requests = [ocsp_request(issuer.ca_cert, serial) for serial in serials]

    def ask_compact() -> list[bytes]:
        return [compact.answer(query).answer for query in queries]

    def ask_ocsp() -> list[bytes]:
        return [responder.respond(request).der for request in requests]

    sign_compact = _rate(count, ask_compact)
    sign_ocsp = _rate(count, ask_ocsp)
    cached_compact = _rate(count, ask_compact)
    cached_ocsp = _rate(count, ask_ocsp)
    answers, responses = ask_compact(), ask_ocsp()
    signer, ca = issuer.signer_cert, issuer.ca_cert

    def verify_compact() -> None:
        for answer, serial in zip(answers, serials, strict=True):
            verify_status(answer, signer, ca, now, serial)

    def verify_ocsp() -> None:
        for der in responses:
            response = ocsp.load_der_ocsp_response(der)
            response.certificates[0].verify_directly_issued_by(ca)
            public = response.certificates[0].public_key()
            assert isinstance(public, ec.EllipticCurvePublicKey)
            public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))

    verified_compact = _rate(count, verify_compact)
    verified_ocsp = _rate(count, verify_ocsp)
    out = [_bytes(kind, answers[index], responses[index]) for kind, index in (("good", 0), ("revoked", 1))]
    return [
        *out,
        Figure("status.cose_sign_per_s", sign_compact, "answers/s", sign_ocsp, "OCSP responder, first ask"),
        Figure(
            "status.cose_cached_per_s", cached_compact, "answers/s", cached_ocsp, "OCSP responder, cached"
        ),
        Figure(
            "status.cose_verify_per_s",
            verified_compact,
            "answers/s",
            verified_ocsp,
            "OCSP response: parse, responder certificate and signature",
        ),
    ]


def _bytes(kind: str, answer: bytes, response: bytes) -> Figure:
    bare = len(ocsp_without_certs(response))
    return Figure(
        f"status.cose_bytes.{kind}",
        len(answer),
        "B",
        len(response),
        "OCSP response with its responder certificate",
        note=f"{bare} B without the certificate ({bare / len(answer):.1f}x the COSE answer)",
    )
