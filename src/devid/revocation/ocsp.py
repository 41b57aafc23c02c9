"""The OCSP responder (RFC 6960, RFC 5019 profile, RFC 8954 nonces): request DER in, response DER out.

Requests without a nonce (every RFC 5019 client, and what caches and CDNs can share) are answered from
pre-signed responses, so the hot path is a dict lookup on the request bytes; a response is signed again
when it nears its nextUpdate (`refresh_margin`) or when the status of one of its serials changed
(`StatusSource.generation` moved, `changed_since` names the serials). A request with a nonce is signed
on demand and echoes the nonce.

cryptography's OCSP API reads and builds only one CertID per request and response, so requests are
parsed and responses built with asn1crypto (one code path for one and many CertIDs), and signed
with cryptography. Whatever a client sends, `respond` returns an OCSPResponse: malformedRequest for
what does not parse, unauthorized for a CA this responder does not serve, internalError when the
status source fails; it never raises.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from devid.clock import Clock
from devid.errors import ConfigError
from devid.pki.reasons import Reason
from devid.revocation.status import CertStatus, StatusEntry, StatusSource
from devid.revocation.watch import GenerationWatch
from devid.store.engine import unavailable

log = logging.getLogger("devid.revocation.ocsp")

#: The CertID hash algorithms answered (asn1crypto's and hashlib's names): RFC 5019 clients use
#: SHA-1, others SHA-256.
_CERT_ID_HASHES = ("sha1", "sha256", "sha384", "sha512")
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
_STATUS = {
    CertStatus.GOOD: x509_ocsp.OCSPCertStatus.GOOD,
    CertStatus.REVOKED: x509_ocsp.OCSPCertStatus.REVOKED,
    CertStatus.UNKNOWN: x509_ocsp.OCSPCertStatus.UNKNOWN,
}
#: RFC 8954 2.1: a nonce is 1 to 32 octets.
MAX_NONCE = 32


def _status_only(status: str) -> bytes:
    return bytes(asn1_ocsp.OCSPResponse({"response_status": status}).dump())


MALFORMED_REQUEST = _status_only("malformed_request")
INTERNAL_ERROR = _status_only("internal_error")
TRY_LATER = _status_only("try_later")
UNAUTHORIZED = _status_only("unauthorized")


@dataclass(frozen=True)
class OcspIssuer:
    """A CA this responder answers for, and its delegated responder (EKU id-kp-OCSPSigning, nocheck)."""

    ca_name: str
    ca_cert: x509.Certificate
    signer_cert: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class OcspAnswer:
    """An OCSPResponse and what HTTP caching needs of it.

    `etag` is set only on a pre-signed answer that any client may share (no nonce); `cache_until`
    is when the responder will sign it again (nextUpdate minus the refresh margin): an HTTP cache
    should not keep it longer. Error answers (malformedRequest, ...) have neither nor any times.
    """

    der: bytes
    this_update: datetime | None = None
    next_update: datetime | None = None
    cache_until: datetime | None = None
    etag: str | None = None


class _Malformed(Exception):
    """The request is not an OCSP request this responder can read (answered malformedRequest)."""


class _Unauthorized(Exception):
    """A CertID names a CA this responder does not serve (answered unauthorized)."""


@dataclass(frozen=True)
class _Signer:
    """One issuer, prepared: its CertID hashes and the responder's ready-made response parts."""

    ca_name: str
    key: ec.EllipticCurvePrivateKey
    #: The delegated responder's certificate, sent with every response.
    cert: x509.Certificate
    hash: hashes.HashAlgorithm
    signature_algorithm: asn1_ocsp.SignedDigestAlgorithm
    responder_id: asn1_ocsp.ResponderId
    certs: asn1_ocsp.Certificates

    @classmethod
    def prepare(cls, issuer: OcspIssuer) -> _Signer:
        _check_delegation(issuer)
        hash_name = {256: "sha256", 384: "sha384", 521: "sha512"}[issuer.signer_key.curve.key_size]
        signer_der = issuer.signer_cert.public_bytes(serialization.Encoding.DER)
        key_hash = hashlib.sha1(key_bits(issuer.signer_cert)).digest()
        return cls(
            ca_name=issuer.ca_name,
            key=issuer.signer_key,
            cert=issuer.signer_cert,
            hash={"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[hash_name],
            signature_algorithm=asn1_ocsp.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"}),
            responder_id=asn1_ocsp.ResponderId(name="by_key", value=key_hash),
            certs=asn1_ocsp.Certificates([asn1_x509.Certificate.load(signer_der)]),
        )

    def sign(self, data: asn1_ocsp.ResponseData) -> bytes:
        """The OCSPResponse (successful, id-pkix-ocsp-basic) carrying `data`, signed."""
        tbs = data.dump()
        basic = asn1_ocsp.BasicOCSPResponse(
            {
                "tbs_response_data": data,
                "signature_algorithm": self.signature_algorithm,
                "signature": self.key.sign(tbs, ec.ECDSA(self.hash)),
                "certs": self.certs,
            }
        )
        response = asn1_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
            }
        )
        return bytes(response.dump())


