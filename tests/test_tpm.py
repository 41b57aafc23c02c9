"""TPM 2.0 secure elements, end to end against a real (software) TPM: swtpm behind tpm2-abrmd,
started by this module on free ports in a temporary folder and stopped after it.

The factory line runs as the `devid factory run` command; the IDevID verifies with `openssl verify`
and the key it certifies is the one the TPM made (OpenSSL's tpm2 provider loads the wrapped blob into
the TPM and reads the public key back). The device agent enrolls and renews over mTLS against a real
`devid serve`, the handshake signed in the TPM through the tpm2 provider. An absent TPM, or one that
refuses, is a clear CLI error and nothing is recorded.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from e2e import count, devid, devid_env, flat, ok, openssl_verify, query, run
from test_serve import start_serve
from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT

from devid.authority.setup import init_home
from devid.errors import KeyExportRefused
from devid.keys import tpmtls
from devid.keys.swtpm import SimulatedTpm, simulated_tpm
from devid.keys.tpm import SRK_HANDLE, TpmSecureElement
from devid.pki.encoding import load_certificates

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def tpm() -> Iterator[SimulatedTpm]:
    with simulated_tpm() as running:
        yield running


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def factory_run(home: Path, tcti: str, count_: int, prefix: str = "TPM") -> subprocess.CompletedProcess[str]:
    return devid(
        *("factory", "run", "--home", home, "--count", str(count_), "--serial-prefix", prefix),
        *("--secure-element", "tpm", "--se-tcti", tcti),
    )


def tpm2_openssl(tcti: str, *args: str | Path) -> bytes:
    """The openssl CLI with the tpm2 provider first, talking to `tcti`."""
    result = subprocess.run(
        ["openssl", *map(str, args), "-provider", "tpm2", "-provider", "default"],
        capture_output=True,
        env={**os.environ, "TPM2OPENSSL_TCTI": tcti},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_factory_line_puts_the_key_in_the_tpm_and_openssl_verifies_the_idevid(
    tpm: SimulatedTpm, tmp_path: Path
) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE).path
    out = flat(ok(factory_run(home, tpm.tcti, 3)).stdout)
    assert "devices: 3 failures: 0" in out, out

    directory = home / "devices" / "TPM00000002"
    chain = directory / "chain.pem"
    root = tmp_path / "root.pem"
    root.write_text("".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in [
        load_certificates(chain.read_bytes())[-1]
    ]))  # fmt: skip
    openssl_verify(root, directory / "idevid.pem", untrusted=chain)
    idevid = load_certificates((directory / "idevid.pem").read_bytes())[0]
    ref = json.loads((directory / "device.json").read_text())["secure_element"]
    assert ref == {"backend": "tpm", "tcti": tpm.tcti, "state": "se.json"}
    assert query(home, "SELECT se_backend FROM devices WHERE serial = ?", "TPM00000002") == [("tpm",)]

    # The certified key is the TPM's: the provider loads the wrapped blob into the TPM, reads the
    # public key back, and signs a CSR there that openssl verifies.
    state = json.loads((directory / "se.json").read_text())
    assert state["key"].startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    blob, csr = tmp_path / "key.pem", tmp_path / "tpm.csr"
    blob.write_text(state["key"])
    public = tpm2_openssl(tpm.tcti, "pkey", "-in", blob, "-pubout")
    assert spki(serialization.load_pem_public_key(public)) == spki(idevid.public_key())
    tpm2_openssl(tpm.tcti, "req", "-new", "-key", blob, "-subj", "/CN=from-the-tpm", "-out", csr)
    checked = run("openssl", "req", "-in", csr, "-verify", "-noout", "-pubkey")
    assert b"verify OK" in checked.stderr + checked.stdout
    assert spki(serialization.load_pem_public_key(checked.stdout)) == spki(idevid.public_key())

    se = TpmSecureElement.open(directory, tpm.tcti)
    attrs = se.private_key().attributes()
    for bit in (TPMA_OBJECT.FIXEDTPM, TPMA_OBJECT.FIXEDPARENT, TPMA_OBJECT.SENSITIVEDATAORIGIN):
        assert attrs & bit == bit, bit
    assert se.read_slot("idevid") == idevid.public_bytes(serialization.Encoding.DER)
    with pytest.raises(KeyExportRefused):
        se.private_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    with pytest.raises(KeyExportRefused):
        se.export_private_key()
    own = se.sign_csr(x509.CertificateSigningRequestBuilder().subject_name(idevid.subject))
    assert own.is_signature_valid and spki(own.public_key()) == spki(idevid.public_key())


def test_tpm_device_enrolls_and_renews_over_mtls_against_devid_serve(
    tpm: SimulatedTpm, tmp_path: Path
) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE).path
    ok(factory_run(home, tpm.tcti, 1, "AGT"))
    directory = home / "devices" / "AGT00000001"
    idevid = load_certificates((directory / "idevid.pem").read_bytes())[0]
    root = tmp_path / "root.pem"
    root.write_bytes(load_certificates((directory / "chain.pem").read_bytes())[-1].public_bytes(
        serialization.Encoding.PEM
    ))  # fmt: skip
    env = devid_env(passphrase=None)  # the device needs no passphrase: its key is in the TPM
    served = start_serve(home)
    try:
        enrolled = devid(
            "agent",
            "enroll",
            "--device",
            directory,
            "--server",
            f"https://127.0.0.1:{served.port}",
            "--ca-bundle",
            root,
            env=env,
        )
        assert "enrolled AGT00000001:" in flat(ok(enrolled).stdout)
        first = load_certificates((directory / "ldevid.pem").read_bytes())[0]
        assert spki(first.public_key()) == spki(idevid.public_key())  # the LDevID certifies the TPM key

        # What TLS reached the key through: a 0600 OpenSSL configuration (tpm2 first) and the
        # wrapped blob, 0600.
        conf, key = directory / tpmtls.CONF_FILE, directory / tpmtls.KEY_FILE
        for f in (conf, key):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        text = conf.read_text()
        assert text.index("tpm2 = tpm2_sect") < text.index("default = default_sect")

        state_file = directory / "agent.json"
        state = json.loads(state_file.read_text())
        state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        state_file.write_text(json.dumps(state))
        renewed_run = devid("agent", "run", "--device", directory, "--once", env=env)
        assert "AGT00000001: renew" in flat(ok(renewed_run).stdout)
        renewed = load_certificates((directory / "ldevid.pem").read_bytes())[0]
        assert renewed != first and spki(renewed.public_key()) == spki(idevid.public_key())
    finally:
        assert served.stop() == 0
    statuses = dict(
        query(
            home,
            "SELECT fingerprint, status FROM certificates WHERE fingerprint IN (?, ?)",
            *(c.fingerprint(hashes.SHA256()).hex() for c in (first, renewed)),
        )
    )
    assert statuses == {
        first.fingerprint(hashes.SHA256()).hex(): "superseded",
        renewed.fingerprint(hashes.SHA256()).hex(): "valid",
    }
    se = TpmSecureElement.open(directory, tpm.tcti)
    assert se.read_slot("ldevid") == renewed.public_bytes(serialization.Encoding.DER)
    status = json.loads(ok(devid("agent", "status", "--device", directory, env=env)).stdout)
    assert status["ldevid_serial"] == format(renewed.serial_number, "x") and status["failures"] == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_nothing_recorded(home: Path, before: tuple[int, int]) -> None:
    assert (count(home, "devices"), count(home, "certificates")) == before
    assert not (home / "devices").exists() or not any((home / "devices").glob("*/device.json"))


def test_an_absent_tpm_is_a_clear_refusal_and_nothing_is_recorded(tpm: SimulatedTpm, tmp_path: Path) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE).path
    before = (count(home, "devices"), count(home, "certificates"))
    absent = f"swtpm:host=127.0.0.1,port={_free_port()}"
    result = factory_run(home, absent, 2)
    assert result.returncode == 2, result.stdout + result.stderr
    err = flat(result.stderr)
    assert "[tpm-unreachable]" in err and absent in err, err
    assert_nothing_recorded(home, before)

    # A device whose TPM is gone: the agent refuses before any connection, nothing written.
    ok(factory_run(home, tpm.tcti, 1, "GONE"))
    directory = home / "devices" / "GONE00000001"
    result = devid(
        *("agent", "enroll", "--device", directory, "--server", "https://127.0.0.1:9"),
        *("--se-tcti", absent),
        env=devid_env(passphrase=None),
    )
    assert result.returncode == 2 and "[tpm-unreachable]" in flat(result.stderr), result.stderr
    assert not (directory / "agent.json").exists()

    # A machine without OpenSSL's tpm2 provider: what to install, before any connection.
    result = devid(
        *("agent", "enroll", "--device", directory, "--server", "https://127.0.0.1:9"),
        env=devid_env(passphrase=None, **{tpmtls.PROVIDER_ENV: str(tmp_path / "no-tpm2.so")}),
    )
    assert result.returncode == 2, result.stderr
    assert "[se-tls-unsupported]" in flat(result.stderr) and "tpm2-openssl" in result.stderr
    assert not (directory / "agent.json").exists()


def test_a_tpm_that_refuses_is_a_clear_refusal_and_nothing_is_recorded(
    tpm: SimulatedTpm, tmp_path: Path
) -> None:
    home = init_home(tmp_path / "H", org="Acme", passphrase=PASSPHRASE).path
    before = (count(home, "devices"), count(home, "certificates"))
    with simulated_tpm(resource_manager=False) as other:
        # A TPM whose owner hierarchy has a password devid does not know: it refuses to make the SRK.
        esapi = ESAPI(TCTILdr.parse(other.direct_tcti))
        esapi.hierarchy_change_auth(ESYS_TR.OWNER, b"owner-secret")
        esapi.close()
        result = factory_run(home, other.direct_tcti, 2)
        assert result.returncode == 2, result.stdout + result.stderr
        err = flat(result.stderr)
        assert "[tpm-error]" in err and f"{SRK_HANDLE:#x}" in err, err
        assert_nothing_recorded(home, before)


def test_bench_tpm_prints_each_figure_beside_its_same_run_baseline() -> None:
    result = devid("bench", "tpm", "--n", "10", "--handshakes", "5", "--json", timeout=300)
    figures = {f["name"]: f for f in map(json.loads, ok(result).stdout.splitlines())}
    assert set(figures) == {
        "tpm.keys_rate",
        "tpm.factory_rate",
        "tpm.factory_p50",
        "tpm.factory_rate_direct",
        "tpm.handshakes",
    }
    for name in ("tpm.keys_rate", "tpm.factory_rate", "tpm.handshakes"):
        figure = figures[name]
        assert figure["value"] > 0 and figure["baseline"] > 0 and figure["ratio"] > 0, figure
    assert figures["tpm.handshakes"]["unit"] == "handshakes/s"
    assert "0 failures" in figures["tpm.factory_rate"]["note"]
