"""A devid home whose CA keys live in a SoftHSM2 token: `devid init --key-backend pkcs11`, then
issuance from an openssl CSR checked by `openssl verify`, all through the installed CLI."""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from e2e import devid, devid_many, flat, ok, openssl, openssl_csr, openssl_verify, query, split_pem
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken

from devid.keys.pkcs11 import Pkcs11KeyStore, open_token

CA_NAMES = ("root", "manufacturing", "operational", "manufacturing-ocsp", "operational-ocsp")


def init_args(
    home: Path, token: SoftToken, label: str | None = None, pin_file: Path | None = None
) -> list[str]:
    return [
        "init",
        "--home",
        str(home),
        "--org",
        "HSM Org",
        "--key-backend",
        "pkcs11",
        "--pkcs11-module",
        token.module,
        "--pkcs11-token",
        label or token.label,
        "--pkcs11-pin-file",
        str(pin_file or token.pin_file),
    ]


@dataclass
class HsmHome:
    path: Path
    work: Path
    token: SoftToken
    init: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def hsm_home(tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, SoftToken]) -> HsmHome:
    work = tmp_path_factory.mktemp("hsm")
    token = tokens["home"]
    return HsmHome(work / "H", work, token, devid(*init_args(work / "H", token)))


def test_init_keeps_ca_keys_in_the_token(hsm_home: HsmHome) -> None:
    out = flat(ok(hsm_home.init).stdout)
    assert "pkcs11 keys" in out
    home, token = hsm_home.path, hsm_home.token

    # Nothing secret on disk: no key files, and the configuration names the PIN file, not the PIN.
    keys_dir = home / "keys"
    assert not keys_dir.exists() or list(keys_dir.iterdir()) == []
    for path in home.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    config = tomllib.loads((home / "devid.toml").read_text())
    assert config["key_backend"] == "pkcs11"
    assert config["pkcs11"]["token"] == token.label
    assert Path(config["pkcs11"]["pin_file"]) == token.pin_file.resolve()
    assert token.pin not in (home / "devid.toml").read_text()

    lines = ok(devid("ca", "list", "--json", "--home", home)).stdout.splitlines()
    listed = {r["name"]: r for r in map(json.loads, lines)}
    assert set(listed) == set(CA_NAMES)
    session = open_token(token.module, token.label, token.pin)
    store = Pkcs11KeyStore(token.module, token.label, token.pin)
    for name in CA_NAMES:
        label = config["key_prefix"] + name
        assert listed[name]["key"] == label
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert isinstance(key, pkcs11.PrivateKey)
        assert key[Attribute.TOKEN] is True
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
        [(der,)] = query(home, "SELECT der FROM cas WHERE name = ?", name)
        assert isinstance(der, bytes)
        assert store.load(label).public_key() == x509.load_der_x509_certificate(der).public_key()


def test_issue_with_token_keys(hsm_home: HsmHome) -> None:
    ok(hsm_home.init)
    work, home = hsm_home.work, hsm_home.path
    csr = openssl_csr(work, "device", subject="/CN=whatever")
    cert = work / "device.pem"
    issued, exported = devid_many(
        [
            (
                "cert",
                "issue",
                "--home",
                home,
                "--csr",
                csr,
                "--profile",
                "idevid",
                "--device-serial",
                "HSM-1",
                "--out",
                cert,
            ),
            ("ca", "export", "--pem", "--home", home),
        ]
    )
    ok(issued)
    root, manufacturing, _ = split_pem(ok(exported).stdout)
    (work / "root.pem").write_text(root)
    (work / "manufacturing.pem").write_text(manufacturing)
    openssl_verify(work / "root.pem", cert, untrusted=work / "manufacturing.pem")
    openssl_verify(work / "root.pem", work / "manufacturing.pem")
    assert "serialNumber=HSM-1" in openssl("x509", "-in", cert, "-noout", "-subject", "-nameopt", "RFC2253")
    assert openssl("x509", "-in", cert, "-noout", "-pubkey") == openssl(
        "pkey", "-in", work / "device.key", "-pubout"
    )
    assert query(home, "SELECT serial, state FROM devices") == [("HSM-1", "ACTIVE")]


def test_init_with_wrong_pin_leaves_no_home(tmp_path: Path, tokens: dict[str, SoftToken]) -> None:
    token = tokens["home"]
    pin_file = tmp_path / "wrong.pin"
    pin_file.write_text("0000")
    home = tmp_path / "H"
    result = devid(*init_args(home, token, pin_file=pin_file))
    assert result.returncode == 2, result.stdout + result.stderr
    err = flat(result.stderr)
    assert "wrong PIN" in err and f"'{token.label}'" in err, err
    assert "0000" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not home.exists()


def test_init_with_missing_token_names_it(tmp_path: Path, tokens: dict[str, SoftToken]) -> None:
    home = tmp_path / "H"
    result = devid(*init_args(home, tokens["home"], label="no-such-token"))
    assert result.returncode == 2, result.stdout + result.stderr
    err = flat(result.stderr)
    assert "no PKCS#11 token labelled 'no-such-token'" in err, err
    assert "Traceback" not in result.stderr
    assert not home.exists()


def test_audit_checkpoints_are_signed_in_the_token(hsm_home: HsmHome) -> None:
    """The audit key of an HSM home is made in the token at init, non-extractable like the CA keys."""
    ok(hsm_home.init)
    token = hsm_home.token
    config = tomllib.loads((hsm_home.path / "devid.toml").read_text())
    key = open_token(token.module, token.label, token.pin).get_key(
        object_class=ObjectClass.PRIVATE_KEY, label=config["key_prefix"] + "audit"
    )
    assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False
    verified = flat(ok(devid("audit", "verify", "--home", hsm_home.path)).stdout)
    assert "audit chain intact" in verified and "last anchored event" in verified, verified
    [(checkpoints,)] = query(hsm_home.path, "SELECT count(*) FROM audit_checkpoints")
    assert checkpoints >= 1
