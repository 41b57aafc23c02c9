"""`devid bench issue`: IDevIDs/s through the authority against a bare CertificateBuilder loop."""

from __future__ import annotations

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.pki.der import HardwareModuleName
from devid.pki.profiles import FOREVER, ProfileName

BATCH = 200
ROUNDS = 5


def bare_loop(authority: Authority, keys: list[ec.EllipticCurvePublicKey]) -> float:
    """The baseline: the same IDevID profile written the plain `cryptography` way, no store."""
    ca = authority.issuer_for(ProfileName.IDEVID)
    issuer_cert, issuer_key = ca.certificate, ca.key
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    start = time.perf_counter()
    for i, key in enumerate(keys):
        serial = f"BARE{i:08d}"
        now = datetime.now(UTC)
        (
            x509.CertificateBuilder()
            .issuer_name(issuer_cert.subject)
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, authority.org),
                        x509.NameAttribute(NameOID.COMMON_NAME, serial),
                        x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
                    ]
                )
            )
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(FOREVER)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [HardwareModuleName(authority.hw_type, serial.encode()).to_other_name()]
                ),
                False,
            )
            .sign(issuer_key, hashes.SHA256())
        )
    return len(keys) / (time.perf_counter() - start)


def through_authority(authority: Authority, keys: list[ec.EllipticCurvePublicKey]) -> float:
    tag = uuid.uuid4().hex[:8]
    requests = [
        IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(f"B{tag}{i:08d}"))
        for i, key in enumerate(keys)
    ]
    start = time.perf_counter()
    for i in range(0, len(requests), BATCH):
        authority.issue_many(requests[i : i + BATCH], "bench")
    return len(keys) / (time.perf_counter() - start)


def run(n: int, db_url: str | None = None) -> list[Figure]:
    passphrase = b"devid-bench-passphrase"
    with tempfile.TemporaryDirectory(prefix="devid-bench-") as tmp:
        home = init_home(Path(tmp) / "home", org="Bench Org", passphrase=passphrase, db_url=db_url)
        authority = open_authority(home, passphrase)
        # One key per device (the authority refuses a key certified for another device), the
        # warm-up's too: it opens the CA key and compiles the statements.
        keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(n + min(200, n))]
        through_authority(authority, keys[n:])
        keys = keys[:n]
        # Interleave the two loops in rounds, so a change in machine load hits both alike.
        rounds = max(1, min(ROUNDS, n // BATCH))
        size = n // rounds
        base_s = ours_s = 0.0
        for r in range(rounds):
            chunk = keys[r * size : (r + 1) * size]
            base_s += len(chunk) / bare_loop(authority, chunk)
            ours_s += len(chunk) / through_authority(authority, chunk)
        baseline, ours = rounds * size / base_s, rounds * size / ours_s
        backend = authority.engine.dialect.name
        authority.close()
    return [
        Figure(
            "issue.idevid_rate",
            ours,
            "certs/s",
            baseline,
            "bare cryptography sign loop",
            f"{backend}, batches of {BATCH}, store + audit included, 1 process",
        )
    ]
