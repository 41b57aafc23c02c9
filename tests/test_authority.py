"""The authority end to end on both stores (SQLite and PostgreSQL): what it issues, what it records,
what it refuses (and that a refusal changes nothing but the audit log), and the audit chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PASSPHRASE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from sqlalchemy import Engine, delete, insert, select, update

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import open_authority
from devid.clock import FixedClock
from devid.config import Home
from devid.errors import ConflictError, KeyAccessError, NotFoundError, PolicyError
from devid.pki.der import HardwareModuleName, hardware_module_names
from devid.pki.profiles import FOREVER, ProfileName
from devid.pki.serials import serial_hex
from devid.store import audit, repo
from devid.store.models import audit_events

DER = serialization.Encoding.DER
UTC = dt.UTC
EVENTS = audit_events
#: `devid init` writes one ca.create event per CA of the hierarchy.
INIT_EVENTS = 5


# --- helpers ----------------------------------------------------------------------------------------


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(
    key: Any,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    name: str = "ignored",
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    return builder.sign(key, algorithm or hashes.SHA256()).public_bytes(DER)


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything a refusal must leave alone: all certificates and devices."""
    with engine.connect() as conn:
        return {
            "certificates": conn.execute(select(repo.certificates).order_by(repo.certificates.c.id)).all(),
            "devices": conn.execute(select(repo.devices).order_by(repo.devices.c.id)).all(),
        }


def events(engine: Engine, after: int = 0) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENTS).where(EVENTS.c.seq > after).order_by(EVENTS.c.seq)).all())


def last_seq(engine: Engine) -> int:
    rows = events(engine)
    return rows[-1].seq if rows else 0


def verify(engine: Engine) -> audit.Verification:
    with engine.connect() as conn:
        return audit.verify(conn)


def cert_row(engine: Engine, serial: int) -> Any:
    with engine.connect() as conn:
        rows = repo.certificates_by_serial(conn, serial_hex(serial))
    assert len(rows) == 1
    return rows[0]


def assert_refused_cleanly(
    authority: Authority, before: dict[str, Any], seq: int, code: str
) -> dict[str, Any]:
    """Nothing changed but exactly one new audit event: a refusal naming `code`; the chain holds."""
    assert snapshot(authority.engine) == before
    new = events(authority.engine, seq)
    assert len(new) == 1, [(e.action, e.outcome, e.detail) for e in new]
    assert new[0].outcome == "refused"
    detail = json.loads(new[0].detail)
    assert detail["code"] == code
    assert verify(authority.engine).ok
    return detail


def idevid(
    authority: Authority, serial: str, key: ec.EllipticCurvePrivateKey | None = None, **kw: Any
) -> Any:
    key = key or p256()
    return authority.issue(
        IssueRequest(ProfileName.IDEVID, key.public_key(), new_device=NewDevice(serial, **kw))
    )


@pytest.fixture
def clocked(home: Home) -> Iterator[tuple[Authority, FixedClock]]:
    clock = FixedClock(dt.datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC))
    auth = open_authority(home, PASSPHRASE, clock=clock)
    yield auth, clock
    auth.engine.dispose()


@pytest.fixture(scope="module")
def bad_csrs() -> dict[str, tuple[bytes, str]]:
    """Each bad CSR with the refusal code the authority must give it."""
    good = p256()
    good_der = csr_for(good)
    broken = bytearray(good_der)
    broken[-1] ^= 0x01  # inside the ECDSA signature's s: valid DER, wrong signature
    names = [x509.DNSName(f"host-{i:05d}.devices.example.com") for i in range(700)]
    return {
        "rsa": (csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "key-type"),
        "p384": (csr_for(ec.generate_private_key(ec.SECP384R1()), algorithm=hashes.SHA384()), "key-curve"),
        "broken-signature": (bytes(broken), "csr-signature"),
        "junk": (b"\x00\x01 this is no certificate request \xff" * 5, "csr-malformed"),
        "ca-true": (
            csr_for(good, ((x509.BasicConstraints(ca=True, path_length=None), True),)),
            "csr-ca-request",
        ),
        "oversize": (csr_for(good, ((x509.SubjectAlternativeName(names), False),)), "csr-too-large"),
        "empty": (b"", "csr-empty"),
    }


