"""The gateway's TLS server context: a client certificate is required at the handshake, but times
are not checked there (OpenSSL's X509_V_FLAG_NO_CHECK_TIME), so an expired certificate reaches
`devid.pki.client_chain.check_client_chain` and is refused with its reason, logged."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from devid.errors import ConfigError, KeyAccessError
from devid.fsutil import read_file
from devid.pki.encoding import cert_pem, load_certificates

#: OpenSSL X509_V_FLAG_NO_CHECK_TIME: verify the chain's signatures but not the validity times.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


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
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=(lambda: password or b""))
    except ssl.SSLError as exc:
        raise KeyAccessError(
            "tls-key", f"cannot load TLS certificate {cert_file} with key {key_file}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError("tls-files", f"cannot read TLS certificate or key: {exc}") from None
    # Devices reconnect rarely and afresh: tickets would cost work on every handshake for nothing.
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata="".join(cert_pem(c).decode() for c in anchors))
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME | ssl.VERIFY_X509_PARTIAL_CHAIN
    if not ctx.verify_flags & X509_V_FLAG_NO_CHECK_TIME:  # pragma: no cover - OpenSSL without the flag
        raise ConfigError("tls-flags", "this OpenSSL does not accept X509_V_FLAG_NO_CHECK_TIME")
    return ctx
