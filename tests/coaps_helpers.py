"""Run devid's EST-coaps server in-process over real DTLS on loopback, and drive Debian's libcoap
client (`coap-client-openssl`) against it.

    with running_coaps(authority, tmp_path) as srv:    # a thread with its own event loop
        out = coap_client(srv, "get", "/est/crts", accept=281)

Nothing is mocked: the server is `devid.coap.server.start_coaps` over the authority's own
enrollment service, with the server certificate `devid serve` would use.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from est_helpers import Device, csr_der

from devid.authority.core import Authority
from devid.authority.enroll import Onboarding
from devid.authority.enrollment import EnrollmentService
from devid.coap.dtls import DtlsIdentity, DtlsLimits
from devid.coap.exchange import BlockLimits
from devid.coap.server import CoapsServer, start_coaps
from devid.revocation.cose_responder import CoseStatusResponder
from devid.server.tls import own_server_context

PASSPHRASE = b"correct horse battery staple"
COAP_CLIENT = shutil.which("coap-client-openssl")
T = TypeVar("T")


@dataclass
class Coaps:
    server: CoapsServer
    authority: Authority
    root_pem: Path
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str) -> str:
        return f"coaps://127.0.0.1:{self.port}{path}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop (to read its state between events)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)


@contextmanager
def running_coaps(
    authority: Authority,
    work_dir: Path,
    *,
    limits: DtlsLimits | None = None,
    blocks: BlockLimits | None = None,
    onboarding: Onboarding | None = None,
    status: CoseStatusResponder | None = None,
) -> Iterator[Coaps]:
    work_dir.mkdir(parents=True, exist_ok=True)
    _, cert = own_server_context(authority, work_dir / "tls", PASSPHRASE)
    identity = DtlsIdentity.load(cert.cert_file, cert.key_file, PASSPHRASE)
    root_pem = work_dir / "root.pem"
    root_pem.write_bytes(authority.root.public_bytes(serialization.Encoding.PEM))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="coaps-server", daemon=True)
    thread.start()

    async def start() -> tuple[EnrollmentService, CoapsServer]:
        service = EnrollmentService(authority, onboarding)
        server = await start_coaps(service, identity, port=0, limits=limits, blocks=blocks, status=status)
        return service, server

    service, server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield Coaps(server, authority, root_pem, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=60)
        asyncio.run_coroutine_threadsafe(asyncio.to_thread(service.close), loop).result(timeout=60)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


@dataclass
class Target:
    """An EST-coaps server elsewhere (`devid serve --coaps-port`): its base URL and trust anchor."""

    base: str
    root_pem: Path

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def coap_client(
    srv: Coaps | Target,
    method: str,
    path: str,
    *,
    identity: tuple[Path, Path] | None = None,
    payload: Path | None = None,
    content_format: int | None = None,
    accept: int | None = None,
    block_size: int | None = None,
    out: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """One request with libcoap's OpenSSL client (PKI: the identity's certificate and key, the
    devid root as the only trust anchor)."""
    assert COAP_CLIENT, "coap-client-openssl is missing: apt-get install libcoap3-bin"
    args = [COAP_CLIENT, "-m", method, "-R", str(srv.root_pem), "-B", "20"]
    if identity is not None:
        args += ["-c", str(identity[0]), "-j", str(identity[1])]
    if payload is not None:
        args += ["-f", str(payload)]
    if content_format is not None:
        args += ["-t", str(content_format)]
    if accept is not None:
        args += ["-A", str(accept)]
    if block_size is not None:
        args += ["-b", str(block_size)]
    if out is not None:
        args += ["-o", str(out)]
    args.append(srv.url(path))
    return subprocess.run(args, capture_output=True, timeout=60, check=False)


def libcoap_enroll(srv: Coaps | Target, device: Device, work: Path, accept: int, out: Path) -> None:
    """libcoap's `sen` with the device's IDevID and a CSR of its key, the answer (in `accept`'s
    format) written to `out`; fails the test when the client does."""
    csr = work / "csr.der"
    csr.write_bytes(csr_der(device.key, "ignored"))
    got = coap_client(
        srv,
        "post",
        "/est/sen",
        identity=device.idevid_files,
        payload=csr,
        content_format=286,
        accept=accept,
        out=out,
    )
    assert got.returncode == 0, got.stdout + got.stderr
