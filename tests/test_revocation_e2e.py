"""End to end over real sockets: `devid revoke` reaches OCSP (openssl ocsp), the shard CRL
(curl + openssl verify -crl_check) and the filter of a running `devid serve --http-port`."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, ok
from event_peers import free_port
from test_serve import start_serve

from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.pki.profiles import ProfileName
from devid.revocation.filter import FilterAnswer, load_filter

PASSPHRASE = b"correct horse battery staple"


def _until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read())
    except OSError:
        return None


def test_revoke_reaches_ocsp_crl_and_filter_within_seconds(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE, public_url=base)
    with open_authority(home, PASSPHRASE) as auth:
        leaves = []
        for i in range(3):
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            auth.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(f"E-{i}", lot="LOT-9")))
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            leaves.append(auth.issue(IssueRequest(ProfileName.LDEVID, key, device_serial=f"E-{i}")))
        operational = auth.cas["operational"].certificate
        files = {"root.pem": auth.root, "op.pem": operational, "leaf.pem": leaves[1].certificate}
        for name, cert in files.items():
            (tmp_path / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        op_key = operational.public_key()
    assert isinstance(op_key, ec.EllipticCurvePublicKey)
    points = leaves[1].certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    shard_url = points[0].full_name[0].value
    served = start_serve(home.path, "--http-port", str(port))
    try:
        _until(lambda: _get(shard_url) is not None, timeout=30)

        def ocsp() -> str:
            run = subprocess.run(
                [
                    "openssl",
                    "ocsp",
                    "-issuer",
                    tmp_path / "op.pem",
                    "-cert",
                    tmp_path / "leaf.pem",
                    "-url",
                    f"{base}/ocsp",
                    "-CAfile",
                    tmp_path / "root.pem",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            )
            return run.stdout + run.stderr

        assert "leaf.pem: good" in ocsp() and "Response verify OK" in ocsp()
        revoked_at = time.monotonic()
        ok(devid("revoke", "--lot", "LOT-9", "--reason", "keyCompromise", "--home", home.path))
        _until(lambda: "leaf.pem: revoked" in ocsp())
        assert "Reason: keyCompromise" in ocsp()

        def crl_lists() -> bool:
            data = _get(shard_url + "?format=pem")
            (tmp_path / "shard.crl").write_bytes(data or b"")
            run = subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-CAfile",
                    tmp_path / "root.pem",
                    "-untrusted",
                    tmp_path / "op.pem",
                    "-CRLfile",
                    tmp_path / "shard.crl",
                    "-crl_check",
                    tmp_path / "leaf.pem",
                ],
                capture_output=True,
                text=True,
            )
            return "certificate revoked" in run.stdout + run.stderr

        _until(crl_lists)

        def filter_says() -> FilterAnswer:
            data = _get(f"{base}/filter/operational")
            return (
                load_filter(data, op_key).check_serial(leaves[1].serial) if data else FilterAnswer.NOT_COVERED
            )

        _until(lambda: filter_says() is FilterAnswer.REVOKED)
        assert time.monotonic() - revoked_at < 10
    finally:
        assert served.stop() == 0