# --- issuing ----------------------------------------------------------------------------------------


def test_issue_csr_records_device_and_certificate(authority: Authority) -> None:
    key = p256()
    seq = last_seq(authority.engine)
    issued = authority.issue_csr(
        csr_for(key), ProfileName.IDEVID, new_device=NewDevice("DEV-0001", model="m1", lot="L7", line="A")
    )
    cert = issued.certificate
    assert issued.der == cert.public_bytes(DER)
    assert issued.profile == ProfileName.IDEVID and issued.issuer == "manufacturing"
    assert issued.device_serial == "DEV-0001"
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.serial_number == issued.serial

    row = cert_row(authority.engine, issued.serial)
    assert row.serial == format(issued.serial, "x")
    assert row.issuer_name == "manufacturing"
    assert row.issuer_id == authority.cas["manufacturing"].id
    assert row.device_serial == "DEV-0001"
    assert row.profile == "idevid"
    assert row.status == "valid"
    assert row.der == issued.der
    assert row.fingerprint == hashlib.sha256(issued.der).hexdigest() == issued.fingerprint
    assert row.subject == cert.subject.rfc4514_string()
    assert row.not_after == cert.not_valid_after_utc == FOREVER
    assert abs(row.not_before - cert.not_valid_before_utc) < dt.timedelta(seconds=1)

    with authority.engine.connect() as conn:
        device = repo.device_by_serial(conn, "DEV-0001")
    assert device is not None
    assert (device.model, device.lot, device.line, device.state) == ("m1", "L7", "A", "ACTIVE")
    assert row.device_id == device.id

    new = events(authority.engine, seq)
    assert [(e.action, e.outcome, e.subject) for e in new] == [("certificate.issue", "ok", row.serial)]
    detail = json.loads(new[0].detail)
    assert detail["fingerprint"] == row.fingerprint and detail["device"] == "DEV-0001"

    # Signed by the manufacturing CA, which chains to the root: directly and by RFC 5280 path validation.
    manufacturing = authority.cas["manufacturing"].certificate
    cert.verify_directly_issued_by(manufacturing)
    manufacturing.verify_directly_issued_by(authority.root)
    authority.root.verify_directly_issued_by(authority.root)
    assert authority.chain("manufacturing") == [manufacturing]
    verifier = PolicyBuilder().store(Store([authority.root])).build_client_verifier()
    verified = verifier.verify(cert, authority.chain("manufacturing"))
    assert verified.chain[-1] == authority.root
    assert [HardwareModuleName(authority.hw_type, b"DEV-0001")] == hardware_module_names(cert)


def test_stored_validity_is_the_certificates_validity(home: Home) -> None:
    """The store's notBefore/notAfter are what the certificate says, to the second (X.509 has no
    fractions): a clock with microseconds must not make the record outlive the certificate."""
    clock = FixedClock(dt.datetime(2031, 3, 4, 5, 6, 7, 654321, tzinfo=UTC))
    auth = open_authority(home, PASSPHRASE, clock=clock)
    try:
        idevid(auth, "DEV-1")
        issued = auth.issue(IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="DEV-1"))
        row = cert_row(auth.engine, issued.serial)
        assert row.not_before == issued.certificate.not_valid_before_utc
        assert row.not_after == issued.certificate.not_valid_after_utc
    finally:
        auth.engine.dispose()


