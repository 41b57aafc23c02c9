"""An EST client (RFC 7030) over mutual TLS or HTTP Basic, as a device uses it.

One client class, protocol messages as typed results: the device agent, the EST benchmark and
tests all speak EST through it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7

from devid.errors import DevidError, KeyAccessError
from devid.keys.p11tls import ProviderKey
from devid.pki import c509
from devid.web.tls import MODERN_CIPHERS

PKCS10 = "application/pkcs10"
WELL_KNOWN = "/.well-known/est"


_SERVER_CODE = re.compile(r"(?P<message>.*\S)\s*\[(?P<code>[a-z0-9]+(?:-[a-z0-9]+)*)\]\s*", re.DOTALL)


class EstError(DevidError):
    """The EST server refused or could not be reached; `status` 0 means no HTTP answer."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        # devid's servers end a refusal with its code, `message [code]`: keep that code, so the CLI
        # prints one code, the server's, instead of the server's inside the message plus est-403.
        said = _SERVER_CODE.fullmatch(reason)
        if said:
            code, reason = said["code"], f"the EST server refused ({status}): {said['message']}"
        else:
            code = f"est-{status}" if status else "est-unreachable"
        super().__init__(code, reason)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Enrolled:
    """A certificate the server returned, with the renewal instructions it sent alongside."""

    certificate: x509.Certificate
    chain: list[x509.Certificate]
    policy: str | None
    renew_at: datetime | None
    #: Where the registry allocated the device (`Devid-Hub`, `Devid-Hub-Url`), when it did.
    hub: str | None = None
    hub_url: str | None = None


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that exists only in memory (memfd): Python's ssl loads keys only by path,
    and a device key must not touch the disk in clear."""
    fd = os.memfd_create("devid-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def tls_context(
    trust_pem: bytes,
    cert_chain: list[x509.Certificate] | None = None,
    key: ec.EllipticCurvePrivateKey | ProviderKey | None = None,
) -> ssl.SSLContext:
    """Client TLS context: trusts `trust_pem` only (explicit trust anchor), presents a certificate
    chain with its key held in memory (software element) or in a PKCS#11 token or a TPM
    (`ProviderKey`: the handshake is signed there, through OpenSSL's pkcs11-provider or tpm2 provider)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=trust_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    if cert_chain and key is not None:
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cert_chain)
        if isinstance(key, ProviderKey):
            with _memory_file(chain_pem) as certfile:
                try:
                    ctx.load_cert_chain(certfile, str(key.pem_file))
                except ssl.SSLError as exc:
                    raise KeyAccessError(
                        "se-tls-key",
                        f"OpenSSL could not use {key.what} (configuration {key.conf_file}): {exc}",
                    ) from None
            return ctx
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with _memory_file(chain_pem) as certfile, _memory_file(key_pem) as keyfile:
            ctx.load_cert_chain(certfile, keyfile)
    return ctx


def parse_answer(body: bytes, content_type: str) -> list[x509.Certificate]:
    """The certificates of an answer, by its Content-Type: C509 (draft-ietf-cose-cbor-encoded-cert)
    when the server honoured a C509 Accept, else PKCS#7 certs-only."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        if media_type == c509.MEDIA_TYPE_CERT:
            return [c509.load_certificate(body)]
        if media_type == c509.MEDIA_TYPE_COSE_C509:
            return [x509.load_der_x509_certificate(der) for der in c509.decode_chain(body)]
    except ValueError as exc:
        raise EstError(200, f"the server's C509 answer does not parse: {exc}") from None
    return parse_certs_only(body)


def parse_certs_only(body: bytes) -> list[x509.Certificate]:
    """A base64 (RFC 8951: line breaks or not) PKCS#7 certs-only body."""
    try:
        return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split()), validate=True))
    except ValueError as exc:
        raise EstError(200, f"the server's PKCS#7 answer does not parse: {exc}") from None


def chain_above(leaf: x509.Certificate, cas: list[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates above `leaf` among `cas` (a `cacerts` answer), root excluded."""
    by_subject = {c.subject: c for c in cas}
    chain: list[x509.Certificate] = []
    current = leaf
    while current.issuer != current.subject and current.issuer in by_subject and len(chain) < 8:
        current = by_subject[current.issuer]
        if current.issuer != current.subject:
            chain.append(current)
    return chain


class EstClient:
    """EST operations against one server and label, over one connection pool (keep-alive)."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext,
        *,
        label: str = "",
        basic: tuple[str, str] | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        c509: bool = False,
    ) -> None:
        """`c509`: ask for certificates in C509 (half the bytes of PKCS#7 on a constrained link)."""
        self.c509 = c509
        self.base = base_url.rstrip("/") + WELL_KNOWN + (f"/{label}" if label else "")
        self._ssl = ssl_context
        self._auth = aiohttp.BasicAuth(*basic) if basic else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> EstClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self, method: str, op: str, body: bytes | None = None, accept: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        assert self._session is not None, "use `async with EstClient(...)`"
        headers = {"Content-Type": PKCS10, "Content-Transfer-Encoding": "base64"} if body is not None else {}
        if accept and self.c509:
            headers["Accept"] = accept
        try:
            async with self._session.request(
                method, f"{self.base}/{op}", data=body, headers=headers, ssl=self._ssl, auth=self._auth
            ) as resp:
                data = await resp.read()
                if resp.status == 202:
                    retry = resp.headers.get("Retry-After", "60")
                    raise EstError(
                        202, "enrollment is waiting for approval", int(retry) if retry.isdigit() else 60
                    )
                if resp.status != 200:
                    raise EstError(resp.status, data.decode(errors="replace").strip() or resp.reason or "")
                return data, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise EstError(0, f"cannot reach the EST server at {self.base}: {exc}") from None

    async def cacerts(self) -> list[x509.Certificate]:
        body, headers = await self._request("GET", "cacerts", accept=c509.MEDIA_TYPE_CHAIN)
        return parse_answer(body, headers.get("Content-Type", ""))

    async def simpleenroll(self, csr: x509.CertificateSigningRequest) -> Enrolled:
        return await self._enroll("simpleenroll", csr)

    async def simplereenroll(self, csr: x509.CertificateSigningRequest) -> Enrolled:
        return await self._enroll("simplereenroll", csr)

    async def _enroll(self, op: str, csr: x509.CertificateSigningRequest) -> Enrolled:
        body = base64.encodebytes(csr.public_bytes(serialization.Encoding.DER))
        data, headers = await self._request("POST", op, body, accept=c509.MEDIA_TYPE_CERT)
        certs = parse_answer(data, headers.get("Content-Type", ""))
        if not certs:
            raise EstError(200, "the server answered with no certificate")
        renew = headers.get("Devid-Renew-At")
        chain = certs[1:] or await self.issuer_chain(certs[0])
        return Enrolled(
            certs[0],
            chain,
            headers.get("Devid-Policy"),
            datetime.fromisoformat(renew) if renew else None,
            headers.get("Devid-Hub"),
            headers.get("Devid-Hub-Url"),
        )

    async def issuer_chain(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        """The CA certificates above `leaf`, root excluded, from `cacerts`: RFC 7030 enrollment
        answers carry the leaf alone, and a TLS peer that trusts only the root needs the rest."""
        return chain_above(leaf, await self.cacerts())