def _check_delegation(issuer: OcspIssuer) -> None:
    """Refuse, at startup, a signer that relying parties would refuse at every response."""
    signer = issuer.signer_cert
    try:
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise ConfigError("ocsp-signer", f"OCSP signer of CA {issuer.ca_name!r} lacks EKU id-kp-OCSPSigning")
    if signer.issuer != issuer.ca_cert.subject:
        raise ConfigError("ocsp-signer", f"OCSP signer of CA {issuer.ca_name!r} is not issued by that CA")
    signer.verify_directly_issued_by(issuer.ca_cert)
    if signer.public_key() != issuer.signer_key.public_key():
        raise ConfigError(
            "ocsp-signer", f"OCSP signer key of CA {issuer.ca_name!r} does not match its certificate"
        )


def key_bits(cert: x509.Certificate) -> bytes:
    """The value of the subjectPublicKey BIT STRING (without its unused-bits octet): what
    issuerKeyHash and a ResponderID byKey hash (RFC 6960 4.1.1, 4.2.2.3)."""
    spki = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER)).public_key
    return bytes(spki["public_key"].contents[1:])


def _cert_id_keys(cert: x509.Certificate) -> list[tuple[str, bytes, bytes]]:
    """(hash algorithm, issuerNameHash, issuerKeyHash) of CertIDs naming `cert` as the issuer."""
    name, key = cert.subject.public_bytes(), key_bits(cert)
    return [(alg, hashlib.new(alg, name).digest(), hashlib.new(alg, key).digest()) for alg in _CERT_ID_HASHES]


@dataclass(frozen=True)
class _Query:
    """What one request asks: its CertIDs (each with the issuer it names) and its nonce, if any."""

    cert_ids: tuple[asn1_ocsp.CertId, ...]
    signers: tuple[int, ...]
    serials: tuple[int, ...]
    nonce: asn1_ocsp.ResponseDataExtension | None


@dataclass(frozen=True)
class _Cached:
    """A pre-signed answer and the (issuer, serial) pairs it covers."""

    answer: OcspAnswer
    refresh_at: datetime
    covers: tuple[tuple[int, int], ...]


