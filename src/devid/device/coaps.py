"""EST-coaps as the device agent speaks it (`devid agent enroll --transport coaps`): the calls and
results of `devid.est.client.EstClient` (`Enrolled`, `EstError`) over `devid.coap.client`, so the
agent's decisions (renew, fall back, back off) are the same whichever transport carries them.

A CoAP code c.dd becomes the HTTP status c*100+dd EST would have sent (4.03 → 403, 5.03 → 503 with
Max-Age as Retry-After); an enrollment awaiting approval (5.03 `[approval-pending]`) becomes 202.
The DTLS handshake signs with the key in memory: a key inside a PKCS#11 token cannot be used here
(pyOpenSSL runs cryptography's own OpenSSL, which does not load the system's pkcs11-provider).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from devid.coap.client import CoapsClient, CoapsError, client_context
from devid.coap.message import Code, Message
from devid.coap.resources import HUB_OPTION, HUB_URL_OPTION, POLICY_OPTION, RENEW_AT_OPTION, ContentFormat
from devid.errors import ConfigError
from devid.est.client import Enrolled, EstError, chain_above
from devid.keys.p11tls import ProviderKey
from devid.pki.encoding import load_certificates


def http_status(coap_code: int) -> int:
    """The HTTP status of a CoAP response code (RFC 8075 keeps the digits: 4.03 is 403)."""
    return (coap_code >> 5) * 100 + (coap_code & 31)


def est_error(error: CoapsError) -> EstError:
    if error.coap_code == Code.SERVICE_UNAVAILABLE and error.message.endswith("[approval-pending]"):
        return EstError(202, "enrollment is waiting for approval", error.max_age or 60)
    status = http_status(error.coap_code) if error.coap_code else 0
    return EstError(status, error.message, error.max_age)


def _text(answer: Message, number: int) -> str | None:
    raw = answer.first(number)
    return None if raw is None else raw.decode(errors="replace")


class CoapsEst:
    """EST-coaps against one server and label, over one DTLS session (`async with`)."""

    def __init__(
        self,
        url: str,
        trust_pem: bytes,
        chain: Sequence[x509.Certificate],
        key: ec.EllipticCurvePrivateKey | ProviderKey,
        *,
        label: str = "",
        timeout: float = 30.0,
    ) -> None:
        if isinstance(key, ProviderKey):
            raise ConfigError(
                "coaps-token-key",
                f"EST-coaps signs the DTLS handshake with a key in memory, not {key.what} (a secure "
                "element's key): use the HTTPS transport for this device",
            )
        context = client_context(load_certificates(trust_pem), chain, key)
        self.client = CoapsClient(url, context, timeout=timeout)
        self.prefix = f"/est/{label}" if label else "/est"

    async def __aenter__(self) -> CoapsEst:
        try:
            await self.client.__aenter__()
        except CoapsError as exc:
            raise est_error(exc) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def _request(self, method: int, op: str, payload: bytes = b"", **options: int) -> Message:
        try:
            return await self.client.request(method, f"{self.prefix}/{op}", payload, **options)
        except CoapsError as exc:
            raise est_error(exc) from None

    async def cacerts(self) -> list[x509.Certificate]:
        answer = await self._request(Code.GET, "crts", accept=ContentFormat.PKCS7_CERTS)
        return _certificates(answer.payload)

    async def simpleenroll(self, csr: x509.CertificateSigningRequest) -> Enrolled:
        return await self._enroll("sen", csr)

    async def simplereenroll(self, csr: x509.CertificateSigningRequest) -> Enrolled:
        return await self._enroll("sren", csr)

    async def _enroll(self, op: str, csr: x509.CertificateSigningRequest) -> Enrolled:
        der = csr.public_bytes(serialization.Encoding.DER)
        answer = await self._request(
            Code.POST, op, der, content_format=ContentFormat.PKCS10, accept=ContentFormat.PKCS7_CERTS
        )
        certs = _certificates(answer.payload)
        if not certs:
            raise EstError(200, "the server answered with no certificate")
        renew = answer.uint(RENEW_AT_OPTION)
        return Enrolled(
            certs[0],
            certs[1:] or chain_above(certs[0], await self.cacerts()),
            _text(answer, POLICY_OPTION),
            datetime.fromtimestamp(renew, UTC) if renew is not None else None,
            _text(answer, HUB_OPTION),
            _text(answer, HUB_URL_OPTION),
        )


def _certificates(der: bytes) -> list[x509.Certificate]:
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except ValueError as exc:
        raise EstError(200, f"the server's PKCS#7 answer does not parse: {exc}") from None
