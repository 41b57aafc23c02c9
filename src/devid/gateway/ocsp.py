"""`--status ocsp`: ask an OCSP responder (RFC 6960) about each admitted certificate, verify the
signed answer, and hold it until its nextUpdate (re-asking a little before it, or at once on a push).

A response is believed only if it is signed by the issuing CA itself, or by a responder
certificate that CA issued for OCSPSigning and that is valid now (RFC 6960 4.2.2.2), and it
answers for exactly the certificate asked (same issuer hashes and serial).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from devid.clock import Clock
from devid.gateway.status import CertRef, Hint, Known, StatusUnavailable, Verdict

_VERDICT = {
    ocsp.OCSPCertStatus.GOOD: Verdict.GOOD,
    ocsp.OCSPCertStatus.REVOKED: Verdict.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: Verdict.UNKNOWN,
}
#: A response's thisUpdate may be this far in the future (clock skew between responder and gateway).
SKEW = timedelta(minutes=5)
#: Answers asked at once; more wait (a push for a large fleet must not open thousands of requests).
CONCURRENCY = 16


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    device: str
    fetched_at: datetime
    #: When to ask again: shortly before nextUpdate, or `refresh_every` after fetching if none.
    refresh_at: datetime
    produced_at: datetime


def _key(ref: CertRef) -> tuple[bytes, int]:
    return hashlib.sha256(ref.issuer.tbs_certificate_bytes).digest(), ref.serial


def verify_response(
    der: bytes, ref: CertRef, now: datetime, algorithm: hashes.HashAlgorithm
) -> ocsp.OCSPSingleResponse:
    """The single response in `der` about `ref`, once its signature and signer are checked."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise StatusUnavailable("ocsp-malformed", f"OCSP response cannot be parsed: {exc}") from None
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise StatusUnavailable("ocsp-error", f"OCSP responder says {resp.response_status.name}")
    signer = _signer(resp, ref.issuer, now)
    key = signer.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and resp.signature_hash_algorithm is not None:
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and resp.signature_hash_algorithm is not None:
            key.verify(
                resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm
            )
        else:
            raise StatusUnavailable("ocsp-signature", "OCSP response signed with an unsupported algorithm")
    except InvalidSignature:
        raise StatusUnavailable("ocsp-signature", "OCSP response signature does not verify") from None
    probe = ocsp.OCSPRequestBuilder().add_certificate(ref.leaf, ref.issuer, algorithm).build()
    for single in resp.responses:
        if (
            single.serial_number == ref.serial
            and single.issuer_key_hash == probe.issuer_key_hash
            and single.issuer_name_hash == probe.issuer_name_hash
        ):
            if single.this_update_utc > now + SKEW:
                raise StatusUnavailable("ocsp-time", "OCSP response thisUpdate is in the future")
            if single.next_update_utc is not None and single.next_update_utc < now:
                raise StatusUnavailable("ocsp-time", "OCSP response is past its nextUpdate")
            return single
    raise StatusUnavailable("ocsp-mismatch", f"OCSP response does not answer for serial {ref.serial:x}")


def _signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime) -> x509.Certificate:
    """The issuing CA, or a delegated responder certificate it issued with EKU OCSPSigning."""
    if _names(resp, issuer):
        return issuer
    for cert in resp.certificates:
        if not _names(resp, cert):
            continue
        try:
            cert.verify_directly_issued_by(issuer)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if (
            ExtendedKeyUsageOID.OCSP_SIGNING in eku
            and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        ):
            return cert
    raise StatusUnavailable(
        "ocsp-signer", "OCSP response is not signed by the CA or a responder it authorized"
    )


def _names(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the response's ResponderID names `cert` (by name, or SHA-1 of its key)."""
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    return resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


class OcspStatus:
    """`StatusView` over an OCSP responder at `url`."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        refresh_every: timedelta = timedelta(minutes=5),
        margin: timedelta = timedelta(seconds=30),
        timeout: float = 5.0,
        sha1: bool = False,
    ) -> None:
        self.url = url
        self.clock = clock
        self.refresh_every = refresh_every
        self.margin = margin
        self.algorithm: hashes.HashAlgorithm = hashes.SHA1() if sha1 else hashes.SHA256()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._answers: dict[tuple[bytes, int], Answer] = {}
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self.version = ""

    def known(self, ref: CertRef) -> Known:
        answer = self._answers.get(_key(ref))
        return Known(Verdict.UNKNOWN, None) if answer is None else Known(answer.verdict, answer.fetched_at)

    async def prepare(self, ref: CertRef) -> None:
        answer = self._answers.get(_key(ref))
        if answer is None or self.clock.now() >= answer.refresh_at:
            await self._ask(ref)

    async def refresh(self, in_use: Iterable[CertRef], hint: Hint | None = None) -> None:
        now = self.clock.now()
        refs = {_key(r): r for r in in_use}
        # Answers for certificates no longer in use are dropped when due, or at once when a push
        # names them: a revoked certificate that reconnects is never admitted on an old "good".
        self._answers = {
            k: a
            for k, a in self._answers.items()
            if k in refs or (now < a.refresh_at and not (hint is not None and hint.names(k[1], a.device)))
        }
        if hint is not None:
            wanted = [r for r in refs.values() if hint.names(r.serial, r.device)]
        else:
            wanted = [
                r for k, r in refs.items() if k not in self._answers or now >= self._answers[k].refresh_at
            ]
        results = await asyncio.gather(*(self._ask(r) for r in wanted), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, StatusUnavailable):
                raise failure
        if failures:
            raise StatusUnavailable(
                "ocsp-unavailable", f"{len(failures)} of {len(wanted)} OCSP queries failed: {failures[0]}"
            )

    def oldest(self, in_use: Iterable[CertRef]) -> datetime | None:
        times = [self.known(r).fetched_at for r in in_use]
        if any(t is None for t in times):
            return datetime.min.replace(tzinfo=UTC)
        return min((t for t in times if t is not None), default=None)

    def due(self, now: datetime) -> bool:
        return any(now >= a.refresh_at for a in self._answers.values())

    async def _ask(self, ref: CertRef) -> None:
        request = ocsp.OCSPRequestBuilder().add_certificate(ref.leaf, ref.issuer, self.algorithm).build()
        body = request.public_bytes(serialization.Encoding.DER)
        async with self._gate:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
            try:
                async with self._session.post(
                    self.url, data=body, headers={"Content-Type": "application/ocsp-request"}
                ) as resp:
                    if resp.status != 200:
                        raise StatusUnavailable("ocsp-http", f"OCSP responder {self.url}: HTTP {resp.status}")
                    der = await resp.content.read(1 << 20)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise StatusUnavailable("ocsp-unreachable", f"OCSP responder {self.url}: {exc!r}") from None
        now = self.clock.now()
        single = verify_response(der, ref, now, self.algorithm)
        refresh_at = now + self.refresh_every
        if single.next_update_utc is not None:
            refresh_at = min(refresh_at, max(now, single.next_update_utc - self.margin))
        answer = Answer(
            _VERDICT[single.certificate_status], ref.device, now, refresh_at, single.this_update_utc
        )
        self._answers[_key(ref)] = answer
        self.version = max(self.version, answer.produced_at.isoformat())

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
