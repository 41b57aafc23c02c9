"""Token-held keys against a real SoftHSM2: generation, non-extractability, signing through
`cryptography`'s builders (checked by cryptography and by `openssl verify`), secure-element slots,
and the errors a person sees for a wrong PIN, a missing token or a missing module."""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import threading
import uuid
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken

from devid.errors import ConflictError, KeyAccessError, KeyExportRefused, NotFoundError, PolicyError
from devid.keys.base import P256_EC_PARAMS
from devid.keys.pkcs11 import (
    Pkcs11KeyStore,
    Pkcs11PrivateKey,
    Pkcs11SecureElement,
    open_token,
    pkcs11_uri,
)

SIGN = ec.ECDSA(hashes.SHA256())


@pytest.fixture
def ca_token(tokens: dict[str, SoftToken]) -> SoftToken:
    return tokens["ca"]


@pytest.fixture
def se_token(tokens: dict[str, SoftToken]) -> SoftToken:
    return tokens["se"]


@pytest.fixture
def store(ca_token: SoftToken) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(ca_token.module, ca_token.label, ca_token.pin)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def raw_private(token: SoftToken, label: str) -> pkcs11.PrivateKey:
    session = open_token(token.module, token.label, token.pin)
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
    assert isinstance(key, pkcs11.PrivateKey)
    return key


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_certificate(key: ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def leaf_certificate(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject_key: ec.EllipticCurvePublicKey, cn: str
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(ca.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def openssl_verify(tmp_path: Path, ca: x509.Certificate, cert: x509.Certificate) -> None:
    ca_pem = tmp_path / "ca.pem"
    cert_pem = tmp_path / "cert.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_pem), str(cert_pem)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


# --- key store ------------------------------------------------------------------------------------


def test_generate_then_load_by_label(ca_token: SoftToken, store: Pkcs11KeyStore) -> None:
    label = unique("root")
    key = store.generate(label)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.key_size == 256
    assert store.backend == "pkcs11"

    loaded = Pkcs11KeyStore(ca_token.module, ca_token.label, ca_token.pin).load(label)
    assert loaded.public_key() == key.public_key()

    # The pair really is on the token with the attributes that keep it there.
    private = raw_private(ca_token, label)
    assert private[Attribute.TOKEN] is True
    assert private[Attribute.PRIVATE] is True
    assert private[Attribute.ID] == label.encode()
    assert bytes(private[Attribute.EC_PARAMS]) == P256_EC_PARAMS


def test_load_finds_a_pair_made_outside_devid(ca_token: SoftToken, store: Pkcs11KeyStore) -> None:
    """Not only cached handles: a key generated by another tool is found by scanning the token."""
    label = unique("external")
    session = open_token(ca_token.module, ca_token.label, ca_token.pin)
    public, _ = session.generate_keypair(
        pkcs11.KeyType.EC,
        store=True,
        label=label,
        public_template={Attribute.EC_PARAMS: P256_EC_PARAMS},
        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )
    key = store.load(label)
    expected = bytes(public[Attribute.EC_POINT])[2:]
    assert (
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == expected
    )
    key.public_key().verify(key.sign(b"hello", SIGN), b"hello", SIGN)


def test_load_missing_label_is_not_found(store: Pkcs11KeyStore) -> None:
    with pytest.raises(NotFoundError) as err:
        store.load("no-such-key")
    assert err.value.code == "key-missing"
    assert "no-such-key" in err.value.message


def test_duplicate_label_is_refused(ca_token: SoftToken, store: Pkcs11KeyStore) -> None:
    label = unique("dup")
    store.generate(label)
    with pytest.raises(ConflictError) as err:
        Pkcs11KeyStore(ca_token.module, ca_token.label, ca_token.pin).generate(label)
    assert err.value.code == "key-exists"
    assert (
        len(
            list(
                open_token(ca_token.module, ca_token.label, ca_token.pin).get_objects(
                    {Attribute.LABEL: label, Attribute.CLASS: ObjectClass.PRIVATE_KEY}
                )
            )
        )
        == 1
    )


def test_private_key_never_leaves_the_token(ca_token: SoftToken, store: Pkcs11KeyStore) -> None:
    label = unique("secret")
    key = store.generate(label)
    private = raw_private(ca_token, label)
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.ALWAYS_SENSITIVE] is True
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        private[Attribute.VALUE]

    with pytest.raises(KeyExportRefused) as err:
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    assert err.value.code == "key-export-refused"
    with pytest.raises(KeyExportRefused):
        key.private_numbers()
    with pytest.raises(KeyExportRefused):
        key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key


# --- signing --------------------------------------------------------------------------------------


def test_sign_verifies_with_public_key(store: Pkcs11KeyStore) -> None:
    key = store.generate(unique("signer"))
    signature = key.sign(b"attested data", SIGN)
    utils.decode_dss_signature(signature)  # DER, not raw r||s
    key.public_key().verify(signature, b"attested data", SIGN)
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, b"other data", SIGN)


def test_sign_prehashed_digest(store: Pkcs11KeyStore) -> None:
    key = store.generate(unique("prehashed"))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"big payload")
    signature = key.sign(digest.finalize(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    key.public_key().verify(signature, b"big payload", SIGN)
    with pytest.raises(ValueError):
        key.sign(b"too short", ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_concurrent_signing_shares_one_session(store: Pkcs11KeyStore) -> None:
    key = store.generate(unique("threads"))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(50):
                data = f"msg {i}".encode()
                key.public_key().verify(key.sign(data, SIGN), data, SIGN)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_ca_signs_certificates_and_crl_through_cryptography_builders(
    tmp_path: Path, store: Pkcs11KeyStore
) -> None:
    ca_key = store.generate(unique("root-ca"))
    ca = ca_certificate(ca_key, "devid test root")
    ca.verify_directly_issued_by(ca)
    openssl_verify(tmp_path, ca, ca)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = leaf_certificate(ca, ca_key, leaf_key.public_key(), "device-0001")
    leaf.verify_directly_issued_by(ca)
    openssl_verify(tmp_path, ca, leaf)

    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(now).build()
        )
        .sign(ca_key, hashes.SHA256())
    )
    assert crl.is_signature_valid(ca_key.public_key())


# --- simulated secure element ---------------------------------------------------------------------


def new_se(token: SoftToken) -> Pkcs11SecureElement:
    return Pkcs11SecureElement.create(token.module, token.label, token.pin, unique("SN"))


def test_se_csr_is_signed_inside_the_token(se_token: SoftToken) -> None:
    se = new_se(se_token)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name(se.device_serial))
    csr = se.sign_csr(builder)
    assert csr.is_signature_valid
    assert csr.public_key() == se.public_key()