class OcspResponder:
    """Answers OCSP requests for `issuers` from `source`; see the module docstring for the caching."""

    def __init__(
        self,
        issuers: Sequence[OcspIssuer],
        source: StatusSource,
        clock: Clock,
        *,
        validity: timedelta = timedelta(hours=24),
        refresh_margin: timedelta = timedelta(hours=6),
        max_request_bytes: int = 16 * 1024,
        max_cert_ids: int = 64,
        max_cached: int = 100_000,
        generation_check_interval: float = 0.5,
    ) -> None:
        if not issuers:
            raise ConfigError("ocsp-issuers", "an OCSP responder needs at least one issuer")
        if not timedelta(0) <= refresh_margin < validity:
            raise ConfigError(
                "ocsp-validity", "the OCSP refresh margin must be shorter than the response validity"
            )
        self._signers = [_Signer.prepare(issuer) for issuer in issuers]
        self._by_cert_id = {
            key: index for index, issuer in enumerate(issuers) for key in _cert_id_keys(issuer.ca_cert)
        }
        self._source = source
        self._clock = clock
        self._validity = validity
        self._refresh_margin = refresh_margin
        self._max_request_bytes = max_request_bytes
        self._max_cert_ids = max_cert_ids
        self._max_cached = max_cached
        #: Pre-signed answers by the DER of their CertIDs, and the CertIDs of request bytes seen.
        self._cache: dict[tuple[bytes, ...], _Cached] = {}
        self._request_keys: dict[bytes, tuple[bytes, ...]] = {}
        #: Which cache keys cover each (issuer index, serial): what a status change drops.
        self._covering: dict[tuple[int, int], set[tuple[bytes, ...]]] = {}
        self._watch = GenerationWatch(
            source, [issuer.ca_name for issuer in issuers], generation_check_interval
        )
        #: Responses signed so far (pre-signed and on demand): what tests and benchmarks count.
        self.signed = 0
        #: Requests answered, and of those, answered from a pre-signed answer (the server's metrics).
        self.requests = 0
        self.hits = 0

    def respond(self, request_der: bytes) -> OcspAnswer:
        """The answer to one DER OCSPRequest; never raises."""
        if self._watch.due():
            self.refresh(fresh=False)
        self.requests += 1
        now = self._clock.now()
        key = self._request_keys.get(request_der)
        if key is not None:
            cached = self._cache.get(key)
            if cached is not None and now < cached.refresh_at:
                self.hits += 1
                return cached.answer
        try:
            query = self._parse(request_der)
            if query.nonce is not None:
                return self._sign(query, now)
            key = tuple(cert_id.dump() for cert_id in query.cert_ids)
            cached = self._cache.get(key)
            if cached is None or now >= cached.refresh_at:
                cached = self._presign(key, query, now)
            else:
                self.hits += 1  # the same CertIDs asked in other bytes
            if request_der not in self._request_keys and len(self._request_keys) >= self._max_cached:
                del self._request_keys[next(iter(self._request_keys))]
            self._request_keys[request_der] = key
            return cached.answer
        except _Malformed as exc:
            log.debug("malformed OCSP request: %s", exc)
            return OcspAnswer(MALFORMED_REQUEST)
        except _Unauthorized:
            return OcspAnswer(UNAUTHORIZED)
        except Exception as exc:
            # The status source (a database) failed while re-signing: an answer signed before it
            # stays true until its nextUpdate (nothing can be revoked meanwhile), so serve that.
            stale = self._cache.get(key) if key is not None else None
            if stale is not None and stale.answer.next_update is not None and now < stale.answer.next_update:
                log.warning("OCSP status source failed: serving the answer valid until its nextUpdate")
                return stale.answer
            # None to serve: RFC 6960 tryLater while the store is away, else internalError; the
            # cause in the log.
            log.exception("OCSP response failed")
            return OcspAnswer(TRY_LATER if unavailable(exc) is not None else INTERNAL_ERROR)

    def refresh(self, *, fresh: bool = True) -> None:
        """Drop the pre-signed answers of serials whose status changed since they were signed.

        The hot path calls it at most every `generation_check_interval` seconds (and may read a
        generation the source kept for a moment); the server also calls it right after a
        revocation, reading the store now, so that no answer older than the revocation goes out.
        """
        for index, changed in self._watch.changes(fresh=fresh):
            if changed is None:
                changed = [serial for (i, serial) in self._covering if i == index]
            for serial in changed:
                for key in self._covering.pop((index, serial), ()):
                    self._drop(key)

    def _parse(self, der: bytes) -> _Query:
        if len(der) > self._max_request_bytes:
            raise _Malformed("request too large")
        try:
            request = asn1_ocsp.OCSPRequest.load(der, strict=True)
            tbs = request["tbs_request"]
            if tbs["version"].native != "v1":
                raise _Malformed("unknown OCSP request version")
            items = list(tbs["request_list"])
            if not 1 <= len(items) <= self._max_cert_ids:
                raise _Malformed(f"{len(items)} CertIDs in one request (1 to {self._max_cert_ids})")
            cert_ids = tuple(item["req_cert"] for item in items)
            signers, serials = [], []
            for cert_id in cert_ids:
                serial = cert_id["serial_number"].native
                if serial < 0:  # no CA issues one, and no response can name one (RFC 5280 4.1.2.2)
                    raise _Malformed("negative serial number in a CertID")
                signers.append(self._issuer_of(cert_id))
                serials.append(serial)
            return _Query(cert_ids, tuple(signers), tuple(serials), _nonce(tbs["request_extensions"]))
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            # asn1crypto reports bad encodings as ValueError/TypeError, often only when a field is read.
            raise _Malformed(str(exc)) from exc

    def _issuer_of(self, cert_id: asn1_ocsp.CertId) -> int:
        algorithm = cert_id["hash_algorithm"]["algorithm"].native
        if algorithm not in _CERT_ID_HASHES:
            raise _Malformed(f"CertID hash algorithm {algorithm} not supported")
        found = self._by_cert_id.get(
            (algorithm, cert_id["issuer_name_hash"].native, cert_id["issuer_key_hash"].native)
        )
        if found is None:
            raise _Unauthorized()
        return found

    def _statuses(self, query: _Query) -> list[StatusEntry]:
        """The status of every CertID, one source call per issuer named."""
        wanted: dict[int, list[int]] = {}
        for signer, serial in zip(query.signers, query.serials, strict=True):
            wanted.setdefault(signer, []).append(serial)
        found = {
            signer: self._source.statuses(self._signers[signer].ca_name, serials)
            for signer, serials in wanted.items()
        }
        return [found[signer][serial] for signer, serial in zip(query.signers, query.serials, strict=True)]

    def _sign(self, query: _Query, now: datetime) -> OcspAnswer:
        this_update = now.replace(microsecond=0)
        next_update = this_update + self._validity
        if len(query.cert_ids) == 1:
            der = self._sign_one(query, this_update, next_update)
        else:
            der = self._sign_many(query, this_update, next_update)
        self.signed += 1
        if query.nonce is not None:
            return OcspAnswer(der, this_update, next_update)
        etag = '"' + hashlib.sha256(der).hexdigest()[:32] + '"'
        return OcspAnswer(der, this_update, next_update, next_update - self._refresh_margin, etag)

    def _sign_one(self, query: _Query, this_update: datetime, next_update: datetime) -> bytes:
        """One CertID, the common case (RFC 5019 clients ask one at a time), built and signed by
        cryptography's OCSP builder: ~60 µs, against ~5 ms through asn1crypto."""
        cert_id, (entry,) = query.cert_ids[0], self._statuses(query)
        signer = self._signers[query.signers[0]]
        builder = x509_ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=cert_id["issuer_name_hash"].native,
            issuer_key_hash=cert_id["issuer_key_hash"].native,
            serial_number=entry.serial,
            algorithm=_HASHES[cert_id["hash_algorithm"]["algorithm"].native],
            cert_status=_STATUS[entry.status],
            this_update=this_update,
            next_update=next_update,
            revocation_time=entry.revoked_at.replace(microsecond=0) if entry.revoked_at else None,
            revocation_reason=(
                entry.reason.flag
                if entry.status is CertStatus.REVOKED and entry.reason not in (None, Reason.UNSPECIFIED)
                else None
            ),
        )
        builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.HASH, signer.cert).certificates(
            [signer.cert]
        )
        if query.nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(query.nonce["extn_value"].parsed.native), False)
        response = builder.sign(signer.key, signer.hash)
        return response.public_bytes(serialization.Encoding.DER)

    def _sign_many(self, query: _Query, this_update: datetime, next_update: datetime) -> bytes:
        """Several CertIDs in one response: cryptography's builder makes one, so asn1crypto."""
        responses = [
            asn1_ocsp.SingleResponse(
                {
                    "cert_id": cert_id,
                    "cert_status": _cert_status(entry),
                    "this_update": this_update,
                    "next_update": next_update,
                }
            )
            for cert_id, entry in zip(query.cert_ids, self._statuses(query), strict=True)
        ]
        # RFC 6960 4.2.2.2: one responder signs the whole response; a request naming CertIDs of
        # several CAs is answered by the first CA's delegate, which only its own CA's clients accept.
        signer = self._signers[query.signers[0]]
        data = asn1_ocsp.ResponseData(
            {
                "responder_id": signer.responder_id,
                "produced_at": this_update,
                "responses": responses,
                "response_extensions": [query.nonce] if query.nonce is not None else None,
            }
        )
        return signer.sign(data)

    def _presign(self, key: tuple[bytes, ...], query: _Query, now: datetime) -> _Cached:
        answer = self._sign(query, now)
        assert answer.cache_until is not None  # a nonce-less answer always has one
        covers = tuple(zip(query.signers, query.serials, strict=True))
        cached = _Cached(answer, answer.cache_until, covers)
        self._drop(key)
        if len(self._cache) >= self._max_cached:  # bounded, whatever a flood of distinct requests asks
            self._drop(next(iter(self._cache)))
        self._cache[key] = cached
        for pair in covers:
            self._covering.setdefault(pair, set()).add(key)
        return cached

    def _drop(self, key: tuple[bytes, ...]) -> None:
        cached = self._cache.pop(key, None)
        if cached is None:
            return
        for pair in cached.covers:
            keys = self._covering.get(pair)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._covering[pair]


