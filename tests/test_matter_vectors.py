"""Matter device attestation against the reference implementation's own test vectors
(/work/shared/vectors/matter, README there): every valid chain passes, every broken one fails for
the rule its vector was made to break (the table below maps each to its error code)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from devid.pki.matter import AttestationError, Certificate, Rule, load_certificate, verify_attestation

#: The vectors live beside the repository (`../shared/vectors/matter`), or where $DEVID_MATTER_VECTORS says.
VECTORS = next(
    (
        path
        for path in (
            Path(os.environ.get("DEVID_MATTER_VECTORS", "/nonexistent")),
            Path(__file__).resolve().parents[1].parent / "shared/vectors/matter",
            Path("/work/shared/vectors/matter"),
        )
        if path.is_dir()
    ),
    Path("/work/shared/vectors/matter"),
)
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"no Matter test vectors at {VECTORS}")
DUT = VECTORS / "commissioner_dut"
#: A fixed "now" for the checks: every certificate the vectors mean to be valid is valid then.
NOW = datetime(2026, 12, 1, tzinfo=UTC)

#: commissioner_dut/<folder> -> the error code it must fail with (None: it must pass).
EXPECTED: dict[str, str | None] = {
    "invalid_paa": "matter-paa-untrusted",
    "struct_dac_cert_version_v2": "matter-dac-version",
    "struct_dac_cert_version_v3": None,
    "struct_dac_ext_akid_missing": "matter-dac-aki-missing",
    "struct_dac_ext_basic_ca_wrong": "matter-dac-ca-flag",
    "struct_dac_ext_basic_critical_wrong": "matter-dac-basic-constraints-not-critical",
    "struct_dac_ext_basic_missing": "matter-dac-basic-constraints-missing",
    "struct_dac_ext_basic_pathlen0": "matter-dac-path-length",
    "struct_dac_ext_extended_key_usage_present": None,
    "struct_dac_ext_key_usage_critical_wrong": "matter-dac-key-usage-not-critical",
    "struct_dac_ext_key_usage_dig_sig_wrong": "matter-dac-key-usage-bits",
    "struct_dac_ext_key_usage_key_cert_sign_wrong": "matter-dac-key-usage-bits",
    "struct_dac_ext_key_usage_missing": "matter-dac-key-usage-missing",
    "struct_dac_ext_skid_missing": "matter-dac-ski-missing",
    "struct_dac_ext_subject_alt_name_present": None,
    "struct_dac_sig_algo_ecdsa_with_sha1": "matter-dac-signature-algorithm",
    "struct_dac_sig_curve_secp256k1": "matter-dac-public-key",
    # The PAI names no PID, so the chain is consistent: the device reports PID 8000, the DAC 8001.
    "struct_dac_subject_pid_mismatch": "matter-dac-reported-pid-mismatch",
    "struct_dac_subject_vid_mismatch": "matter-dac-vid-mismatch",
    "struct_dac_valid_in_future": "matter-dac-not-yet-valid",
    "struct_dac_valid_in_past": "matter-dac-expired",
    "struct_dac_vidpid_fallback_encoding_01": None,
    # `Mvid:fff1` is not the legacy encoding (uppercase hex only): the DAC names no VID at all.
    "struct_dac_vidpid_fallback_encoding_07": "matter-dac-vid-missing",
    "struct_pai_ext_basic_ca_wrong": "matter-pai-ca-flag",
    "struct_pai_ext_basic_pathlen1": "matter-pai-path-length",
    "struct_pai_ext_basic_pathlen_presence_wrong": "matter-pai-path-length",
    "struct_pai_ext_key_usage_key_cert_sign_wrong": "matter-pai-key-usage-bits",
}
#: Top-level chains (PEM files), all valid: (DAC, PAI).
VALID_CHAINS = [
    *[(f"Chip-Test-DAC-FFF1-8000-000{i}-Cert.pem", "Chip-Test-PAI-FFF1-8000-Cert.pem") for i in range(5)],
    (
        "older_revision/Chip-Test-DAC-FFF1-8001-0001-Cert.pem",
        "older_revision/Chip-Test-PAI-FFF1-8001-Cert.pem",
    ),
]
#: The trusted PAAs, as a commissioner's development PAA store holds them.
PAA_FILES = (
    "Chip-Test-PAA-FFF1-Cert.pem",
    "Chip-Test-PAA-NoVID-Cert.pem",
    "older_revision/Chip-Test-PAA-FFF1-Cert.pem",
)


def read(path: Path, which: Certificate) -> x509.Certificate:
    return load_certificate(path.read_bytes(), which)


@pytest.fixture(scope="module")
def paas() -> list[x509.Certificate]:
    return [read(VECTORS / name, Certificate.PAA) for name in PAA_FILES]


def test_every_commissioner_vector_is_in_the_table() -> None:
    assert sorted(p.name for p in DUT.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_commissioner_vector(folder: str, paas: list[x509.Certificate]) -> None:
    case = json.loads((DUT / folder / "test_case_vector.json").read_text())
    assert (case["is_success_case"] == "true") == (EXPECTED[folder] is None)
    reported_pid = case.get("basic_info_pid")

    def attest() -> object:
        # The JSON's DER, and (where the folder has them) the PEM files: both encodings are read.
        dac = load_certificate(bytes.fromhex(case["dac_cert"]), Certificate.DAC)
        pai = load_certificate(bytes.fromhex(case["pai_cert"]), Certificate.PAI)
        return verify_attestation(dac, pai, paas, NOW, reported_pid=reported_pid)

    expected = EXPECTED[folder]
    if expected is None:
        result = attest()
        assert result.vendor_id == 0xFFF1  # type: ignore[attr-defined]
        if reported_pid is not None:
            assert result.product_id == reported_pid  # type: ignore[attr-defined]
        return
    with pytest.raises(AttestationError) as caught:
        attest()
    assert caught.value.code == expected, caught.value.message
    if (DUT / folder / "dac-Cert.pem").exists():
        with pytest.raises(AttestationError) as again:
            dac = read(DUT / folder / "dac-Cert.pem", Certificate.DAC)
            pai = read(DUT / folder / "pai-Cert.pem", Certificate.PAI)
            verify_attestation(dac, pai, paas, NOW, reported_pid=reported_pid)
        assert again.value.code == expected


@pytest.mark.parametrize(("dac", "pai"), VALID_CHAINS)
def test_valid_chain(dac: str, pai: str, paas: list[x509.Certificate]) -> None:
    result = verify_attestation(
        read(VECTORS / dac, Certificate.DAC), read(VECTORS / pai, Certificate.PAI), paas, NOW
    )
    assert (result.vendor_id, result.product_id) == (0xFFF1, int(dac.split("-")[-3], 16))
    assert result.as_dict()["verdict"] == "valid"


def dac0() -> x509.Certificate:
    return read(VECTORS / "Chip-Test-DAC-FFF1-8000-0000-Cert.pem", Certificate.DAC)


def pai8000() -> x509.Certificate:
    return read(VECTORS / "Chip-Test-PAI-FFF1-8000-Cert.pem", Certificate.PAI)


def code_of(dac: x509.Certificate, pai: x509.Certificate, paas: list[x509.Certificate], **kw: object) -> str:
    with pytest.raises(AttestationError) as caught:
        verify_attestation(dac, pai, paas, kw.pop("at", NOW), **kw)  # type: ignore[arg-type]
    return caught.value.code


def test_mixed_chains_fail_for_the_rule_they_break(paas: list[x509.Certificate]) -> None:
    older_pai = read(VECTORS / "older_revision/Chip-Test-PAI-FFF1-8001-Cert.pem", Certificate.PAI)
    assert code_of(dac0(), older_pai, paas) == "matter-dac-pid-mismatch"
    # A vendor-wide PAI (no PID) of another PAA: the DAC names it as issuer but it did not sign it.
    foreign = read(DUT / "invalid_paa/pai-Cert.pem", Certificate.PAI)
    foreign_paa = read(DUT / "invalid_paa/paa-Cert.pem", Certificate.PAA)
    assert code_of(dac0(), foreign, [*paas, foreign_paa]) == "matter-dac-issuer-mismatch"
    assert code_of(dac0(), pai8000(), []) == "matter-paa-untrusted"
    assert code_of(dac0(), pai8000(), paas, reported_vid=0xFFF2) == "matter-dac-reported-vid-mismatch"
    assert code_of(dac0(), pai8000(), paas, at=datetime(2021, 1, 1, tzinfo=UTC)) == "matter-dac-not-yet-valid"
    # The PAI given as DAC: a CA where a device certificate belongs.
    assert code_of(pai8000(), pai8000(), paas) == "matter-dac-ca-flag"


def test_unreadable_input_names_the_certificate() -> None:
    with pytest.raises(AttestationError) as caught:
        load_certificate(b"not a certificate", Certificate.DAC)
    assert caught.value.code == "matter-dac-unreadable"
    pem = (VECTORS / "Chip-Test-PAI-FFF1-8000-Cert.pem").read_bytes()
    with pytest.raises(AttestationError) as caught:
        load_certificate(pem + b"junk", Certificate.PAI)
    assert (caught.value.code, caught.value.certificate, caught.value.rule) == (
        "matter-pai-unreadable",
        Certificate.PAI,
        Rule.UNREADABLE,
    )
