"""Matter device attestation against the reference implementation's own test vectors
(/work/shared/vectors/matter, README there): every valid chain passes, every broken one fails for
the rule its vector was made to break (the table below maps each to its error code)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from devid.pki.der import encode_oid, read_any, read_tlv, tlv
from devid.pki.matter import (
    AttestationError,
    Certificate,
    Rule,
    load_certificate,
    matter_subject,
    verify_attestation,
)

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


# --- rules no reference vector breaks, on chains built here ----------------------------------------

DAY = timedelta(days=1)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: int | None,
    not_before: datetime = NOW - 30 * DAY,
    ski: x509.SubjectKeyIdentifier | None = None,
    ski_critical: bool = False,
    signer: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """A Matter-shaped certificate: a CA with pathLen `ca`, or a DAC when `ca` is None."""
    issuer_name, issuer_key = issuer or (subject, key)
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca is not None, path_length=ca), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=ca is None, key_cert_sign=ca is not None, crl_sign=ca is not None, **usage
            ),
            critical=True,
        )
        .add_extension(
            ski or x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=ski_critical
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return builder.sign(signer or issuer_key, hashes.SHA256())


@dataclass
class Chain:
    paa_key: ec.EllipticCurvePrivateKey
    pai_key: ec.EllipticCurvePrivateKey
    dac_key: ec.EllipticCurvePrivateKey
    paa_name: x509.Name
    pai_name: x509.Name

    def paa(self, **kw: Any) -> x509.Certificate:
        return _cert(self.paa_name, self.paa_key, None, ca=1, **kw)

    def pai(self, **kw: Any) -> x509.Certificate:
        return _cert(self.pai_name, self.pai_key, (self.paa_name, self.paa_key), ca=0, **kw)

    def dac(self, subject: x509.Name | None = None, **kw: Any) -> x509.Certificate:
        name = subject or matter_subject("DAC 1", 0xFFF1, 0x8000)
        return _cert(name, self.dac_key, (self.pai_name, self.pai_key), ca=None, **kw)


@pytest.fixture(scope="module")
def chain() -> Chain:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    return Chain(*keys, matter_subject("PAA", 0xFFF1), matter_subject("PAI", 0xFFF1, 0x8000))


def test_a_chain_built_here_passes(chain: Chain) -> None:
    result = verify_attestation(chain.dac(), chain.pai(), [chain.paa()], NOW)
    assert (result.vendor_id, result.product_id) == (0xFFF1, 0x8000)


def test_rules_no_vector_breaks(chain: Chain) -> None:
    paa, pai = chain.paa(), chain.pai()
    other = ec.generate_private_key(ec.SECP256R1())
    # PAAs with the right key (the PAI's AKI finds them) but naming a PID, or another vendor.
    paa_with_pid = _cert(matter_subject("PAA", 0xFFF1, 0x8000), chain.paa_key, None, ca=1)
    paa_of_fff2 = _cert(matter_subject("PAA", 0xFFF2), chain.paa_key, None, ca=1)
    cases = [
        (chain.dac(ski_critical=True), pai, paa, "matter-dac-ski-critical"),
        (chain.dac(ski=x509.SubjectKeyIdentifier(b"12345678")), pai, paa, "matter-dac-ski-length"),
        (chain.dac(signer=other), pai, paa, "matter-dac-signature"),
        (chain.dac(subject=matter_subject("DAC", 0xFFF1)), pai, paa, "matter-dac-pid-missing"),
        (chain.dac(), chain.pai(signer=other), paa, "matter-pai-signature"),
        # The PAI came after the DAC it is meant to have signed.
        (chain.dac(), chain.pai(not_before=NOW - DAY), paa, "matter-pai-not-yet-valid"),
        (chain.dac(), pai, paa_with_pid, "matter-paa-pid-present"),
        (chain.dac(), pai, paa_of_fff2, "matter-pai-vid-mismatch"),
        (_duplicate_key_usage(chain.dac(), chain.pai_key), pai, paa, "matter-dac-duplicate-extension"),
    ]
    for dac_cert, pai_cert, paa_cert, code in cases:
        with pytest.raises(AttestationError) as caught:
            verify_attestation(dac_cert, pai_cert, [paa_cert], NOW)
        assert caught.value.code == code, caught.value.message


def _duplicate_key_usage(cert: x509.Certificate, signer: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """`cert` re-signed with its keyUsage extension twice (no builder makes one; cryptography then
    refuses to read its extensions, so the verifier reads them from the DER)."""
    tbs, _ = read_tlv(cert.tbs_certificate_bytes, 0, 0x30)
    fields, pos = [], 0
    while pos < len(tbs):
        tag, content, end = read_any(tbs, pos)
        if tag == 0xA3:
            extensions, _ = read_tlv(content, 0, 0x30)
            usage = next(e for e in cert.extensions if e.oid == ExtensionOID.KEY_USAGE)
            doubled = tlv(0x30, tlv(0x06, encode_oid(usage.oid.dotted_string)[2:]) + tlv(0x01, b"\xff")
                          + tlv(0x04, usage.value.public_bytes()))  # fmt: skip
            fields.append(tlv(0xA3, tlv(0x30, extensions + doubled)))
        else:
            fields.append(tbs[pos:end])
        pos = end
    new_tbs = tlv(0x30, b"".join(fields))
    signature = signer.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = tlv(0x30, encode_oid("1.2.840.10045.4.3.2"))
    der = tlv(0x30, new_tbs + algorithm + tlv(0x03, b"\x00" + signature))
    loaded = x509.load_der_x509_certificate(der)
    with pytest.raises(x509.DuplicateExtension):
        _ = loaded.extensions
    return loaded
