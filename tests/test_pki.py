"""Pure PKI behaviour: CSR intake, RFC 4108 hardwareModuleName DER, serial numbers, certificate
profiles and subject text. No store, no keys on disk; checked against `cryptography` and `openssl`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devid.errors import PolicyError
from devid.pki.csr import MAX_CSR_BYTES, check_csr, load_and_check_csr, load_csr
from devid.pki.der import ID_ON_HARDWARE_MODULE_NAME, HardwareModuleName, encode_oid, hardware_module_names
from devid.pki.profiles import (
    CLOCK_SKEW,
    FOREVER,
    OCSP_NOCHECK,
    PROFILES,
    ProfileName,
    Template,
    ca_subject,
    device_subject,
    device_subject_text,
    self_signed_template,
    server_names,
    subject_text,
)
from devid.pki.serials import SERIAL_BITS, parse_serial, random_serial, serial_hex

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
UTC = dt.UTC
NOW = dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
CSR_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"


# --- helpers: an independent minimal DER writer, CSR makers, a test CA ---------------------------


def der_tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def der_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER written by `cryptography` (not by devid): cut out of an encoded Name."""
    name = x509.Name([x509.NameAttribute(x509.ObjectIdentifier(dotted), "x")]).public_bytes()
    # Name = SEQ { SET { SEQ { OID, UTF8String "x" } } }, all short-form lengths: three 2-octet
    # headers before the OID, the 3-octet UTF8String after it.
    assert len(name) < 128 and name[6] == 0x06 and name[-3:] == b"\x0c\x01x"
    return name[6:-3]


