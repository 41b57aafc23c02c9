"""The TLS server context every devid listener that checks client certificates starts from: the
EST server (`devid.server.tls`) and the edge gateway (`devid.gateway.tls`).

Client certificates are verified against the trusted CAs (each a trust point of its own: a
registered manufacturer CA may be an intermediate whose root devid never sees) but not their
times (OpenSSL's X509_V_FLAG_NO_CHECK_TIME), so an expired certificate reaches the application's
check (`devid.pki.client_chain`) and is refused with its reason instead of a dropped handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from devid.errors import ConfigError, KeyAccessError
from devid.pki.encoding import cert_pem

#: The TLS 1.2 suites offered: forward-secret (ECDHE) key exchange with AEAD ciphers only; no CBC,
#: no RSA key transport, no SHA-1 MACs. TLS 1.3's suites are all of that kind and are left as they are.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: OpenSSL X509_V_FLAG_NO_CHECK_TIME: verify the chain's signatures but not the validity times.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


def client_checking_context(
    cert_file: Path,
    key_file: Path,
    trust: Sequence[x509.Certificate],
    *,
    require_client: bool,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ server context (MODERN_CIPHERS) with this server's certificate, asking for
    (`require_client`: requiring) client certificates that chain to `trust`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file), password=(lambda: password or b""))
    except ssl.SSLError as exc:
        raise KeyAccessError(
            "tls-key", f"cannot load TLS certificate {cert_file} with key {key_file}: {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError("tls-files", f"cannot read TLS certificate or key: {exc}") from None
    # No TLS 1.3 session tickets: devices connect rarely (the agent daily) and start a fresh
    # handshake each time, so tickets would only cost the server work on every connection
    # (OpenSSL serializes the session, client chain included, into each of the two it sends).
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata="".join(cert_pem(c).decode() for c in trust))
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME | ssl.VERIFY_X509_PARTIAL_CHAIN
    if not ctx.verify_flags & X509_V_FLAG_NO_CHECK_TIME:  # pragma: no cover - OpenSSL without the flag
        raise ConfigError("tls-flags", "this OpenSSL does not accept X509_V_FLAG_NO_CHECK_TIME")
    return ctx
