"""`devid bench factory`: the full production-line flow, against a bare per-device crypto loop."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.config import Home, Pkcs11Settings
from devid.factory.line import RunSpec, Summary, next_serials, run_line
from devid.factory.secure_elements import SecureElementSpec
from devid.factory.station import LineInfo
from devid.pki.profiles import ProfileName, device_subject

PASSPHRASE = b"devid-bench-passphrase"


def bare_device_loop(home: Home, n: int) -> float:
    """Baseline: the cryptography a line needs per device (keygen, CSR sign, CSR verify, certificate
    sign, certificate verify, challenge sign and verify), in one process, with no store and no files."""
    authority = open_authority(home, PASSPHRASE)
    ca = authority.issuer_for(ProfileName.IDEVID)
    template = ca.template(authority.profile(ProfileName.IDEVID))
    ca_key, ca_cert = ca.key, ca.certificate
    sig = ec.ECDSA(hashes.SHA256())
    start = time.perf_counter()
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = device_subject(authority.org, f"BARE{i:08d}")
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        csr = x509.load_der_x509_csr(csr.public_bytes(serialization.Encoding.DER))
        assert csr.is_signature_valid
        cert = template.builder(
            subject, key.public_key(), x509.random_serial_number(), authority.clock.now()
        ).sign(ca_key, hashes.SHA256())
        cert.verify_directly_issued_by(ca_cert)
        challenge = os.urandom(32)
        key.public_key().verify(key.sign(challenge, sig), challenge, sig)
    authority.close()
    return n / (time.perf_counter() - start)


def line_run(home: Home, out: Path, n: int, workers: int, se: SecureElementSpec, prefix: str) -> Summary:
    spec = RunSpec(home.path.resolve(), PASSPHRASE, LineInfo("bench", "bench-model", "lot-b"), se, out)
    return run_line(spec, next_serials(home, prefix, n, 1), workers, out / "manifest.jsonl")


def run(n: int, workers: int, pkcs11_n: int = 0, pkcs11: Pkcs11Settings | None = None) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="devid-bench-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=PASSPHRASE)
        baseline = bare_device_loop(home, max(200, n // 4))
        summary = line_run(home, Path(tmp) / "out", n, workers, SecureElementSpec("software"), "SW")
        figures = [
            Figure(
                "factory.software_se_rate",
                summary.rate,
                "devices/s",
                baseline,
                "bare per-device crypto loop, 1 process",
                f"{workers} workers, {summary.devices} devices, {summary.failures} failures",
            ),
            Figure("factory.software_se_p50", summary.percentile(50) * 1000, "ms/device"),
            Figure("factory.software_se_p99", summary.percentile(99) * 1000, "ms/device"),
        ]
        if pkcs11_n and pkcs11:
            p11 = line_run(
                home, Path(tmp) / "out-p11", pkcs11_n, 1, SecureElementSpec("pkcs11", pkcs11), "HSM"
            )
            figures += [
                Figure(
                    "factory.pkcs11_se_rate",
                    p11.rate,
                    "devices/s",
                    baseline,
                    "bare per-device crypto loop, 1 process",
                    f"SoftHSM2 token, 1 worker, {p11.devices} devices, {p11.failures} failures",
                ),
                Figure("factory.pkcs11_se_p50", p11.percentile(50) * 1000, "ms/device"),
            ]
    return figures
