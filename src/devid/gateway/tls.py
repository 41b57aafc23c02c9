"""The gateway's TLS server context: a client certificate is required at the handshake, but times
are not checked there (OpenSSL's X509_V_FLAG_NO_CHECK_TIME), so an expired certificate reaches
`devid.pki.client_chain.check_client_chain` and is refused with its reason, logged."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from devid.errors import ConfigError
from devid.fsutil import read_file
from devid.pki.encoding import load_certificates
from devid.web.tls import client_checking_context


def load_bundle(path: Path) -> list[x509.Certificate]:
    """The trusted CA certificates (`--ca-bundle`: the root and the intermediates that issue devices)."""
    certs = load_certificates(read_file(path, "CA bundle"))
    if not certs:
        raise ConfigError("gateway-bundle", f"{path} holds no certificate")
    return certs


def gateway_context(
    cert_file: Path, key_file: Path, anchors: list[x509.Certificate], *, password: bytes | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ server context with the gateway's own certificate, requiring client certificates
    that chain (signatures only) to one of `anchors`; every anchor is a trust point on its own."""
    return client_checking_context(cert_file, key_file, anchors, require_client=True, password=password)