def test_se_sign_and_reopen(se_token: SoftToken) -> None:
    se = new_se(se_token)
    signature = se.sign(b"challenge")
    se.public_key().verify(signature, b"challenge", SIGN)
    again = Pkcs11SecureElement.open(se_token.module, se_token.label, se_token.pin, se.device_serial)
    assert again.public_key() == se.public_key()
    again.public_key().verify(again.sign(b"x"), b"x", SIGN)


def test_se_open_missing_and_create_twice(se_token: SoftToken) -> None:
    with pytest.raises(NotFoundError) as missing:
        Pkcs11SecureElement.open(se_token.module, se_token.label, se_token.pin, "SN-absent")
    assert missing.value.code == "se-missing"
    se = new_se(se_token)
    with pytest.raises(ConflictError) as dup:
        Pkcs11SecureElement.create(se_token.module, se_token.label, se_token.pin, se.device_serial)
    assert dup.value.code == "se-exists"


def test_se_refuses_export(se_token: SoftToken) -> None:
    se = new_se(se_token)
    with pytest.raises(KeyExportRefused) as err:
        se.export_private_key()
    assert err.value.code == "key-export-refused"


def test_se_slots_round_trip_and_replace(tmp_path: Path, se_token: SoftToken, store: Pkcs11KeyStore) -> None:
    se = new_se(se_token)
    other = new_se(se_token)
    ca_key = store.generate(unique("issuing"))
    ca = ca_certificate(ca_key, "issuing")
    first = leaf_certificate(ca, ca_key, se.public_key(), "first").public_bytes(serialization.Encoding.DER)
    second = leaf_certificate(ca, ca_key, se.public_key(), "second").public_bytes(serialization.Encoding.DER)

    assert se.read_slot("idevid") is None
    se.write_slot("idevid", first)
    assert se.read_slot("idevid") == first
    se.write_slot("idevid", second)
    assert se.read_slot("idevid") == second
    assert other.read_slot("idevid") is None
    assert se.read_slot("ldevid") is None

    reopened = Pkcs11SecureElement.open(se_token.module, se_token.label, se_token.pin, se.device_serial)
    assert reopened.read_slot("idevid") == second
    certs = list(
        open_token(se_token.module, se_token.label, se_token.pin).get_objects(
            {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: f"{se.device_serial}/idevid"}
        )
    )
    assert len(certs) == 1


