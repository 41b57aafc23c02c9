"""Run devid's EST server in-process over real TLS on loopback, and act as devices against it.

    with running_server(authority, tmp_path) as server:      # a thread with its own event loop
        device = provision(authority, "SN-1", tmp_path)      # IDevID issued, key held in PEM
        resp = https(server, "POST", "/.well-known/est/simpleenroll",
                     csr_b64(device.key, device.serial), cert=device.idevid_files)

`server.url` is `https://127.0.0.1:<port>`, `server.root_pem` the trust anchor file for clients
(curl --cacert, ssl contexts), `server.authority` the authority it serves. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import ssl
import subprocess
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.pki.profiles import ProfileName
from devid.server.app import RunningServer, make_app, start_server
from devid.server.listener import ConnectionLimits
from devid.server.tls import own_server_context

#: Same value as conftest.PASSPHRASE (kept in step).
PASSPHRASE = b"correct horse battery staple"
EST = "/.well-known/est"


@dataclass
class EstServer:
    url: str
    root_pem: Path
    server_certificate: x509.Certificate
    authority: Authority
    running: RunningServer

    @property
    def port(self) -> int:
        return self.running.port

    def est(self, op: str, label: str = "") -> str:
        """Full URL of an EST operation (for curl)."""
        return f"{self.url}{path(op, label)}"


def path(op: str, label: str = "") -> str:
    return f"{EST}/{label}/{op}" if label else f"{EST}/{op}"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextmanager
def running_server(
    authority: Authority,
    work_dir: Path,
    *,
    trusted_proxies: Iterable[str] = (),
    host: str = "127.0.0.1",
    passphrase: bytes = PASSPHRASE,
    shutdown_timeout: float = 5.0,
    api_anonymous_rate: int = 60,
    limits: ConnectionLimits | None = None,
) -> Iterator[EstServer]:
    """Start `make_app(authority)` on a free port in a background thread; stop it on exit."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx, cert = own_server_context(authority, work_dir / "tls", passphrase, host)
    root_pem = work_dir / "root.pem"
    root_pem.write_bytes(pem(authority.root))
    app = make_app(authority, trusted_proxies=trusted_proxies, api_anonymous_rate=api_anonymous_rate)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="est-server", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(
        start_server(app, ctx, host=host, port=0, shutdown_timeout=shutdown_timeout, limits=limits), loop
    ).result(timeout=30)
    try:
        yield EstServer(running.url, root_pem, cert.certificate, authority, running)
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(), loop).result(timeout=60)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@dataclass
class Device:
    """A device provisioned through the authority, its keys in memory and as PEM files (for curl)."""

    serial: str
    directory: Path
    key: ec.EllipticCurvePrivateKey
    idevid: x509.Certificate

    @property
    def idevid_files(self) -> tuple[Path, Path]:
        """(certificate PEM, key PEM) for `curl --cert/--key` or `load_cert_chain`."""
        return self.directory / "idevid.pem", self.directory / "idevid.key"


def write_key(file: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    file.chmod(0o600)
    return file


def provision(authority: Authority, serial: str, work_dir: Path, *, model: str = "Sensor") -> Device:
    """A new device with an IDevID from the manufacturing CA (as the factory line would issue it)."""
    directory = work_dir / serial
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authority.issue(
        IssueRequest(
            ProfileName.IDEVID, key.public_key(), new_device=NewDevice(serial, model), common_name=model
        ),
        "test-factory",
    )
    (directory / "idevid.pem").write_bytes(issued.pem)
    write_key(directory / "idevid.key", key)
    return Device(serial, directory, key, issued.certificate)


def save_identity(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    """Write a certificate and its key as `<name>.pem` / `<name>.key`; returns the two paths."""
    cert_file = directory / f"{name}.pem"
    cert_file.write_bytes(pem(cert))
    return cert_file, write_key(directory / f"{name}.key", key)


def csr_der(
    key: ec.EllipticCurvePrivateKey | object,
    subject: x509.Name | str = "device",
    *,
    san: x509.SubjectAlternativeName | None = None,
) -> bytes:
    """A DER PKCS#10 CSR signed by `key` (any key type cryptography signs with)."""
    name = (
        subject
        if isinstance(subject, x509.Name)
        else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)  # type: ignore[arg-type]


def csr_b64(
    key: ec.EllipticCurvePrivateKey | object, subject: x509.Name | str = "device", **kw: object
) -> bytes:
    return base64.encodebytes(csr_der(key, subject, **kw))  # type: ignore[arg-type]


def renewal_csr_b64(key: ec.EllipticCurvePrivateKey, current: x509.Certificate) -> bytes:
    """A re-enrollment CSR naming the subject and SAN of `current` (RFC 7030 4.2.2)."""
    san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return csr_b64(key, current.subject, san=san)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def client_context(root_pem: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(root_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def https(
    server: EstServer,
    method: str,
    url_path: str,
    body: bytes | None = None,
    *,
    cert: tuple[Path, Path] | None = None,
    headers: dict[str, str] | None = None,
    content_type: str | None = "application/pkcs10",
    source_address: str | None = None,
    host: str = "127.0.0.1",
) -> Response:
    """One HTTPS request over a fresh TLS connection (optionally with a client certificate)."""
    conn = http.client.HTTPSConnection(
        host,
        server.port,
        context=client_context(server.root_pem, cert),
        timeout=30,
        source_address=(source_address, 0) if source_address else None,
    )
    try:
        all_headers = dict(headers or {})
        if body is not None and content_type is not None:
            all_headers.setdefault("Content-Type", content_type)
        conn.request(method, url_path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def run(
    args: Sequence[str | Path], input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run([str(a) for a in args], input=input, capture_output=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, args))}: {result.returncode} {result.stderr!r}"
    return result


def certs_from_b64_pkcs7(body: bytes) -> list[x509.Certificate]:
    """What `openssl base64 -d | openssl pkcs7 -print_certs` would show, as certificates."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))
