"""Fuzzing in CI: every crash input ever found is replayed (each with the refusal it must now
get), and each atheris target runs for a fixed budget (tests/fuzz_run.py; the long run is
documented in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fuzz_targets import NAMES, Target, ocsp_responder, split, targets

from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, identify
from devid.errors import CredentialRefused, PolicyError
from devid.est.server import decode_body
from devid.pki.csr import load_and_check_csr
from devid.registry import manufacturers
from devid.registry.onboarding import Registry
from devid.revocation.allowlist import build_allowlist, load_allowlist
from devid.revocation.filter import build_filter, load_filter
from devid.revocation.golomb import IndexSet, text, varint
from devid.revocation.ocsp import MALFORMED_REQUEST
from devid.revocation.signed import Header, Kind, seal

HERE = Path(__file__).parent
CRASHES = HERE / "fuzz_crashes"
KEPT = sorted(CRASHES.glob("*/*"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


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
        ("name-attribute-type-mismatch", "client-cert-malformed"),
    ],
)
def test_client_chain_crashes(auth: Authority, name: str, code: str) -> None:
    """Certificates a client sent that do not parse (one of them with a version past v3), a leaf
    whose subject fails when first read (a ValueError; a TypeError for an attribute of a type its
    OID does not allow) and a candidate issuer on an unknown curve all raised from the chain
    builder."""
    leaf, *chain = split(crash("manufacturer_chain", name), 3)
    credential = CertificateCredential(leaf, (leaf, *(c for c in chain if c)))
    with pytest.raises(CredentialRefused) as refused:
        identify(auth, credential, onboarding=Registry(auth))
    assert refused.value.code == code


def test_fuzz_budget(tmp_path: Path) -> None:
    """Every target fuzzed for 1 s (coverage-guided): no crash, runs made, devid edges reached."""
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, str(HERE / "fuzz_run.py"), "--seconds", "1", "--json", "--artifacts", str(tmp_path)],
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


@pytest.mark.parametrize("kind", ["filter", "allowlist"])
def test_delta_of_a_huge_complemented_set_is_refused(kind: str) -> None:
    """A delta of a few bytes whose added set is stored complemented over a universe of 2**40
    (every index but none) was expanded index by index: minutes of CPU in the gateway (the
    allowlist target's timeout). Refused at once as `filter-format`; the full snapshot still loads."""
    key = ec.generate_private_key(ec.SECP256R1())
    times = {"issued_at": T0, "next_update": T0 + timedelta(days=1)}
    universe = 1 << 40
    everything = IndexSet(universe, array("Q"), True).encode()
    if kind == "filter":
        held = load_filter(
            build_filter([1], 10, version=1, ca_name="ca", sign=key, **times), key.public_key()
        )
        header = Header(Kind.FILTER_DELTA, "ca", 2, base_version=1, **times)
        payload = varint(universe) + everything + IndexSet.of((), universe).encode()
    else:
        blob = build_allowlist({"ab": [1]}, devices=1, scope="hub", version=1, sign=key, **times)
        held = load_allowlist(blob, key.public_key())
        header = Header(Kind.ALLOWLIST_DELTA, "hub", 2, base_version=1, **times)
        payload = (
            varint(1) + varint(1) + text("cd") + varint(universe) + everything + IndexSet.of((), 0).encode()
        )
    started = time.monotonic()
    with pytest.raises(PolicyError) as refused:
        held.apply(seal(header, payload, key))
    assert refused.value.code == "filter-format" and "full snapshot" in refused.value.message
    assert time.monotonic() - started < 1
