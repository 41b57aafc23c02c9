"""TLS client authentication with a device key that stays in a PKCS#11 token (SoftHSM2), through
OpenSSL's pkcs11-provider: devid's agent enrolls and re-enrolls over real mTLS on loopback against
devid's own EST server, and curl does an EST enrollment with the same token key (interop).

The agent runs as the `devid` command (a subprocess): the provider is activated only from the
OPENSSL_CONF a process starts with, which the command arranges by re-executing itself. Those
processes reach the session's SoftHSM store through SOFTHSM2_CONF, inherited from this process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from e2e import devid, devid_env, flat, ok
from est_helpers import EstServer, certs_from_b64_pkcs7
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken

from devid.authority.core import Authority
from devid.config import Home, Pkcs11Settings
from devid.device.agent import LDEVID_FILE, STATE_FILE, DeviceAgent
from devid.errors import ConfigError, KeyAccessError
from devid.factory.secure_elements import SecureElementMaker, SecureElementSpec
from devid.factory.station import LineInfo, Station
from devid.keys import p11tls
from devid.keys.pkcs11 import Pkcs11SecureElement, open_token
from devid.pki.encoding import load_certificates
from devid.store import repo

PASSPHRASE = b"correct horse battery staple"


def _provider_missing() -> str | None:
    try:
        p11tls.provider_module()
    except ConfigError as exc:
        return exc.message
    return None


MISSING = _provider_missing()
needs_provider = pytest.mark.skipif(
    MISSING is not None, reason=f"OpenSSL's pkcs11-provider package is not installed: {MISSING}"
)


@pytest.fixture
def tls_token(tokens: dict[str, SoftToken]) -> SoftToken:
    return tokens["tls"]


@pytest.fixture
def p11_station(auth: Authority, sqlite_home: Home, tls_token: SoftToken, tmp_path: Path) -> Station:
    """A factory line whose secure elements are key pairs in the session's `devid-tls` token."""
    settings = Pkcs11Settings(tls_token.module, tls_token.label, str(tls_token.pin_file))
    spec = SecureElementSpec("pkcs11", settings)
    return Station(auth, SecureElementMaker(spec), tmp_path / "devices", LineInfo("l", "m", "lot"))


def make_device(station: Station, serial: str) -> Path:
    [result] = station.provision([serial])
    assert result.ok, result.error
    return Path(result.directory)


def private_key_object(token: SoftToken, serial: str) -> pkcs11.PrivateKey:
    session = open_token(token.module, token.label, token.pin)
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=serial)
    assert isinstance(key, pkcs11.PrivateKey)
    return key


def assert_stays_in_token(token: SoftToken, serial: str) -> None:
    key = private_key_object(token, serial)
    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.NEVER_EXTRACTABLE] is True
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        key[Attribute.VALUE]


def store_status(auth: Authority, cert: x509.Certificate) -> str:
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, cert.fingerprint(hashes.SHA256()).hex())
    assert row is not None
    return str(row.status)


def spki(cert_or_key: x509.Certificate | object) -> bytes:
    key = cert_or_key.public_key() if isinstance(cert_or_key, x509.Certificate) else cert_or_key
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pin_args(token: SoftToken) -> tuple[str, str]:
    return ("--se-pin-file", str(token.pin_file))


# --- the pieces --------------------------------------------------------------------------------


def test_uri_pem_is_the_provider_wrapper_format() -> None:
    uri = "pkcs11:token=devid-tls;object=SN-1;type=private"
    text = p11tls.uri_pem(uri).decode()
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN PKCS#11 PROVIDER URI-----"
    assert lines[-1] == "-----END PKCS#11 PROVIDER URI-----"
    der = base64.b64decode("".join(lines[1:-1]))
    desc = b"PKCS#11 Provider URI v1.0"
    # SEQUENCE { VisibleString desc, UTF8String uri } (as the provider's uri2pem.py writes it)
    assert (
        der
        == bytes([0x30, 4 + len(desc) + len(uri), 0x1A, len(desc)])
        + desc
        + bytes([0x0C, len(uri)])
        + uri.encode()
    )
    long_uri = "pkcs11:token=t;object=" + "x" * 300 + ";type=private"
    long_der = base64.b64decode("".join(p11tls.uri_pem(long_uri).decode().splitlines()[1:-1]))
    assert long_der.endswith(long_uri.encode()) and long_der[:2] == b"\x30\x82"
    with pytest.raises(ValueError):
        p11tls.uri_pem("/etc/ssl/key.pem")