def test_se_slot_only_takes_certificates(se_token: SoftToken) -> None:
    se = new_se(se_token)
    with pytest.raises(PolicyError) as err:
        se.write_slot("idevid", b"not a certificate")
    assert err.value.code == "bad-certificate"
    assert se.read_slot("idevid") is None


def test_se_reference_names_the_key_without_the_pin(se_token: SoftToken) -> None:
    se = new_se(se_token)
    ref = se.reference()
    assert ref["backend"] == "pkcs11"
    assert ref["module"] == se_token.module
    assert ref["token"] == se_token.label
    assert ref["object"] == se.device_serial
    assert ref["uri"] == f"pkcs11:token={se_token.label};object={se.device_serial};type=private"
    assert ref["uri"] == se.tls_key_uri()
    assert se_token.pin not in repr(ref)


def test_uri_percent_encodes_reserved_characters() -> None:
    assert pkcs11_uri("my token", "SN/01;ä?%") == (
        "pkcs11:token=my%20token;object=SN%2F01%3B%C3%A4%3F%25;type=private"
    )


# --- errors ---------------------------------------------------------------------------------------


def test_wrong_pin_on_a_token_not_yet_logged_in(tokens: dict[str, SoftToken]) -> None:
    token = tokens["fresh"]
    with pytest.raises(KeyAccessError) as err:
        Pkcs11KeyStore(token.module, token.label, "0000")
    assert err.value.code == "wrong-pin"
    Pkcs11KeyStore(token.module, token.label, token.pin)  # the right PIN still works


def test_wrong_pin_on_a_token_already_logged_in(tokens: dict[str, SoftToken]) -> None:
    token = tokens["cached"]
    Pkcs11KeyStore(token.module, token.label, token.pin)
    with pytest.raises(KeyAccessError) as err:
        Pkcs11KeyStore(token.module, token.label, "0000")
    assert err.value.code == "wrong-pin"
    with pytest.raises(KeyAccessError) as se_err:
        Pkcs11SecureElement.open(token.module, token.label, "0000", "SN-any")
    assert se_err.value.code == "wrong-pin"


def test_missing_token_label(ca_token: SoftToken) -> None:
    with pytest.raises(KeyAccessError) as err:
        Pkcs11KeyStore(ca_token.module, "no-such-token", ca_token.pin)
    assert err.value.code == "token-missing"
    assert "no-such-token" in err.value.message


def test_missing_module(tmp_path: Path, ca_token: SoftToken) -> None:
    path = str(tmp_path / "nowhere" / "libpkcs11.so")
    with pytest.raises(KeyAccessError) as err:
        Pkcs11KeyStore(path, ca_token.label, ca_token.pin)
    assert err.value.code == "pkcs11-module"
    assert path in err.value.message


def test_unloadable_module(tmp_path: Path, ca_token: SoftToken) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not a shared object")
    with pytest.raises(KeyAccessError) as err:
        Pkcs11KeyStore(str(bogus), ca_token.label, ca_token.pin)
    assert err.value.code == "pkcs11-module"
    assert str(bogus) in err.value.message


def test_pkcs11_private_key_type_for_builders(store: Pkcs11KeyStore) -> None:
    assert isinstance(store.generate(unique("typed")), Pkcs11PrivateKey)