def _nonce(extensions: asn1_ocsp.TBSRequestExtensions) -> asn1_ocsp.ResponseDataExtension | None:
    """The response extension echoing the request's nonce (RFC 8954), or None without one."""
    for extension in extensions or ():
        if extension["extn_id"].native != "nonce":
            continue
        value = extension["extn_value"].parsed
        if not isinstance(value, asn1_core.OctetString) or not 1 <= len(value.native) <= MAX_NONCE:
            raise _Malformed(f"nonce must be an OCTET STRING of 1 to {MAX_NONCE} octets")
        return asn1_ocsp.ResponseDataExtension({"extn_id": "nonce", "extn_value": value})
    return None


def _cert_status(entry: StatusEntry) -> asn1_ocsp.CertStatus:
    if entry.status is CertStatus.GOOD:
        return asn1_ocsp.CertStatus(name="good", value=asn1_core.Null())
    if entry.status is CertStatus.UNKNOWN:
        return asn1_ocsp.CertStatus(name="unknown", value=asn1_core.Null())
    if entry.revoked_at is None:
        raise ValueError(f"status source: serial {entry.serial:x} revoked without a time")
    info: dict[str, object] = {"revocation_time": entry.revoked_at.replace(microsecond=0)}
    # RFC 5280 5.3.1: the reason code unspecified is better left out than stated.
    if entry.reason is not None and entry.reason is not Reason.UNSPECIFIED:
        info["revocation_reason"] = entry.reason.value
    return asn1_ocsp.CertStatus(name="revoked", value=info)
