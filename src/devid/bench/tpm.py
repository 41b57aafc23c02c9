"""`devid bench tpm`: TPM secure elements at the factory and in mTLS, beside software keys measured in
the same run.

- keys/s: TPM2_Create under the SRK (the key made inside the TPM) vs `cryptography`'s P-256 keygen;
- devices/s: the full factory line with the TPM element vs the software element, same devices;
- handshakes/s: full mTLS handshakes (fresh connection each, no resumption) from a client process
  whose key is in the TPM (OpenSSL's tpm2 provider, as the device agent runs) vs the same client
  with a software key, against one local TLS server that requires a client certificate.

Without --tcti a software TPM (swtpm behind tpm2-abrmd) is started for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.bench.factory import PASSPHRASE, line_run
from devid.config import Home
from devid.factory.secure_elements import SecureElementSpec
from devid.keys.swtpm import simulated_tpm
from devid.keys.tpmtls import TpmTls
from devid.pki.profiles import ProfileName


def keygen_rates(tcti: str, directory: Path, n: int) -> tuple[float, float]:
    """(TPM keys/s, software keys/s): each TPM key is a new element, as the line makes them."""
    from devid.keys.tpm import TpmSecureElement, open_tpm

    folders = [directory / f"K{i:06d}" for i in range(n)]
    for folder in folders:
        folder.mkdir(parents=True)
    open_tpm(tcti)  # the connection and the SRK are the line's start-up, not a key's cost
    start = time.perf_counter()
    for folder in folders:
        TpmSecureElement.create(folder, tcti)
    tpm_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n * 20):
        ec.generate_private_key(ec.SECP256R1())
    return tpm_rate, n * 20 / (time.perf_counter() - start)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _server_identity(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed server certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devid-bench-server")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@contextlib.contextmanager
def _handshake_server(directory: Path, client_ca: bytes) -> Iterator[int]:
    """A TLS server on a free port that requires a client certificate, completes the handshake and
    closes; one connection at a time, like the clients."""
    cert_file, key_file = _server_identity(directory)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=client_ca.decode())
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                ctx.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)


def handshake_rate(
    port: int, server_cert: Path, chain: Path, key: Path, n: int, env: dict[str, str] | None = None
) -> float:
    """Handshakes/s of a client process (`env`: the provider's configuration for a TPM key)."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "devid.bench.handshakes"),
            *(str(port), str(server_cert), str(chain), str(key), str(n)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"handshake client failed: {result.stderr.strip()}")
    return float(json.loads(result.stdout)["rate"])


def _software_client(home: Home, directory: Path) -> tuple[Path, Path]:
    """A software key with an IDevID from the same manufacturing CA (the baseline's identity)."""
    key = ec.generate_private_key(ec.SECP256R1())
    authority = open_authority(home, PASSPHRASE)
    with authority:
        issued = authority.issue(
            IssueRequest(
                ProfileName.IDEVID, key.public_key(), new_device=NewDevice("BENCH-SW-TLS", "bench-model")
            ),
            "bench",
        )
        chain = authority.chain(issued.issuer)
    chain_file, key_file = directory / "sw-chain.pem", directory / "sw.key"
    chain_file.write_bytes(issued.pem + _pem(*chain))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return chain_file, key_file


def run(n: int, handshakes: int, tcti: str | None = None) -> list[Figure]:
    direct: str | None = None
    with contextlib.ExitStack() as stack:
        if tcti is None:
            simulated = stack.enter_context(simulated_tpm())
            tcti, direct = simulated.tcti, simulated.direct_tcti
            where = "swtpm behind tpm2-abrmd"
        else:
            where = tcti
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="devid-bench-tpm-")))
        home = init_home(tmp / "home", org="Bench Org", passphrase=PASSPHRASE)
        tpm_keys, sw_keys = keygen_rates(tcti, tmp / "keys", n)
        sw = line_run(home, tmp / "out-sw", n, 1, SecureElementSpec("software"), "SW")
        tpm = line_run(home, tmp / "out-tpm", n, 1, SecureElementSpec("tpm", tcti=tcti), "TPM")
        # The line needs no resource manager (one key loaded at a time): what tpm2-abrmd costs it.
        unmanaged = None
        if direct is not None:
            unmanaged = line_run(home, tmp / "out-dir", n, 1, SecureElementSpec("tpm", tcti=direct), "DIR")

        device = tmp / "out-tpm" / "TPM00000001"
        tls_files = TpmTls(device, tcti)
        tpm_key = tls_files.prepare()
        tpm_chain = device / "tpm-chain.pem"
        tpm_chain.write_bytes((device / "idevid.pem").read_bytes() + (device / "chain.pem").read_bytes())
        sw_chain, sw_key = _software_client(home, tmp)
        trust = (device / "chain.pem").read_bytes()
        with _handshake_server(tmp, trust) as port:
            server_cert = tmp / "server.pem"
            sw_rate = handshake_rate(port, server_cert, sw_chain, sw_key, handshakes * 10)
            tpm_rate = handshake_rate(
                port, server_cert, tpm_chain, tpm_key.pem_file, handshakes, tls_files.environment()
            )
    return [
        Figure(
            "tpm.keys_rate",
            tpm_keys,
            "keys/s",
            sw_keys,
            "cryptography P-256 keygen, same process",
            f"TPM2_Create under the SRK, one element each ({where}), {n} keys",
        ),
        Figure(
            "tpm.factory_rate",
            tpm.rate,
            "devices/s",
            sw.rate,
            "the same line with the software secure element",
            f"1 worker, {tpm.devices} devices, {tpm.failures} failures ({where})",
        ),
        Figure("tpm.factory_p50", tpm.percentile(50) * 1000, "ms/device", sw.percentile(50) * 1000),
        *(
            [
                Figure(
                    "tpm.factory_rate_direct",
                    unmanaged.rate,
                    "devices/s",
                    tpm.rate,
                    "the same line through tpm2-abrmd",
                    f"straight to swtpm (no resource manager), {unmanaged.devices} devices",
                )
            ]
            if unmanaged is not None
            else []
        ),
        Figure(
            "tpm.handshakes",
            tpm_rate,
            "handshakes/s",
            sw_rate,
            "the same client with a software key",
            f"full TLS 1.3 mTLS handshakes, fresh connection each, key in the TPM through OpenSSL's "
            f"tpm2 provider (which also hashes in the TPM), {handshakes} handshakes",
        ),
    ]