def test_bad_csrs_are_refused_and_change_nothing(
    authority: Authority, bad_csrs: dict[str, tuple[bytes, str]]
) -> None:
    idevid(authority, "DEV-EXISTING")
    for kind, (data, code) in bad_csrs.items():
        before, seq = snapshot(authority.engine), last_seq(authority.engine)
        with pytest.raises(PolicyError) as info:
            authority.issue_csr(data, ProfileName.IDEVID, new_device=NewDevice(f"DEV-{kind}"))
        assert info.value.code == code, kind
        detail = assert_refused_cleanly(authority, before, seq, code)
        assert detail["profile"] == "idevid"
        assert events(authority.engine, seq)[0].subject == f"DEV-{kind}"
    assert verify(authority.engine).events == INIT_EVENTS + 1 + len(bad_csrs)


def test_csr_requested_extensions_do_not_reach_an_idevid(authority: Authority) -> None:
    key = p256()
    csr = csr_for(
        key,
        (
            (x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), False),
            (
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]),
                False,
            ),
            (x509.BasicConstraints(ca=False, path_length=None), True),
        ),
        name="evil.example.com",
    )
    cert = authority.issue_csr(csr, ProfileName.IDEVID, new_device=NewDevice("DEV-P")).certificate
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert hardware_module_names(cert) == [HardwareModuleName(authority.hw_type, b"DEV-P")]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "DEV-P"
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "DEV-P"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Test Org"


def test_duplicate_device_serial_is_a_conflict(authority: Authority) -> None:
    first = idevid(authority, "DEV-DUP")
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(ConflictError) as info:
        authority.issue_csr(csr_for(p256()), ProfileName.IDEVID, new_device=NewDevice("DEV-DUP"))
    assert info.value.code == "duplicate-device"
    assert "DEV-DUP" in info.value.message
    assert_refused_cleanly(authority, before, seq, "duplicate-device")
    assert cert_row(authority.engine, first.serial).device_serial == "DEV-DUP"


@pytest.mark.parametrize("where", ["existing", "twice-in-batch"])
def test_batch_with_one_duplicate_adds_nothing(authority: Authority, where: str) -> None:
    idevid(authority, "DEV-OLD")
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    serials = ["DEV-A", "DEV-B", "DEV-OLD" if where == "existing" else "DEV-A", "DEV-C"]
    requests = [
        IssueRequest(ProfileName.IDEVID, p256().public_key(), new_device=NewDevice(s)) for s in serials
    ]
    with pytest.raises(ConflictError) as info:
        authority.issue_many(requests)
    assert info.value.code == "duplicate-device"
    detail = assert_refused_cleanly(authority, before, seq, "duplicate-device")
    assert detail["batch"] == 4
    with authority.engine.connect() as conn:
        assert repo.device_ids(conn, ["DEV-A", "DEV-B", "DEV-C"]) == {}


def test_ldevid_for_unknown_device_is_not_found(authority: Authority) -> None:
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(NotFoundError) as info:
        authority.issue(IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="NO-SUCH-DEVICE"))
    assert info.value.code == "unknown-device"
    assert "NO-SUCH-DEVICE" in info.value.message
    assert_refused_cleanly(authority, before, seq, "unknown-device")


def test_ldevid_for_a_known_device(authority: Authority) -> None:
    id_cert = idevid(authority, "DEV-L")
    key = p256()
    issued = authority.issue_csr(csr_for(key), ProfileName.LDEVID, device_serial="DEV-L")
    cert = issued.certificate
    assert issued.issuer == "operational"
    operational = authority.cas["operational"].certificate
    cert.verify_directly_issued_by(operational)
    operational.verify_directly_issued_by(authority.root)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=365, minutes=5)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    row = cert_row(authority.engine, issued.serial)
    assert (row.profile, row.issuer_name, row.device_serial) == ("ldevid", "operational", "DEV-L")
    assert row.device_id == cert_row(authority.engine, id_cert.serial).device_id
    with authority.engine.connect() as conn:
        assert repo.count(conn, repo.devices) == 1


def test_ldevid_lifetime_follows_the_configuration(home: Home) -> None:
    home.config.ldevid_days = 30
    auth = open_authority(home, PASSPHRASE)
    try:
        idevid(auth, "DEV-30")
        cert = auth.issue(
            IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="DEV-30")
        ).certificate
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30, minutes=5)
    finally:
        auth.engine.dispose()