def test_token_keys_carry_the_label_and_id_the_uri_names(p11_station: Station, tls_token: SoftToken) -> None:
    directory = make_device(p11_station, "P11-ATTRS")
    ref = json.loads((directory / "device.json").read_text())["secure_element"]
    assert ref["uri"] == f"pkcs11:token={tls_token.label};object=P11-ATTRS;type=private"
    key = private_key_object(tls_token, "P11-ATTRS")
    assert key[Attribute.LABEL] == "P11-ATTRS"
    assert bytes(key[Attribute.ID]) == b"P11-ATTRS"
    assert_stays_in_token(tls_token, "P11-ATTRS")


def test_pkcs11_agent_needs_its_pin_file_private_and_the_provider_in_this_process(
    p11_station: Station, tls_token: SoftToken, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = make_device(p11_station, "P11-REFUSE")
    with pytest.raises(ConfigError) as err:
        DeviceAgent.open(directory)
    assert err.value.code == "se-pin-file" and "--se-pin-file" in err.value.message

    shared = tmp_path / "shared.pin"
    shutil.copy(tls_token.pin_file, shared)
    shared.chmod(0o640)
    with pytest.raises(KeyAccessError) as perm:
        DeviceAgent.open(directory, se_pin_file=shared)
    assert perm.value.code == "pin-file-permissions" and "chmod 600" in perm.value.message

    if MISSING is None:
        # This test process imported ssl without the provider: a clear error, not a failed handshake.
        with pytest.raises(ConfigError) as not_loaded:
            DeviceAgent.open(directory, se_pin_file=tls_token.pin_file)
        assert not_loaded.value.code == "se-tls-provider"
        assert f"OPENSSL_CONF={directory.resolve() / p11tls.CONF_FILE}" in not_loaded.value.message
        monkeypatch.setenv("OPENSSL_CONF", str(directory.resolve() / p11tls.CONF_FILE))
        with pytest.raises(ConfigError) as set_too_late:
            DeviceAgent.open(directory, se_pin_file=tls_token.pin_file)
        assert set_too_late.value.code == "se-tls-provider"
        assert "did not activate pkcs11-provider" in set_too_late.value.message
        monkeypatch.delenv("OPENSSL_CONF")

    # Status needs neither the provider nor TLS.
    agent = DeviceAgent.open(directory, se_pin_file=tls_token.pin_file, tls=False)
    assert agent.status()["enrolled"] is False
    assert spki(agent.se.public_key()) == spki(agent.idevid_chain[0])

    # A machine without the provider: the old refusal, with what to install.
    monkeypatch.setenv(p11tls.PROVIDER_ENV, str(tmp_path / "no-such-provider.so"))
    with pytest.raises(ConfigError) as missing:
        DeviceAgent.open(directory, se_pin_file=tls_token.pin_file)
    assert missing.value.code == "se-tls-unsupported"
    assert "pkcs11-provider" in missing.value.message and "apt-get install" in missing.value.message
    result = devid(
        *("agent", "enroll", "--device", directory, "--server", "https://127.0.0.1:9", *pin_args(tls_token)),
        env=devid_env(**{p11tls.PROVIDER_ENV: str(tmp_path / "no-such-provider.so")}),
    )
    assert result.returncode == 2, result.stderr
    assert "[se-tls-unsupported]" in flat(result.stderr)
    assert not (directory / STATE_FILE).exists()


# --- end to end over real TLS ----------------------------------------------------------------------


@needs_provider
def test_pkcs11_device_enrolls_and_reenrolls_over_mtls_with_the_key_in_the_token(
    server: EstServer, auth: Authority, p11_station: Station, tls_token: SoftToken, tmp_path: Path
) -> None:
    directory = make_device(p11_station, "P11-AGENT")
    idevid = load_certificates((directory / "idevid.pem").read_bytes())[0]
    device = ("--device", directory, *pin_args(tls_token))
    env = devid_env(passphrase=None)  # nothing is sealed: a token device needs no passphrase

    out = flat(
        ok(
            devid(
                *("agent", "enroll", *device, "--server", server.url, "--ca-bundle", server.root_pem), env=env
            )
        ).stdout
    )
    assert "enrolled P11-AGENT:" in out, out
    first = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
    first.verify_directly_issued_by(auth.cas["operational"].certificate)
    assert spki(first) == spki(idevid)  # the LDevID certifies the token key
    assert store_status(auth, first) == "valid"

    # What the key reached TLS through: a 0600 configuration naming the PIN file (not the PIN), and
    # a 0600 PEM wrapping the key's URI.
    conf = directory / p11tls.CONF_FILE
    key_pem = directory / p11tls.KEY_FILE
    for f in (conf, key_pem):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    conf_text = conf.read_text()
    assert f"pkcs11-module-token-pin = file:{tls_token.pin_file.resolve()}" in conf_text
    assert "pkcs11-module-quirks = no-deinit no-operation-state" in conf_text
    assert tls_token.pin not in conf_text and tls_token.pin not in key_pem.read_text()
    # The URI in that PEM names exactly the device's key in the token (the provider resolves it).
    pub = subprocess.run(
        ["openssl", "pkey", "-in", str(key_pem), "-pubout"],
        capture_output=True,
        env={**os.environ, "OPENSSL_CONF": str(conf)},
        timeout=60,
        check=True,
    ).stdout
    assert serialization.load_pem_public_key(pub) == idevid.public_key()

    # Renewal time: re-enrollment authenticated by the LDevID, key still in the token.
    state = json.loads((directory / STATE_FILE).read_text())
    state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    (directory / STATE_FILE).write_text(json.dumps(state))
    assert "P11-AGENT: renew" in flat(ok(devid("agent", "run", *device, "--once", env=env)).stdout)
    renewed = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
    assert renewed != first and spki(renewed) == spki(idevid)
    assert store_status(auth, first) == "superseded" and store_status(auth, renewed) == "valid"
    assert "P11-AGENT: idle" in flat(ok(devid("agent", "run", *device, "--once", env=env)).stdout)

    status = json.loads(ok(devid("agent", "status", *device, env=env)).stdout)
    assert status["ldevid_serial"] == format(renewed.serial_number, "x") and status["failures"] == 0
    se = Pkcs11SecureElement.open(tls_token.module, tls_token.label, tls_token.pin, "P11-AGENT")
    assert se.read_slot("ldevid") == renewed.public_bytes(serialization.Encoding.DER)
    assert_stays_in_token(tls_token, "P11-AGENT")


@needs_provider
def test_curl_enrolls_over_mtls_with_the_provider_pem_as_its_key(
    server: EstServer, p11_station: Station, tls_token: SoftToken, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (scripts/test.sh installs it)")
    directory = make_device(p11_station, "P11-CURL")
    # The agent's own preparation (without TLS) writes the configuration and the URI PEM.
    prepared = p11tls.TokenTls(
        directory.resolve(),
        tls_token.module,
        json.loads((directory / "device.json").read_text())["secure_element"]["uri"],
        tls_token.pin_file,
    ).prepare()
    idevid = load_certificates((directory / "idevid.pem").read_bytes())[0]
    chain = tmp_path / "idevid-chain.pem"
    chain.write_bytes((directory / "idevid.pem").read_bytes())
    se = Pkcs11SecureElement.open(tls_token.module, tls_token.label, tls_token.pin, "P11-CURL")
    csr = se.sign_csr(x509.CertificateSigningRequestBuilder().subject_name(idevid.subject))
    body = tmp_path / "csr.b64"
    body.write_bytes(base64.encodebytes(csr.public_bytes(serialization.Encoding.DER)))

    result = subprocess.run(
        [
            *("curl", "-sS", "--fail-with-body", "--cacert", str(server.root_pem)),
            *("--cert", str(chain), "--key", str(prepared.pem_file)),
            *("-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}"),
            server.est("simpleenroll"),
        ],
        capture_output=True,
        env={**os.environ, "OPENSSL_CONF": str(prepared.conf_file)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [cert, *_] = certs_from_b64_pkcs7(result.stdout)
    serial = x509.NameOID.SERIAL_NUMBER
    assert spki(cert) == spki(idevid)  # an LDevID for the token key, identity from the IDevID
    assert cert.subject.get_attributes_for_oid(serial) == idevid.subject.get_attributes_for_oid(serial)
    assert cert.issuer == server.authority.cas["operational"].certificate.subject
    assert_stays_in_token(tls_token, "P11-CURL")

    # Without the provider the same PEM is no key at all: curl fails before any request.
    failed = subprocess.run(
        [
            *("curl", "-sS", "--cacert", str(server.root_pem), "--cert", str(chain)),
            *("--key", str(prepared.pem_file), server.est("cacerts")),
        ],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"},
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0