def make_csr(
    key: object,
    *,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(CSR_NAME)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    if algorithm is None and isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        algorithm = hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(DER)


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(PEM)


def splice_signature(
    info_from: x509.CertificateSigningRequest, sig_from: x509.CertificateSigningRequest
) -> bytes:
    """A well-formed CSR: the request info of one CSR with the (valid DER) signature of another."""
    alg = der_tlv(0x30, der_oid(ECDSA_SHA256))
    return der_tlv(0x30, info_from.tbs_certrequest_bytes + alg + der_tlv(0x03, b"\x00" + sig_from.signature))


def key_usage(*, signature: bool = False, cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    not_after: dt.datetime, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate built with plain `cryptography`, independent of devid's templates."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuing CA")])
    cert = (
        x509.CertificateBuilder()
        .issuer_name(name)
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def refused(data: bytes) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_and_check_csr(data)
    return info.value


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def good_csr(p256: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return make_csr(p256)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_ca(FOREVER)


# --- CSR intake: refusals ---------------------------------------------------------------------------


def test_rsa_csr_is_refused_as_rsa() -> None:
    csr = make_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for call in (lambda: load_and_check_csr(csr_der(csr)), lambda: check_csr(load_csr(csr_pem(csr)))):
        with pytest.raises(PolicyError) as info:
            call()
        assert info.value.code == "key-type"
        assert "RSA-2048" in info.value.message
        assert "P-256" in info.value.message


def test_p384_csr_is_refused_naming_the_curve() -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA384())
    err = refused(csr_der(csr))
    assert err.code == "key-curve"
    assert "secp384r1" in err.message
    assert str(err) == err.message


def test_ed25519_csr_is_refused_as_key_type() -> None:
    csr = make_csr(ed25519.Ed25519PrivateKey.generate())
    err = refused(csr_pem(csr))
    assert err.code == "key-type"
    assert "Ed25519" in err.message


def test_csr_with_flipped_signature_byte_is_refused(good_csr: x509.CertificateSigningRequest) -> None:
    der = csr_der(good_csr)
    sig_len = len(good_csr.signature)
    assert der.endswith(good_csr.signature)
    for pos in range(len(der) - sig_len, len(der)):
        broken = bytearray(der)
        broken[pos] ^= 0x01
        err = refused(bytes(broken))
        assert err.code in {"csr-signature", "csr-malformed"}, (pos, err.code)
    # The last byte is inside the ECDSA s INTEGER: still valid DER, a signature that does not verify.
    broken = bytearray(der)
    broken[-1] ^= 0x01
    err = refused(bytes(broken))
    assert err.code == "csr-signature"
    assert "signature" in err.message


def test_csr_with_spliced_signature_of_another_key_is_refused(
    good_csr: x509.CertificateSigningRequest,
) -> None:
    other = make_csr(ec.generate_private_key(ec.SECP256R1()))
    spliced = splice_signature(good_csr, other)
    # The splice is a well-formed CSR: it parses, and only its signature is wrong.
    parsed = load_csr(spliced)
    assert parsed.tbs_certrequest_bytes == good_csr.tbs_certrequest_bytes
    assert parsed.signature == other.signature
    err = refused(spliced)
    assert err.code == "csr-signature"
    assert "signature" in err.message
    # The splice helper itself is sound: the CSR with its own signature re-assembled is accepted.
    load_and_check_csr(splice_signature(good_csr, good_csr))


@pytest.mark.parametrize("size", [7, 100, 2000])
def test_random_bytes_are_malformed(size: int) -> None:
    err = refused(random.Random(size).randbytes(size))
    assert err.code == "csr-malformed"
    assert "CSR" in err.message


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_are_refused_with_a_policy_error(data: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        load_and_check_csr(data)
    assert info.value.code in {"csr-empty", "csr-malformed", "pem-junk", "pem-base64", "pem-empty"}


def test_der_csr_with_trailing_bytes_is_malformed(good_csr: x509.CertificateSigningRequest) -> None:
    assert refused(csr_der(good_csr) + b"\x00").code == "csr-malformed"


def test_pem_with_trailing_junk_is_refused(good_csr: x509.CertificateSigningRequest) -> None:
    err = refused(csr_pem(good_csr) + b"this is not part of the request\n")
    assert err.code == "pem-junk"
    assert "after" in err.message


def test_pem_with_junk_before_begin_is_refused_as_pem_junk(good_csr: x509.CertificateSigningRequest) -> None:
    err = refused(b"Subject: hello\n" + csr_pem(good_csr))
    assert err.code == "pem-junk"
    assert "PEM" in err.message


def test_pem_with_two_requests_or_wrong_label_is_refused(good_csr: x509.CertificateSigningRequest) -> None:
    err = refused(csr_pem(good_csr) * 2)
    assert err.code == "csr-malformed"
    assert "found: CERTIFICATE REQUEST, CERTIFICATE REQUEST" in err.message
    err = refused(csr_pem(good_csr).replace(b"CERTIFICATE REQUEST", b"CERTIFICATE"))
    assert err.code == "csr-malformed"
    assert "found: CERTIFICATE" in err.message


def test_oversize_csr_is_refused_before_parsing(p256: ec.EllipticCurvePrivateKey) -> None:
    names = [x509.DNSName(f"host-{i:05d}.devices.example.com") for i in range(700)]
    big = make_csr(p256, extensions=((x509.SubjectAlternativeName(names), False),))
    data = csr_der(big)
    assert len(data) > MAX_CSR_BYTES == 16 * 1024
    err = refused(data)
    assert err.code == "csr-too-large"
    assert str(len(data)) in err.message and "16384" in err.message
    # The limit is on the input size, whatever it holds.
    assert refused(b"\x00" * (17 * 1024)).code == "csr-too-large"
    assert refused(b"\x30" * (MAX_CSR_BYTES + 1)).code == "csr-too-large"
    assert refused(b"\x30" * MAX_CSR_BYTES).code == "csr-malformed"


def test_csr_asking_for_ca_basic_constraints_is_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256, extensions=((x509.BasicConstraints(ca=True, path_length=None), True),))
    err = refused(csr_der(csr))
    assert err.code == "csr-ca-request"
    assert "cA=true" in err.message


@pytest.mark.parametrize(
    "usage",
    [key_usage(signature=True, cert_sign=True), key_usage(crl_sign=True)],
    ids=["keyCertSign", "cRLSign"],
)
def test_csr_asking_for_certificate_signing_key_usage_is_refused(
    p256: ec.EllipticCurvePrivateKey, usage: x509.KeyUsage
) -> None:
    err = refused(csr_der(make_csr(p256, extensions=((usage, True),))))
    assert err.code == "csr-ca-request"
    assert "keyCertSign" in err.message


def test_csr_with_duplicate_requested_extension_is_malformed(p256: ec.EllipticCurvePrivateKey) -> None:
    bc = der_tlv(0x30, der_oid("2.5.29.19") + der_tlv(0x04, b"\x30\x00"))
    attr = der_tlv(0x30, der_oid(EXTENSION_REQUEST) + der_tlv(0x31, der_tlv(0x30, bc + bc)))
    spki = p256.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    info = der_tlv(0x30, b"\x02\x01\x00" + CSR_NAME.public_bytes() + spki + der_tlv(0xA0, attr))
    sig = p256.sign(info, ec.ECDSA(hashes.SHA256()))
    data = der_tlv(0x30, info + der_tlv(0x30, der_oid(ECDSA_SHA256)) + der_tlv(0x03, b"\x00" + sig))
    err = refused(data)
    assert err.code == "csr-malformed"
    assert "extension" in err.message


@pytest.mark.parametrize("data", [b"", b"   \r\n\t "], ids=["empty", "whitespace"])
def test_empty_csr_is_refused(data: bytes) -> None:
    assert refused(data).code == "csr-empty"


# --- CSR intake: what is accepted -------------------------------------------------------------------


def _accepted(data: bytes, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    csr, public = load_and_check_csr(data)
    assert isinstance(public.curve, ec.SECP256R1)
    assert public.public_numbers() == key.public_key().public_numbers()
    return csr


def test_accepts_pem_der_crlf_and_new_label(
    p256: ec.EllipticCurvePrivateKey, good_csr: x509.CertificateSigningRequest
) -> None:
    pem = csr_pem(good_csr)
    variants = {
        "der": csr_der(good_csr),
        "pem": pem,
        "crlf": pem.replace(b"\n", b"\r\n"),
        "new-label": pem.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"),
        "surrounding-whitespace": b"\n  " + pem + b"\n\n",
    }
    for name, data in variants.items():
        csr = _accepted(data, p256)
        assert csr.subject == CSR_NAME, name


def test_accepts_harmless_requested_extensions(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(
        p256,
        extensions=(
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (key_usage(signature=True), True),
            (x509.SubjectAlternativeName([x509.DNSName("device.example")]), False),
        ),
    )
    _accepted(csr_der(csr), p256)


# --- hardwareModuleName (RFC 4108) ------------------------------------------------------------------

BIG_ARC = st.integers(min_value=0, max_value=2**64)


@st.composite
def oids(draw: st.DrawFn) -> str:
    first = draw(st.integers(min_value=0, max_value=2))
    second = draw(st.integers(min_value=0, max_value=39) if first < 2 else BIG_ARC)
    rest = draw(st.lists(BIG_ARC, max_size=5))
    return ".".join(str(a) for a in (first, second, *rest))


@settings(max_examples=300, deadline=None)
@given(oid=oids(), serial=st.binary(max_size=300))
def test_hardware_module_name_round_trips(oid: str, serial: bytes) -> None:
    name = HardwareModuleName(oid, serial).to_other_name()
    assert name.type_id == ID_ON_HARDWARE_MODULE_NAME
    # The OID is encoded exactly as `cryptography` encodes it, the serial is an OCTET STRING.
    assert name.value == der_tlv(0x30, der_oid(oid) + der_tlv(0x04, serial))
    assert encode_oid(oid) == der_oid(oid)
    assert HardwareModuleName.from_other_name(name) == HardwareModuleName(oid, serial)


def test_hardware_module_name_in_a_certificate(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    ca_cert, ca_key = ca
    hmn = HardwareModuleName("1.3.6.1.4.1.99999.1", b"SN-0001")
    tpl = Template.for_issuer(PROFILES[ProfileName.IDEVID], ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = tpl.builder(
        device_subject("Org", "SN-0001"), key.public_key(), 5, NOW, [hmn.to_other_name()]
    ).sign(ca_key, hashes.SHA256())
    assert hardware_module_names(x509.load_der_x509_certificate(cert.public_bytes(DER))) == [hmn]
    assert hardware_module_names(ca_cert) == []


def test_hardware_module_name_der_matches_openssl(tmp_path: Path) -> None:
    oid = "1.3.6.1.4.1.99999.7.18446744073709551616"
    serial = bytes(range(200))  # > 127 octets: long-form lengths for the OCTET STRING and the SEQUENCE
    value = HardwareModuleName(oid, serial).to_other_name().value
    path = tmp_path / "hmn.der"
    path.write_bytes(value)
    out = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seq, obj, octets = (" ".join(line.split()) for line in out.strip().splitlines())
    assert seq == f"0:d=0 hl=3 l= {len(value) - 3} cons: SEQUENCE"
    assert obj.startswith("3:d=1 hl=2 l= 19 prim: OBJECT") and obj.endswith(f":{oid}")
    assert octets.startswith("24:d=1 hl=3 l= 200 prim: OCTET STRING")
    assert octets.endswith("[HEX DUMP]:" + serial.hex().upper())


_GOOD_HMN = der_tlv(0x30, der_oid("1.3.6.1.4.1.1") + der_tlv(0x04, b"abc"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x31" + _GOOD_HMN[1:], id="outer-not-sequence"),
        pytest.param(_GOOD_HMN + b"\x00", id="trailing-after-sequence"),
        pytest.param(_GOOD_HMN[:-1], id="truncated"),
        pytest.param(
            der_tlv(0x30, der_oid("1.2.3") + der_tlv(0x04, b"a") + b"\x05\x00"), id="trailing-inside"
        ),
        pytest.param(der_tlv(0x30, der_oid("1.2.3")), id="no-serial"),
        pytest.param(der_tlv(0x30, der_tlv(0x04, b"a") + der_oid("1.2.3")), id="swapped"),
        pytest.param(der_tlv(0x30, b"\x06\x00" + der_tlv(0x04, b"a")), id="empty-oid"),
        pytest.param(der_tlv(0x30, b"\x06\x02\x2a\x86" + der_tlv(0x04, b"a")), id="oid-cut-mid-arc"),
        pytest.param(der_tlv(0x30, b"\x06\x03\x2a\x80\x03" + der_tlv(0x04, b"a")), id="oid-arc-leading-0x80"),
        pytest.param(b"\x30\x80" + _GOOD_HMN[2:] + b"\x00\x00", id="indefinite-length"),
        pytest.param(b"\x30\x81" + _GOOD_HMN[1:], id="non-minimal-length"),
        pytest.param(b"\x30\x85\x00\x00\x00\x00\x0c" + _GOOD_HMN[2:], id="length-of-five-octets"),
        pytest.param(b"\x30\x84\xff\xff\xff\xff" + _GOOD_HMN[2:], id="length-past-end"),
    ],
)
def test_malformed_hardware_module_name_is_refused(value: bytes) -> None:
    with pytest.raises(PolicyError) as info:
        HardwareModuleName.from_other_name(x509.OtherName(ID_ON_HARDWARE_MODULE_NAME, value))
    assert info.value.code == "der-malformed"


def test_other_name_of_another_type_is_refused() -> None:
    with pytest.raises(PolicyError) as info:
        HardwareModuleName.from_other_name(x509.OtherName(x509.ObjectIdentifier("1.2.3.4"), _GOOD_HMN))
    assert info.value.code == "der-malformed"
    assert "1.2.3.4" in info.value.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    oid=oids(),
    serial=st.binary(max_size=200),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10**6), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
)
def test_mangled_hardware_module_name_is_refused_or_canonical(
    oid: str, serial: bytes, edits: list[tuple[str, int, int]]
) -> None:
    """Whatever bytes arrive, decoding either refuses with der-malformed or yields a value whose
    encoding is exactly those bytes: DER has one encoding per value, so nothing else may parse."""
    data = bytearray(HardwareModuleName(oid, serial).to_other_name().value)
    for op, where, byte in edits:
        pos = where % (len(data) + 1)
        if op == "insert":
            data.insert(pos, byte)
        elif data and op == "delete":
            del data[pos % len(data)]
        elif data:
            data[pos % len(data)] ^= byte or 1
    other = x509.OtherName(ID_ON_HARDWARE_MODULE_NAME, bytes(data))
    try:
        decoded = HardwareModuleName.from_other_name(other)
    except PolicyError as exc:
        assert exc.code == "der-malformed"
        return
    assert decoded.to_other_name().value == bytes(data)


# --- serial numbers ---------------------------------------------------------------------------------


def _der_integer_octets(value: int) -> int:
    return value.bit_length() // 8 + 1  # a positive INTEGER needs a 0 bit on top


def test_random_serials_are_positive_and_fit_twenty_octets() -> None:
    serials = [random_serial() for _ in range(3000)]
    assert all(0 < s < 2**159 for s in serials)
    assert all(_der_integer_octets(s) <= 20 for s in serials)
    assert len(set(serials)) == len(serials)
    # 159 bits really are random: the top bit shows up (fails with probability 2**-3000 otherwise).
    assert max(s.bit_length() for s in serials) == SERIAL_BITS == 159
    # and a certificate carries the largest of them as a DER INTEGER of at most 20 octets.
    ca_cert, ca_key = make_ca(FOREVER)
    key = ec.generate_private_key(ec.SECP256R1())
    tpl = Template.for_issuer(PROFILES[ProfileName.LDEVID], ca_cert)
    tbs = (
        tpl.builder(device_subject("Org", "D"), key.public_key(), max(serials), NOW)
        .sign(ca_key, hashes.SHA256())
        .tbs_certificate_bytes
    )
    # TBSCertificate: SEQUENCE (long-form length, 4 octets), [0] version (5 octets), then the INTEGER.
    assert tbs[0] == 0x30 and tbs[1] == 0x82 and tbs[4:9] == b"\xa0\x03\x02\x01\x02" and tbs[9] == 0x02
    assert tbs[10] <= 20
    assert int.from_bytes(tbs[11 : 11 + tbs[10]], "big") == max(serials)


def test_serial_hex_and_parse_serial_round_trip() -> None:
    for _ in range(200):
        s = random_serial()
        assert parse_serial(serial_hex(s)) == s
        assert serial_hex(s) == serial_hex(s).lower() and not serial_hex(s).startswith("0")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1a2b", 0x1A2B),
        ("0x1A2B", 0x1A2B),
        ("0X1a2b", 0x1A2B),
        ("1a:2b", 0x1A2B),
        ("01:a2:b3:c4", 0x01A2B3C4),
        ("  0x01:ff  ", 0x01FF),
    ],
)
def test_parse_serial_accepts_hex_with_prefix_and_colons(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "0x", ":", "xyz", "12g4", "0", "00:00", "-5", "+5", "0x-5", "0x0x5", "1_0", "1 2", "١٢", "0x1a2b;"],
)
def test_parse_serial_refuses_junk(text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_serial(text)
    assert info.value.code == "serial-syntax"
    assert repr(text) in info.value.message


# --- profiles ---------------------------------------------------------------------------------------


def _openssl_text(cert: x509.Certificate, tmp_path: Path) -> str:
    path = tmp_path / "cert.pem"
    path.write_bytes(cert.public_bytes(PEM))
    return subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-text"], capture_output=True, text=True, check=True
    ).stdout


def test_idevid_template_output(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    tpl = Template.for_issuer(PROFILES[ProfileName.IDEVID], ca_cert)
    hmn = HardwareModuleName("1.3.6.1.4.1.99999.1", b"DEV-1")
    cert = tpl.builder(device_subject("Org", "DEV-1"), key.public_key(), 42, NOW, [hmn.to_other_name()]).sign(
        ca_key, hashes.SHA256()
    )
    cert = x509.load_der_x509_certificate(cert.public_bytes(DER))
    exts = cert.extensions

    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value == key_usage(signature=True)
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=False, path_length=None)
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = exts.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier)
    issuer_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.value.key_identifier == issuer_ski.digest
    assert hardware_module_names(cert) == [hmn]
    assert cert.issuer == ca_cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "DEV-1"

    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == FOREVER == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    # RFC 5280 4.1.2.5: 99991231235959Z as GeneralizedTime (tag 0x18, 15 octets); notBefore in UTCTime.
    assert b"\x18\x0f99991231235959Z" in cert.tbs_certificate_bytes
    assert b"\x17\x0d300601115500Z" in cert.tbs_certificate_bytes
    text = _openssl_text(cert, tmp_path)
    assert "Not After : Dec 31 23:59:59 9999 GMT" in text
    cert.verify_directly_issued_by(ca_cert)


@pytest.mark.parametrize("name", [p for p in ProfileName if p != ProfileName.ROOT_CA])
def test_leaf_never_outlives_its_issuer(name: ProfileName) -> None:
    short_end = NOW + dt.timedelta(days=10)
    short_ca, short_key = make_ca(short_end)
    key = ec.generate_private_key(ec.SECP256R1())
    prof = PROFILES[name]
    # A server certificate without a name is refused by the pre-issuance lint.
    alt = [x509.DNSName("d1.example")] if name is ProfileName.SERVER else []
    cert = (
        Template.for_issuer(prof, short_ca)
        .builder(device_subject("Org", "D1"), key.public_key(), 7, NOW, alt)
        .sign(short_key, hashes.SHA256())
    )
    assert cert.not_valid_after_utc <= short_ca.not_valid_after_utc
    if prof.validity is None or prof.validity > dt.timedelta(days=10):
        assert cert.not_valid_after_utc == short_end
    else:
        assert cert.not_valid_after_utc == NOW + prof.validity


def test_ldevid_lifetime_under_a_long_lived_issuer(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    tpl = Template.for_issuer(PROFILES[ProfileName.LDEVID], ca_cert)
    cert = tpl.builder(device_subject("Org", "D1"), key.public_key(), 7, NOW).sign(ca_key, hashes.SHA256())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    # A profile's lifetime can be changed per deployment without touching the template cache key.
    tpl30 = Template.for_issuer(PROFILES[ProfileName.LDEVID].with_validity(dt.timedelta(days=30)), ca_cert)
    cert = tpl30.builder(device_subject("Org", "D1"), key.public_key(), 8, NOW).sign(ca_key, hashes.SHA256())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=30)


def _reference_builder(
    tpl: Template,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    serial: int,
    alt: list[x509.GeneralName],
) -> x509.CertificateBuilder:
    """What the template should be equivalent to: plain extension objects, added one by one."""
    p = tpl.profile
    b = (
        x509.CertificateBuilder()
        .issuer_name(tpl.issuer_name)
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(NOW - CLOCK_SKEW)
        .not_valid_after(p.not_after(NOW, tpl.issuer_not_after))
        .add_extension(p.key_usage, critical=True)
        .add_extension(
            x509.BasicConstraints(ca=p.is_ca, path_length=p.path_length if p.is_ca else None), True
        )
    )
    if p.extended_key_usage:
        b = b.add_extension(x509.ExtendedKeyUsage(list(p.extended_key_usage)), critical=False)
    if p.ocsp_nocheck:
        b = b.add_extension(x509.OCSPNoCheck(), critical=False)
    if tpl.issuer_key_id is not None:
        b = b.add_extension(tpl.issuer_key_id, critical=False)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if alt:
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return b


@pytest.mark.parametrize("name", list(ProfileName))
def test_pre_encoded_extensions_give_identical_certificates(
    name: ProfileName, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    prof = PROFILES[name]
    if name == ProfileName.ROOT_CA:
        subject = ca_subject("Org", "Org Root CA")
        tpl, signer = self_signed_template(prof, subject), key
    else:
        subject = device_subject("Org", "DEV-9") if prof.for_device else ca_subject("Org", "Some Name")
        tpl, signer = Template.for_issuer(prof, ca_cert), ca_key
    alt: list[x509.GeneralName] = []
    if name == ProfileName.IDEVID:
        alt = [HardwareModuleName("1.2.3.4", b"DEV-9").to_other_name()]
    if name == ProfileName.SERVER:
        alt = server_names(["gw.example.com"], ["192.0.2.1"])
    serial = random_serial()
    ours = tpl.builder(subject, key.public_key(), serial, NOW, alt).sign(signer, hashes.SHA256())
    ref = _reference_builder(tpl, subject, key.public_key(), serial, alt).sign(signer, hashes.SHA256())
    assert ours.tbs_certificate_bytes == ref.tbs_certificate_bytes
    # and the pre-encoded values parse back to the typed extensions, criticality included.
    parsed = x509.load_der_x509_certificate(ours.public_bytes(DER))
    assert [(e.oid, e.critical, e.value) for e in parsed.extensions] == [
        (e.oid, e.critical, e.value) for e in ref.extensions
    ]
    ku = parsed.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign == prof.is_ca and ku.value.crl_sign == prof.is_ca
    if prof.ocsp_nocheck:
        assert parsed.extensions.get_extension_for_oid(OCSP_NOCHECK).value == x509.OCSPNoCheck()


# --- subject text -----------------------------------------------------------------------------------

_SPECIAL = st.sampled_from(
    [
        "#hash",
        " lead",
        "trail ",
        "a,b",
        "a+b",
        'say "hi"',
        "back\\slash",
        "<tag>",
        "semi;colon",
        "nul\0byte",
        "=eq",
        "é-ünïcödé",
        "a  b",
        "-",
        "Acme Devices GmbH",
        "SN-0001:A/B@x.y",
    ]
)
_PLAIN = st.text(alphabet="AZaz09._:@/-", max_size=6)
_VALUE = st.one_of(
    _SPECIAL,
    # plain text with one character that RFC 4514 escapes (or that devid's fast path must not take)
    # at the start, in the middle or at the end
    st.builds(lambda a, c, b: a + c + b, _PLAIN, st.sampled_from(list(',+"\\<>;#= \0\n=é')), _PLAIN),
    st.text(alphabet='AZaz09._:@/- ,+#\\"<>;=', min_size=1, max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20),
)


@settings(max_examples=400, deadline=None)
@given(org=_VALUE, serial=_VALUE, cn=st.one_of(st.none(), _VALUE))
def test_subject_text_is_rfc4514(org: str, serial: str, cn: str | None) -> None:
    name = device_subject(org, serial, cn)
    assert subject_text(name) == name.rfc4514_string()
    assert device_subject_text(org, serial, cn) == subject_text(name)
    ca_name = ca_subject(org, serial)
    assert subject_text(ca_name) == ca_name.rfc4514_string()


def test_device_subject_carries_the_serial_number_attribute() -> None:
    name = device_subject("Acme", "SN-1", "Kitchen sensor")
    assert name.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-1"
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Kitchen sensor"
    assert device_subject_text("Acme", "SN-1", "Kitchen sensor") == "2.5.4.5=SN-1,CN=Kitchen sensor,O=Acme"
    assert device_subject_text("Acme", "SN-1") == "2.5.4.5=SN-1,CN=SN-1,O=Acme"


# --- server names -----------------------------------------------------------------------------------


def test_server_names_normalise_dns_and_parse_ips() -> None:
    names = server_names([" GW.Example.COM ", "xn--bcher-kva.example"], ["192.0.2.1", "2001:db8::1"])
    assert names == [
        x509.DNSName("gw.example.com"),
        x509.DNSName("xn--bcher-kva.example"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]


@pytest.mark.parametrize("ip", ["10.0.0.256", "1.2.3", "example.com", "", "::g"])
def test_server_names_refuse_malformed_ip(ip: str) -> None:
    with pytest.raises(PolicyError) as info:
        server_names([], [ip])
    assert info.value.code == "bad-ip-address"
    assert repr(ip) in info.value.message


@pytest.mark.parametrize(
    "dns",
    [
        "",
        "   ",
        "a b.example",
        "x" * 254,
        "bücher.example",
        "a..b.example",
        "a/b.example",
        "a,b.example",
        "nul\0.example",
    ],
)
def test_server_names_refuse_malformed_dns(dns: str) -> None:
    with pytest.raises(PolicyError) as info:
        server_names([dns], [])
    assert info.value.code == "bad-dns-name"
