"""`devid serve --coaps-port`: EST-coaps beside HTTPS, in one process or in the first of several
workers; libcoap's client enrolls against it and fetches compact status (`/st`)."""

from __future__ import annotations

import http.client
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Target, coap_client, libcoap_enroll
from est_helpers import pem, provision
from test_serve import PASSPHRASE, start_serve

from devid.authority.setup import init_home, open_authority
from devid.revocation.cose_status import encode_request, signer_kid, verify_status
from devid.revocation.status import CertStatus


def _metrics(port: int, root: Path) -> str:
    conn = http.client.HTTPSConnection(
        "localhost", port, context=ssl.create_default_context(cafile=str(root)), timeout=10
    )
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_coaps_port_enrolls_libcoap(tmp_path: Path, workers: str) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE)
    auth = open_authority(home, PASSPHRASE)
    try:
        device = provision(auth, "SN-SERVE-1", tmp_path)
        (tmp_path / "root.pem").write_bytes(pem(auth.root))
        manufacturing = next(
            ca.certificate for ca in auth.cas.values() if ca.certificate.subject == device.idevid.issuer
        )
    finally:
        auth.engine.dispose()
    served = start_serve(home.path, "--coaps-port", "0", "--workers", workers)
    try:
        line = ""
        while "EST-coaps" not in line:
            line = served.output.get(timeout=30)
        base = line.split(" at ", 1)[1].strip().removesuffix("/.well-known/core")
        assert base.startswith("coaps://127.0.0.1:")
        target = Target(base, tmp_path / "root.pem")
        out = tmp_path / "ldevid.der"
        libcoap_enroll(target, device, tmp_path, 287, out)
        assert (
            x509.load_der_x509_certificate(out.read_bytes()).subject.rfc4514_string().find("SN-SERVE-1") >= 0
        )
        # Compact status on the same port: the IDevID's, verified with the signer /st/signers gives.
        request = tmp_path / "status.cbor"
        request.write_bytes(encode_request(manufacturing, device.idevid.serial_number))
        answer, signers = tmp_path / "status.cose", tmp_path / "signers.p7"
        got = coap_client(target, "fetch", "/st", payload=request, content_format=60, out=answer)
        assert got.returncode == 0, got.stdout + got.stderr
        assert coap_client(target, "get", "/st/signers", out=signers).returncode == 0
        kid = cbor2.loads(answer.read_bytes())[1][4]
        (signer,) = [
            c for c in pkcs7.load_der_pkcs7_certificates(signers.read_bytes()) if signer_kid(c) == kid
        ]
        found = verify_status(
            answer.read_bytes(), signer, manufacturing, datetime.now(UTC), device.idevid.serial_number
        )
        assert found.status is CertStatus.GOOD
        # Counted in /metrics (summed over the workers) by resource and CoAP code.
        scraped = _metrics(served.port, tmp_path / "root.pem")
        assert 'devid_coaps_requests_total{code="2.04",resource="sen"} 1.0' in scraped, scraped
        assert 'devid_coaps_requests_total{code="2.05",resource="st"} 1.0' in scraped, scraped
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
