"""`devid serve --coaps-port`: EST-coaps beside HTTPS, in one process or in the first of several
workers; libcoap's client enrolls against it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Target, coap_client
from est_helpers import csr_der, pem, provision
from test_serve import PASSPHRASE, start_serve

from devid.authority.setup import init_home, open_authority


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_coaps_port_enrolls_libcoap(tmp_path: Path, workers: str) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE)
    auth = open_authority(home, PASSPHRASE)
    try:
        device = provision(auth, "SN-SERVE-1", tmp_path)
        (tmp_path / "root.pem").write_bytes(pem(auth.root))
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
        csr = tmp_path / "csr.der"
        csr.write_bytes(csr_der(device.key, "x"))
        out = tmp_path / "ldevid.der"
        got = coap_client(
            target,
            "post",
            "/est/sen",
            identity=device.idevid_files,
            payload=csr,
            content_format=286,
            accept=287,
            out=out,
        )
        assert got.returncode == 0, got.stdout + got.stderr
        assert (
            x509.load_der_x509_certificate(out.read_bytes()).subject.rfc4514_string().find("SN-SERVE-1") >= 0
        )
        assert served.stop() == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