def test_server_certificate_with_dns_and_ip_names(authority: Authority) -> None:
    issued = authority.issue_csr(
        csr_for(p256()),
        ProfileName.SERVER,
        dns=["GW.Example.com", "mqtt.example.com"],
        ips=["192.0.2.7", "2001:db8::7"],
    )
    cert = issued.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example.com", "mqtt.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::7"),
    ]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert issued.issuer == "operational" and issued.device_serial is None
    row = cert_row(authority.engine, issued.serial)
    assert row.device_id is None and row.profile == "server"
    store = Store([authority.root])
    for name in (x509.DNSName("mqtt.example.com"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))):
        verifier = PolicyBuilder().store(store).build_server_verifier(name)
        assert verifier.verify(cert, authority.chain("operational"))[-1] == authority.root


def test_server_certificate_needs_names(authority: Authority) -> None:
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(PolicyError) as info:
        authority.issue_csr(csr_for(p256()), ProfileName.SERVER)
    assert info.value.code == "server-names-required"
    assert_refused_cleanly(authority, before, seq, "server-names-required")


@pytest.mark.parametrize(
    ("dns", "ips", "code"),
    [
        ([], ["10.0.0.256"], "bad-ip-address"),
        (["ok.example.com"], ["not-an-ip"], "bad-ip-address"),
        (["bücher.example"], [], "bad-dns-name"),
    ],
)
def test_server_certificate_with_malformed_names_is_refused(
    authority: Authority, dns: list[str], ips: list[str], code: str
) -> None:
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(PolicyError) as info:
        authority.issue_csr(csr_for(p256()), ProfileName.SERVER, dns=dns, ips=ips)
    assert info.value.code == code
    assert_refused_cleanly(authority, before, seq, code)


@pytest.mark.parametrize(
    "profile", [ProfileName.ROOT_CA, ProfileName.INTERMEDIATE_CA, ProfileName.OCSP_SIGNER]
)
def test_ca_profiles_are_not_issued_on_request(authority: Authority, profile: ProfileName) -> None:
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(PolicyError) as info:
        authority.issue(IssueRequest(profile, p256().public_key(), common_name="Rogue CA"))
    assert info.value.code == "profile-not-issuable"
    assert profile.value in info.value.message
    assert_refused_cleanly(authority, before, seq, "profile-not-issuable")


def test_issue_request_with_a_non_p256_key_is_refused(authority: Authority) -> None:
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(PolicyError) as info:
        authority.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice("DEV-384")))  # type: ignore[arg-type]
    assert info.value.code == "key-curve"
    assert_refused_cleanly(authority, before, seq, "key-curve")


@pytest.mark.parametrize("serial", ["dev_01", "has space", "x" * 65, "", "-lead", "ünï"])
def test_device_serial_that_cannot_be_a_subject_serial_number_is_refused(
    authority: Authority, serial: str
) -> None:
    """serialNumber (2.5.4.5) is a PrintableString: whatever the authority accepts as a device
    serial must be encodable there, and anything else is refused as a policy error, audited."""
    before, seq = snapshot(authority.engine), last_seq(authority.engine)
    with pytest.raises(PolicyError) as info:
        idevid(authority, serial)
    assert info.value.code == "device-serial-syntax"
    assert_refused_cleanly(authority, before, seq, "device-serial-syntax")


def test_accepted_device_serial_characters_make_valid_certificates(authority: Authority) -> None:
    cert = idevid(authority, "Ab0.9:z-Y").certificate
    attr = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0]
    assert attr.value == "Ab0.9:z-Y"
    assert x509.load_der_x509_certificate(cert.public_bytes(DER)).subject == cert.subject


