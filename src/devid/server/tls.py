"""TLS for `devid serve`: the server's own certificate and the context that asks for client ones.

Client certificates are optional at the handshake (so `cacerts`, `csrattrs` and HTTP Basic
enrollment work without one) and required per endpoint. The handshake checks that a presented
certificate chains to devid's root; it does *not* check times (OpenSSL's X509_V_FLAG_NO_CHECK_TIME),
so an expired LDevID still reaches the application, which refuses it with 403 and a reason instead
of a dropped connection, and which checks times by the authority's (injectable) clock. Every
endpoint that accepts a client certificate must therefore go through
`devid.authority.credentials.authenticate`, which checks validity, issuer, store record and status.

The server certificate is, by default, a `server` profile certificate from devid's operational CA
for a key kept (encrypted with the devid passphrase) in `<home>/tls/`, reused while it has more than
a third of its life left and names what is asked.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import ISSUER_OF, Authority
from devid.authority.requests import IssueRequest
from devid.errors import ConfigError, DevidError
from devid.fsutil import atomic_write, read_file
from devid.keys.software import decrypt_private_key, encrypt_private_key
from devid.pki.encoding import cert_der, cert_pem, fingerprint, load_certificates
from devid.pki.profiles import ProfileName, server_names
from devid.web.tls import X509_V_FLAG_NO_CHECK_TIME as X509_V_FLAG_NO_CHECK_TIME
from devid.web.tls import client_checking_context

SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key.pem"
#: Reuse the server certificate while more than this fraction of its lifetime is left.
REUSE_FRACTION = 1 / 3


@dataclass(frozen=True)
class ServerCertificate:
    cert_file: Path
    key_file: Path
    certificate: x509.Certificate
    #: "issued" (now, by the operational CA), "reused" (from an earlier start) or "given" (operator's).
    source: str = "reused"

    @property
    def fingerprint(self) -> str:
        return fingerprint(cert_der(self.certificate))


def client_trust(authority: Authority) -> list[x509.Certificate]:
    """The root and the CAs that issue client certificates (the RETIRING ones too, during a CA
    rotation's overlap), so a client may send its leaf alone."""
    issuing = [ca for role in dict.fromkeys(ISSUER_OF.values()) for ca in authority.issuers_of(role)]
    return [authority.root, *(ca.certificate for ca in issuing)]


def server_context(
    cert_file: Path,
    key_file: Path,
    trust: Sequence[x509.Certificate],
    *,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ server context asking for (optional) client certificates chaining to `trust`."""
    return client_checking_context(cert_file, key_file, trust, require_client=False, password=password)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def server_names_for(host: str, extra: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """DNS names and IPs the server certificate names when serving on `host`: `localhost` and
    127.0.0.1 always, the host itself (the machine's host name when listening on every address,
    left out if it is no valid DNS name), and any `extra` names the operator gives."""
    dns, ips = ["localhost"], ["127.0.0.1"]

    def add(name: str, strict: bool) -> None:
        name = name.strip().strip("[]").lower()
        if not name or name in ("0.0.0.0", "::"):
            return
        if _is_ip(name):
            name, target = str(ipaddress.ip_address(name)), ips
        else:
            try:
                server_names([name], [])
            except DevidError:
                if strict:
                    raise
                return
            target = dns
        if name not in target:
            target.append(name)

    if host in ("", "0.0.0.0", "::"):
        add(socket.gethostname(), strict=False)
        if host == "::":
            add("::1", strict=True)
    else:
        add(host, strict=True)
    for name in extra:
        add(name, strict=True)
    return dns, ips


def _names_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return (
        {n.lower() for n in san.get_values_for_type(x509.DNSName)},
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
    )


def _reusable(
    authority: Authority, cert_file: Path, key_file: Path, passphrase: bytes, dns: list[str], ips: list[str]
) -> x509.Certificate | None:
    """The existing server certificate, if it is devid's, current, names all of `dns`/`ips`, has
    more than a third of its life left, and its key opens and matches."""
    try:
        certs = load_certificates(cert_file.read_bytes())
        key = decrypt_private_key(key_file.read_bytes(), passphrase, "TLS server key")
    except (OSError, DevidError):
        return None
    if not certs:
        return None
    cert = certs[0]
    issuer = authority.issuer_for(ProfileName.SERVER).certificate
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public != key.public_key():
        return None
    now = authority.clock.now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= now or (end - now) <= (end - start) * REUSE_FRACTION:
        return None
    have_dns, have_ips = _names_of(cert)
    if not set(dns) <= have_dns or not {str(ipaddress.ip_address(i)) for i in ips} <= have_ips:
        return None
    return cert


def ensure_server_certificate(
    authority: Authority,
    tls_dir: Path,
    passphrase: bytes,
    dns: Sequence[str],
    ips: Sequence[str],
    *,
    actor: str = "devid serve",
) -> ServerCertificate:
    """The server certificate in `tls_dir`, issued (or re-issued) by the operational CA if needed.

    Files: `server.pem` (leaf then the operational CA certificate) and `server.key.pem` (PKCS#8,
    encrypted with the passphrase). A crash between writing the two leaves a pair whose key does
    not match, which the next start detects and replaces.
    """
    cert_file, key_file = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
    dns, ips = list(dns), list(ips)
    existing = _reusable(authority, cert_file, key_file, passphrase, dns, ips)
    if existing is not None:
        return ServerCertificate(cert_file, key_file, existing)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(
        IssueRequest(
            ProfileName.SERVER,
            key.public_key(),
            common_name=dns[0] if dns else None,
            dns=tuple(dns),
            ips=tuple(ips),
        ),
        actor,
    )
    chain = authority.chain(authority.issuer_for(ProfileName.SERVER).name)
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(key_file, encrypt_private_key(key, passphrase))
    atomic_write(cert_file, issued.pem + b"".join(cert_pem(c) for c in chain), mode=0o644)
    return ServerCertificate(cert_file, key_file, issued.certificate, "issued")


def given_server_certificate(cert_file: Path, key_file: Path) -> ServerCertificate:
    """An operator's own certificate and key (`--tls-cert/--tls-key`); the key may be encrypted
    with the devid passphrase."""
    certs = load_certificates(read_file(cert_file, "TLS certificate"))
    if not certs:
        raise ConfigError("tls-files", f"{cert_file} holds no certificate")
    if not key_file.is_file():
        raise ConfigError("tls-files", f"cannot read TLS key {key_file}")
    return ServerCertificate(cert_file, key_file, certs[0], "given")


def own_server_context(
    authority: Authority, tls_dir: Path, passphrase: bytes, host: str = "127.0.0.1", extra: Sequence[str] = ()
) -> tuple[ssl.SSLContext, ServerCertificate]:
    """The server context with devid's own server certificate for `host` (issued or reused)."""
    dns, ips = server_names_for(host, extra)
    cert = ensure_server_certificate(authority, tls_dir, passphrase, dns, ips)
    return server_context(cert.cert_file, cert.key_file, client_trust(authority), password=passphrase), cert
