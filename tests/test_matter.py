"""Matter attestation through devid's commands: `devid matter verify` on the reference vectors
(every broken one refused with its rule's code, PEM and DER), and a factory line issuing DACs from
secure-element keys through the authority, each DAC recorded in the store and verified by devid's
own verifier and by `openssl verify`."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import PASSPHRASE, count, devid, devid_many, flat, ok, openssl, openssl_verify, query, split_pem
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken
from test_matter_vectors import DUT, EXPECTED, NOW, PAA_FILES, VECTORS

from devid.authority.matter import create_paa, create_pai
from devid.authority.requests import IssueRequest, MatterIds, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.cli import main
from devid.config import Home
from devid.errors import DevidError
from devid.keys.pkcs11 import Pkcs11SecureElement, open_token
from devid.keys.software import SoftwareSecureElement
from devid.pki.matter import Certificate, load_certificate, verify_attestation
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.revocation import crl as devid_crl

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"no Matter test vectors at {VECTORS}")


def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str | Path
) -> tuple[int, str, str]:
    """`devid ARGS` in this process (the console script's own entry point): exit status, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["devid", *map(str, args)])
    status = 0
    try:
        main.run()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def paa_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("paa-store")
    for name in PAA_FILES:
        shutil.copy(VECTORS / name, store / name.replace("/", "-"))
    return store


def test_verify_every_broken_vector_exits_2_naming_its_rule(
    paa_store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sorted(p.name for p in paa_store.iterdir())
    for folder, code in EXPECTED.items():
        case = json.loads((DUT / folder / "test_case_vector.json").read_text())
        pid = case.get("basic_info_pid")
        dac, pai = DUT / folder / "dac-Cert.pem", DUT / folder / "pai-Cert.pem"
        if not dac.exists():  # a JSON-only vector: its DER, as files
            dac, pai = paa_store.parent / f"{folder}-dac.der", paa_store.parent / f"{folder}-pai.der"
            dac.write_bytes(bytes.fromhex(case["dac_cert"]))
            pai.write_bytes(bytes.fromhex(case["pai_cert"]))
        extra = ["--pid", f"{pid:04X}"] if pid is not None else []
        args = [
            "matter",
            "verify",
            "--dac",
            dac,
            "--pai",
            pai,
            "--paa-store",
            paa_store,
            "--at",
            NOW.isoformat(),
        ]
        status, out, err = cli(capsys, monkeypatch, *args, *extra, "--json")
        if code is None:
            assert status == 0, err
            assert json.loads(out)["verdict"] == "valid"
        else:
            assert (status, out) == (2, ""), (folder, out, err)
            assert err.startswith("error: ") and err.rstrip().endswith(f"[{code}]"), (folder, err)
    assert sorted(p.name for p in paa_store.iterdir()) == before


def test_verify_reads_pem_and_der_and_reports_the_chain(
    paa_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pai = load_certificate((VECTORS / "Chip-Test-PAI-FFF1-8000-Cert.pem").read_bytes(), Certificate.PAI)
    (tmp_path / "pai.der").write_bytes(pai.public_bytes(serialization.Encoding.DER))
    dac = VECTORS / "Chip-Test-DAC-FFF1-8000-0002-Cert.pem"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/paa.pem").write_text("not a certificate")
    status, out, err = cli(
        capsys, monkeypatch, "matter", "verify", "--dac", dac, "--pai", tmp_path / "pai.der",
        "--paa-store", paa_store, "--vid", "fff1", "--pid", "0x8000",
    )  # fmt: skip
    assert status == 0, err
    assert "verdict  valid" in out and "vendor_id  FFF1" in out and "product_id  8000" in out
    # Bad input: each a specific error, exit 2.
    for args, code in (
        (["--dac", tmp_path / "none.pem", "--pai", tmp_path / "pai.der"], "file-unreadable"),
        (["--dac", tmp_path / "pai.der", "--pai", tmp_path / "pai.der"], "matter-dac-ca-flag"),
        (["--dac", dac, "--pai", dac], "matter-pai-ca-flag"),
        (["--dac", dac, "--pai", tmp_path / "pai.der", "--vid", "XYZ"], "matter-bad-vid"),
        (["--dac", dac, "--pai", tmp_path / "pai.der", "--at", "yesterday"], "bad-time"),
        (
            ["--dac", dac, "--pai", tmp_path / "pai.der", "--paa-store", tmp_path / "nowhere"],
            "matter-paa-store",
        ),
        (
            ["--dac", dac, "--pai", tmp_path / "pai.der", "--paa-store", tmp_path / "bad"],
            "matter-paa-store-unreadable",
        ),
    ):
        if "--paa-store" not in args:
            args += ["--paa-store", paa_store]
        status, out, err = cli(capsys, monkeypatch, "matter", "verify", *args)
        assert (status, out) == (2, ""), (args, err)
        assert err.rstrip().endswith(f"[{code}]"), (args, err)


def test_factory_line_issues_matter_dacs_that_verify(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "line"
    init_home(home, org="Acme Matter", passphrase=PASSPHRASE.encode())
    line = ("factory", "run", "--count", "3", "--home", home, "--out", out, "--serial-prefix", "MTR")
    dac_line = (*line, "--profile", "matter-dac", "--vid", "FFF1", "--pid", "8000")
    audit_before = count(home, "audit_events")

    # Refused before anything is made: no PAA, no PAI, VID/PID missing or where they do not belong.
    refusals = (
        (("matter", "pai", "create", "--vid", "FFF1", "--pid", "8000", "--home", home), "matter-no-paa"),
        (dac_line, "matter-no-pai"),
        ((*line, "--profile", "matter-dac", "--vid", "FFF1"), "matter-ids-required"),
        ((*line, "--vid", "FFF1"), "matter-ids-unexpected"),
        ((*line, "--profile", "ldevid"), "line-profile"),
        (("matter", "paa", "create", "--vid", "12345", "--home", home), "matter-bad-vid"),
    )
    for (args, code), result in zip(refusals, devid_many([args for args, _ in refusals]), strict=True):
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert flat(result.stderr).endswith(f"[{code}]"), (args, result.stderr)
    assert count(home, "devices") == 0 and count(home, "certificates") == 0
    assert count(home, "audit_events") == audit_before
    assert not out.exists() or not any(out.iterdir())

    ok(devid("matter", "paa", "create", "--vid", "FFF1", "--home", home))
    pai_made = json.loads(
        ok(
            devid("matter", "pai", "create", "--vid", "FFF1", "--pid", "8000", "--home", home, "--json")
        ).stdout
    )
    assert pai_made["name"] == "matter-pai-FFF1-8000" and pai_made["not_after"].startswith("9999-12-31")
    again = devid("matter", "paa", "create", "--vid", "FFF1", "--home", home)
    assert again.returncode == 2 and flat(again.stderr).endswith("[matter-ca-exists]")
    ok(devid(*dac_line))

    # Every DAC is recorded like any certificate, issued by the product line's PAI.
    rows = query(
        home,
        "SELECT d.serial, c.profile, ca.name, c.der FROM certificates c JOIN devices d ON d.id = c.device_id "
        "JOIN cas ca ON ca.id = c.issuer_id ORDER BY d.serial",
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (f"MTR0000000{i}", "matter-dac", "matter-pai-FFF1-8000") for i in (1, 2, 3)
    ]
    roles = dict(query(home, "SELECT name, role FROM cas WHERE name LIKE 'matter-%'"))
    assert roles == {"matter-paa-FFF1": "matter-paa", "matter-pai-FFF1-8000": "matter-pai"}
    (paa_der,) = query(home, "SELECT der FROM cas WHERE name = 'matter-paa-FFF1'")[0]
    assert isinstance(paa_der, bytes)
    paa = x509.load_der_x509_certificate(paa_der)
    events = [e for (e,) in query(home, "SELECT action FROM audit_events")]
    assert events.count("ca.create") == 5 + 2 and events.count("certificate.issue") == 3

    for serial, _, _, der in rows:
        device = out / str(serial)
        assert {p.name for p in device.iterdir()} == {
            "device.json",
            "dac.pem",
            "chain.pem",
            "se.json",
            "se-device.key",
        }
        info = json.loads((device / "device.json").read_text())
        assert info["dac"] == "dac.pem"
        dac = x509.load_pem_x509_certificate((device / "dac.pem").read_bytes())
        assert dac.public_bytes(serialization.Encoding.DER) == der
        # The key is the secure element's, and its slot holds the DAC.
        se = SoftwareSecureElement.open(device)
        assert se.public_key() == dac.public_key() and se.read_slot("dac") == der
        pai_pem, paa_pem = split_pem((device / "chain.pem").read_text())
        assert x509.load_pem_x509_certificate(paa_pem.encode()) == paa
        pai = load_certificate(pai_pem.encode(), Certificate.PAI)
        result = verify_attestation(
            dac, pai, [paa], datetime.now(UTC), reported_vid=0xFFF1, reported_pid=0x8000
        )
        assert (result.vendor_id, result.product_id) == (0xFFF1, 0x8000)
        (device / "pai.pem").write_text(pai_pem)
        (device / "paa.pem").write_text(paa_pem)
        openssl_verify(device / "paa.pem", device / "dac.pem", device / "pai.pem")
        strict = openssl(
            "verify",
            "-x509_strict",
            "-CAfile",
            device / "paa.pem",
            "-untrusted",
            device / "pai.pem",
            device / "dac.pem",
        )
        assert strict.strip() == f"{device / 'dac.pem'}: OK"

    # And through the command, trusting the home's PAAs (no --paa-store).
    first = out / "MTR00000001"
    verdict = json.loads(
        ok(
            devid(
                "matter",
                "verify",
                "--dac",
                first / "dac.pem",
                "--pai",
                first / "pai.pem",
                "--home",
                home,
                "--json",
            )
        ).stdout
    )
    assert (verdict["verdict"], verdict["vendor_id"], verdict["product_id"]) == ("valid", "FFF1", "8000")
    # devid's trust bundle (TLS peers, brokers) leaves the Matter anchors out: a DAC authenticates nowhere.
    bundle = [
        x509.load_pem_x509_certificate(b.encode())
        for b in split_pem(ok(devid("ca", "export", "--home", home)).stdout)
    ]
    assert len(bundle) == 3 and paa not in bundle


def test_dacs_from_pkcs11_secure_elements(tmp_path: Path, tokens: dict[str, SoftToken]) -> None:
    """The same line with device keys made inside a PKCS#11 token: never extractable, and the DAC
    certifies them."""
    home, out, token = tmp_path / "home", tmp_path / "line", tokens["line"]
    init_home(home, org="Acme Matter", passphrase=PASSPHRASE.encode())
    with open_authority(Home.load(home), PASSPHRASE.encode()) as auth:
        create_paa(auth, None, "test")  # a PAA naming no vendor serves every vendor's PAIs
        create_pai(auth, MatterIds(0xFFF2, 0x0001), "test")
    prefix = f"M{uuid.uuid4().hex[:6].upper()}"
    se_args = ("--secure-element", "pkcs11", "--se-module", token.module, "--se-token", token.label)
    se_args += ("--se-pin-file", str(token.pin_file))
    ok(
        devid(
            "factory", "run", "--count", "2", "--home", home, "--out", out, "--serial-prefix", prefix,
            "--profile", "matter-dac", "--vid", "fff2", "--pid", "1", *se_args,
        )
    )  # fmt: skip
    session = open_token(token.module, token.label, token.pin)
    for n in (1, 2):
        serial = f"{prefix}{n:08d}"
        device = out / serial
        assert {p.name for p in device.iterdir()} == {"device.json", "dac.pem", "chain.pem"}  # no key on disk
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=serial)
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
        dac = x509.load_pem_x509_certificate((device / "dac.pem").read_bytes())
        se = Pkcs11SecureElement.open(token.module, token.label, token.pin, serial)
        assert se.public_key() == dac.public_key()
        assert se.read_slot("dac") == dac.public_bytes(serialization.Encoding.DER)
        pai_pem, paa_pem = split_pem((device / "chain.pem").read_text())
        result = verify_attestation(
            dac,
            load_certificate(pai_pem.encode(), Certificate.PAI),
            [load_certificate(paa_pem.encode(), Certificate.PAA)],
            datetime.now(UTC),
        )
        assert (result.vendor_id, result.product_id) == (0xFFF2, 0x0001)


def test_matter_certificates_are_pkilint_clean(tmp_path: Path) -> None:
    """PAA, PAI and a DAC issued through the authority's one signing path, linted by pkilint's
    RFC 5280 validators (as test_pkilint does every other profile) and by the Matter rules."""
    from test_pkilint import findings

    init_home(tmp_path / "home", org="Acme Matter", passphrase=PASSPHRASE.encode())
    with open_authority(Home.load(tmp_path / "home"), PASSPHRASE.encode()) as auth:
        paa = create_paa(auth, 0xFFF1, "test").certificate
        pai = create_pai(auth, MatterIds(0xFFF1, 0x8000), "test").certificate
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        request = IssueRequest(
            ProfileName.MATTER_DAC, key, new_device=NewDevice("M1"), matter=MatterIds(0xFFF1, 0x8000)
        )
        dac = auth.issue(request).certificate
        # The authority refuses a DAC without its product, and VID/PID on any other profile.
        for bad, code in (
            (IssueRequest(ProfileName.MATTER_DAC, _key(), new_device=NewDevice("M2")), "matter-ids-required"),
            (
                IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("M3"), matter=MatterIds(1, 2)),
                "matter-ids-unexpected",
            ),
            (
                IssueRequest(
                    ProfileName.MATTER_DAC, _key(), new_device=NewDevice("M4"), matter=MatterIds(1, 2)
                ),
                "matter-no-pai",
            ),
        ):
            with pytest.raises(DevidError) as caught:
                auth.issue(bad)
            assert caught.value.code == code
        # A revoked DAC is listed in its PAI's CRL (signed by the PAI, which has cRLSign).
        revoke(
            auth, RevokeRequest(Selector.SERIAL, serial_hex(dac.serial_number), Reason.KEY_COMPROMISE), "t"
        )
        crl_der = devid_crl.build(auth, "matter-pai-FFF1-8000").der
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.is_signature_valid(pai.public_key())  # type: ignore[arg-type]
    assert [r.serial_number for r in crl] == [dac.serial_number]
    assert findings("crl", crl_der) == []
    for cert in (paa, pai, dac):
        assert findings("cert", cert.public_bytes(serialization.Encoding.DER)) == []
    assert dac.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert [e.oid._name for e in dac.extensions] == [
        "keyUsage",
        "basicConstraints",
        "authorityKeyIdentifier",
        "subjectKeyIdentifier",
    ]
    result = verify_attestation(dac, pai, [paa], datetime.now(UTC), reported_vid=0xFFF1, reported_pid=0x8000)
    assert result.dac_serial == dac.serial_number


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()