def test_five_hundred_serials_are_distinct(authority: Authority) -> None:
    serials: list[int] = []
    for batch in range(5):
        requests = [
            IssueRequest(ProfileName.IDEVID, p256().public_key(), new_device=NewDevice(f"D{batch}-{i:03d}"))
            for i in range(100)
        ]
        issued = authority.issue_many(requests)
        assert [i.device_serial for i in issued] == [r.new_device.serial for r in requests if r.new_device]
        serials += [i.serial for i in issued]
    assert len(serials) == 500 == len(set(serials))
    assert all(0 < s < 2**159 for s in serials)
    with authority.engine.connect() as conn:
        assert repo.count(conn, repo.certificates) == 500
        stored = {r.serial for r in conn.execute(select(repo.certificates.c.serial))}
    assert stored == {serial_hex(s) for s in serials}
    result = verify(authority.engine)
    assert (result.ok, result.events) == (True, INIT_EVENTS + 500)


# --- injected time ----------------------------------------------------------------------------------


def test_injected_clock_decides_validity(clocked: tuple[Authority, FixedClock]) -> None:
    auth, clock = clocked
    t0 = clock.now()
    first = idevid(auth, "DEV-T")
    assert first.certificate.not_valid_before_utc == t0 - dt.timedelta(minutes=5)
    assert first.certificate.not_valid_after_utc == FOREVER
    ld = auth.issue(IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="DEV-T"))
    assert ld.certificate.not_valid_before_utc == t0 - dt.timedelta(minutes=5)
    assert ld.certificate.not_valid_after_utc == t0 + dt.timedelta(days=365)

    clock.advance(dt.timedelta(days=200))
    renewed = auth.issue(IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="DEV-T"))
    assert renewed.certificate.not_valid_before_utc == t0 + dt.timedelta(days=200, minutes=-5)
    assert renewed.certificate.not_valid_after_utc == t0 + dt.timedelta(days=565)

    row = cert_row(auth.engine, renewed.serial)
    assert row.not_before == t0 + dt.timedelta(days=200, minutes=-5)
    assert row.not_after == t0 + dt.timedelta(days=565)
    assert row.created_at == t0 + dt.timedelta(days=200)
    assert events(auth.engine)[-1].at == t0 + dt.timedelta(days=200)
    assert verify(auth.engine).ok


def test_clock_in_another_utc_offset_keeps_the_audit_chain_valid(home: Home) -> None:
    """An aware non-UTC time is the same instant: the store keeps UTC, and the chain must still verify."""
    cet = dt.timezone(dt.timedelta(hours=2))
    auth = open_authority(home, PASSPHRASE, clock=FixedClock(dt.datetime(2031, 3, 4, 7, 6, 7, tzinfo=cet)))
    try:
        issued = idevid(auth, "DEV-TZ")
        assert issued.certificate.not_valid_before_utc == dt.datetime(2031, 3, 4, 5, 1, 7, tzinfo=UTC)
        assert verify(auth.engine).ok
    finally:
        auth.engine.dispose()


# --- the audit chain --------------------------------------------------------------------------------


