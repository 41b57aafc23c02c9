"""Fuzzing in CI: every crash input ever found is replayed (each with the refusal it must now
get), and each atheris target runs for a fixed budget (tests/fuzz_run.py; the long run is
documented in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_targets import NAMES, Target, ocsp_responder, split, targets

from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, identify
from devid.errors import CredentialRefused, PolicyError
from devid.est.server import decode_body
from devid.pki.csr import load_and_check_csr
from devid.registry import manufacturers
from devid.registry.onboarding import Registry
from devid.revocation.ocsp import MALFORMED_REQUEST

HERE = Path(__file__).parent
CRASHES = HERE / "fuzz_crashes"
KEPT = sorted(CRASHES.glob("*/*"))


def crash(target: str, name: str) -> bytes:
    return (CRASHES / target / name).read_bytes()


@pytest.fixture(scope="module")
def built() -> Iterator[dict[str, Target]]:
    with targets(NAMES) as made:
        yield made


@pytest.mark.parametrize("path", KEPT, ids=[f"{p.parent.name}/{p.name}" for p in KEPT])
def test_kept_crash_inputs_are_refused_cleanly(built: dict[str, Target], path: Path) -> None:
    built[path.parent.name].run(path.read_bytes())


@pytest.mark.parametrize(
    ("name", "code"),
    [("unknown-key-algorithm.der", "key-type"), ("invalid-csr-version", "csr-malformed")],
)
def test_csr_crashes(name: str, code: str) -> None:
    """A key algorithm OID cryptography does not know raised UnsupportedAlgorithm, a CSR version
    other than v1 raised InvalidVersion: both escaped as 500s."""
    with pytest.raises(PolicyError) as refused:
        load_and_check_csr(crash("csr", name))
    assert refused.value.code == code


def test_est_body_crash_invalid_version() -> None:
    with pytest.raises(PolicyError) as refused:
        load_and_check_csr(decode_body(crash("est_body", "invalid-csr-version")))
    assert refused.value.code == "csr-malformed"


def test_ocsp_negative_serial_is_malformed() -> None:
    """A CertID with a negative serial made the signing fail: internalError, and a logged trace."""
    responder, _ = ocsp_responder()
    assert responder.respond(crash("ocsp", "negative-serial")).der == MALFORMED_REQUEST


@pytest.mark.parametrize("name", ["invalid-ca-key", "malformed-verification-subject"])
def test_manufacturer_registration_crashes(auth: Authority, name: str) -> None:
    """A CA key cryptography cannot load, or a subject that fails to parse when first read,
    raised ValueError from `register`."""
    ca, verification = split(crash("manufacturer", name), 2)
    with pytest.raises(PolicyError) as refused:
        manufacturers.register(auth, "maker", ca, verification)
    assert refused.value.code == "cert-malformed"


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("unparseable-chain-cert", "client-cert-malformed"),
        ("invalid-certificate-version", "client-cert-malformed"),
        ("malformed-leaf-subject", "client-cert-malformed"),
        ("unsupported-curve-on-path", "client-cert-unknown-issuer"),
    ],
)
def test_client_chain_crashes(auth: Authority, name: str, code: str) -> None:
    """Certificates a client sent that do not parse (one of them with a version past v3), a leaf
    whose subject fails when first read and a candidate issuer on an unknown curve all raised
    from the chain builder."""
    leaf, *chain = split(crash("manufacturer_chain", name), 3)
    credential = CertificateCredential(leaf, (leaf, *(c for c in chain if c)))
    with pytest.raises(CredentialRefused) as refused:
        identify(auth, credential, onboarding=Registry(auth))
    assert refused.value.code == code


def test_fuzz_budget(tmp_path: Path) -> None:
    """Every target fuzzed for 2 s (coverage-guided): no crash, runs made, devid edges reached."""
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz_run.py"), "--seconds", "2", "--json", "--artifacts", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures = {f["target"]: f for f in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 0, done.stderr[-4000:]
    assert set(figures) == set(NAMES)
    for name, figure in figures.items():
        assert not figure["crashed"], name
        assert figure["runs"] > 0 and figure["cov"] > 0, figure
