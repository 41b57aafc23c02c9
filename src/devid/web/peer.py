"""Who is on the other end: the client certificate of a request, natively or from a trusted proxy.

Natively, the certificate comes from the TLS connection (Python's ssl has verified it chains to
devid's root; times are checked by the application, see `devid.server.tls`). Behind a TLS-terminating
proxy (nginx `proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;`), it comes from a
header, and only when the TCP peer is a configured proxy: from anyone else the header is ignored,
or any client could claim any certificate.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from devid.errors import ConfigError, PolicyError

CLIENT_CERT_HEADER = "X-SSL-Client-Cert"
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----(?P<body>.*?)-----END CERTIFICATE-----", re.S)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """Addresses (or networks) of the proxies whose client-certificate header is believed."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, addresses: Iterable[str]) -> TrustedProxies:
        networks = []
        for text in addresses:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    "trusted-proxy", f"--trusted-proxy {text!r} is not an IP address or network"
                ) from None
        return cls(tuple(networks))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


TRUSTED_PROXIES = web.AppKey("devid.trusted_proxies", TrustedProxies)


def peer_address(request: web.Request) -> str | None:
    """The TCP peer's IP address (not any X-Forwarded-For claim)."""
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def decode_header_certificate(value: str) -> bytes | None:
    """DER of the certificate in a proxy's header: URL-encoded PEM (nginx), or PEM with its line
    breaks turned into spaces or tabs (other proxies). Empty: the client sent none."""
    text = urllib.parse.unquote(value).strip()
    if not text or text == "(null)":
        return None
    match = _PEM_CERT.search(text)
    if match is None:
        raise PolicyError(
            "request-client-cert-header", f"{CLIENT_CERT_HEADER} does not hold a PEM certificate"
        )
    try:
        return base64.b64decode("".join(match.group("body").split()), validate=True)
    except binascii.Error:
        raise PolicyError("request-client-cert-header", f"{CLIENT_CERT_HEADER} has invalid base64") from None


def from_trusted_proxy(request: web.Request) -> bool:
    proxies = request.app.get(TRUSTED_PROXIES)
    return bool(proxies and proxies.networks) and peer_address(request) in proxies  # type: ignore[operator]


def peer_certificate(request: web.Request) -> bytes | None:
    """DER of the client's certificate, or None when it presented none.

    From a configured proxy the header is the only source (the proxy's own TLS certificate is not
    the client's); from anyone else the header is ignored and the TLS connection is the source.
    """
    if from_trusted_proxy(request):
        value = request.headers.get(CLIENT_CERT_HEADER)
        return decode_header_certificate(value) if value else None
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return bytes(der) if der else None


def peer_chain(request: web.Request) -> tuple[bytes, ...]:
    """DER of the certificates the client sent (leaf first), for chains to a manufacturer CA.

    Python 3.11's `ssl` exposes only the leaf publicly; CPython 3.10+ has the chain on the
    private `_sslobj` (public as `get_unverified_chain()` from 3.13). The chain is only a hint:
    every link is verified by the registry before it is used. Empty when unavailable or proxied.
    """
    if from_trusted_proxy(request) or request.transport is None:
        return ()
    ssl_object = request.transport.get_extra_info("ssl_object")
    raw = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if raw is None:
        return ()
    chain = raw() or []
    return tuple(bytes(c.public_bytes(_ENCODING_DER)) for c in chain)


_ENCODING_DER = 2  # _ssl.ENCODING_DER