def test_audit_chain_detects_edits_and_deletions(authority: Authority) -> None:
    engine = authority.engine
    for i in range(4):
        idevid(authority, f"DEV-{i}")
    with pytest.raises(NotFoundError):
        authority.issue(IssueRequest(ProfileName.LDEVID, p256().public_key(), device_serial="GHOST"))
    result = verify(engine)
    assert (result.ok, result.events) == (True, INIT_EVENTS + 5)
    rows = events(engine)
    assert [r.seq for r in rows] == list(range(1, INIT_EVENTS + 6))
    assert rows[-1].outcome == "refused"

    # Edit one event's detail: verify names exactly that event.
    target = rows[INIT_EVENTS + 1]
    forged = json.dumps({**json.loads(target.detail), "device": "DEV-FORGED"})
    with engine.begin() as conn:
        conn.execute(update(EVENTS).where(EVENTS.c.seq == target.seq).values(detail=forged))
    result = verify(engine)
    assert not result.ok
    assert result.broken_seq == target.seq
    assert result.events == target.seq - 1
    with engine.begin() as conn:
        conn.execute(update(EVENTS).where(EVENTS.c.seq == target.seq).values(detail=target.detail))
    assert verify(engine).ok

    # Delete the last event: the chain that is left is consistent, only the head knows.
    last = rows[-1]
    with engine.begin() as conn:
        conn.execute(delete(EVENTS).where(EVENTS.c.seq == last.seq))
    result = verify(engine)
    assert not result.ok
    assert result.broken_seq == last.seq
    assert "removed" in result.reason
    with engine.begin() as conn:
        conn.execute(insert(EVENTS).values(**last._asdict()))
    assert verify(engine).ok

    # Delete an event in the middle: reported missing by its seq.
    middle = rows[INIT_EVENTS + 2]
    with engine.begin() as conn:
        conn.execute(delete(EVENTS).where(EVENTS.c.seq == middle.seq))
    result = verify(engine)
    assert not result.ok
    assert result.broken_seq == middle.seq
    assert "missing" in result.reason
    with engine.begin() as conn:
        conn.execute(insert(EVENTS).values(**middle._asdict()))
    assert verify(engine).ok


def test_refusal_with_a_very_long_subject_keeps_the_chain_valid(authority: Authority) -> None:
    with pytest.raises(PolicyError) as info:
        idevid(authority, "S" * 400)
    assert info.value.code == "device-serial-syntax"
    with pytest.raises(PolicyError):
        authority.issue_csr(b"junk", ProfileName.SERVER, dns=[f"host{i}.example.com" for i in range(40)])
    result = verify(authority.engine)
    assert result.ok, result
    assert result.events == INIT_EVENTS + 2


# --- keys -------------------------------------------------------------------------------------------


def test_wrong_passphrase_fails_at_first_signature_and_records_nothing(home: Home) -> None:
    auth = open_authority(home, b"not the passphrase")
    try:
        before, seq = snapshot(auth.engine), last_seq(auth.engine)
        with pytest.raises(KeyAccessError) as info:
            auth.issue_csr(csr_for(p256()), ProfileName.IDEVID, new_device=NewDevice("DEV-K"))
        assert info.value.code == "wrong-passphrase"
        assert "passphrase" in info.value.message
        assert_refused_cleanly(auth, before, seq, "wrong-passphrase")
    finally:
        auth.engine.dispose()
    # The right passphrase on the same home issues for that device: nothing was left half done.
    good = open_authority(home, PASSPHRASE)
    try:
        assert idevid(good, "DEV-K").device_serial == "DEV-K"
    finally:
        good.engine.dispose()


# --- concurrency ------------------------------------------------------------------------------------


def test_concurrent_writers_on_one_store(home: Home) -> None:
    """Two authorities (as two processes would have: own engine, own keys) issue batches at once."""
    writers = [open_authority(home, PASSPHRASE) for _ in range(2)]
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []
    issued: list[list[int]] = [[] for _ in writers]
    batches, size = 8, 25

    def run(n: int) -> None:
        try:
            auth = writers[n]
            requests = [
                [
                    IssueRequest(
                        ProfileName.IDEVID, p256().public_key(), new_device=NewDevice(f"W{n}-{b}-{i}")
                    )
                    for i in range(size)
                ]
                for b in range(batches)
            ]
            barrier.wait()
            for batch in requests:
                issued[n] += [i.serial for i in auth.issue_many(batch)]
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(writers))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for w in writers:
            w.engine.dispose()
    assert not errors, errors
    assert all(len(s) == batches * size for s in issued)
    engine = open_authority(home, PASSPHRASE).engine
    try:
        with engine.connect() as conn:
            assert repo.count(conn, repo.certificates) == 2 * batches * size
            assert repo.count(conn, repo.devices) == 2 * batches * size
        result = verify(engine)
        assert (result.ok, result.events) == (True, INIT_EVENTS + 2 * batches * size)
    finally:
        engine.dispose()
