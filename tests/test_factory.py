"""The production line end to end: `devid factory run` and `devid demo` as subprocesses on a real
SQLite home, software and SoftHSM2 secure elements, every IDevID checked by `openssl verify`; and the
station library with a secure element that fails its end-of-line test."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import PASSPHRASE, count, devid, devid_many, flat, ok, openssl_verify, query, split_pem
from pkcs11 import Attribute, ObjectClass
from softhsm import SoftToken

from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.config import Home, Pkcs11Settings
from devid.errors import KeyAccessError, KeyExportRefused
from devid.factory.secure_elements import SecureElementMaker, SecureElementSpec
from devid.factory.station import LineInfo, Station
from devid.keys.base import SecureElement
from devid.keys.pkcs11 import Pkcs11SecureElement, open_token
from devid.keys.software import DEVICE_KEY_FILE, SoftwareSecureElement
from devid.pki.profiles import ProfileName

DEVICE_FILES = {"device.json", "idevid.pem", "chain.pem", "se.json", "se-device.key"}


def new_home(path: Path) -> Path:
    """A home made through the library (fast); the tests drive it through the CLI."""
    init_home(path, org="Line Test", passphrase=PASSPHRASE.encode())
    return path


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def factory(home: Path, out: Path, count: int, *extra: str) -> tuple[str | Path, ...]:
    return ("factory", "run", "--count", str(count), "--home", home, "--out", out, *extra)


def trust_files(home: Path, out: Path, device: Path) -> tuple[Path, Path]:
    """root.pem and manufacturing.pem from a device's chain.pem, the root checked against the store."""
    blocks = split_pem((device / "chain.pem").read_text())
    assert len(blocks) == 2
    manufacturing, root = (x509.load_pem_x509_certificate(b.encode()) for b in blocks)
    [(root_der,)] = query(home, "SELECT der FROM cas WHERE name = 'root'")
    assert root.public_bytes(serialization.Encoding.DER) == root_der  # the home's own root, not any root
    [(manufacturing_der,)] = query(home, "SELECT der FROM cas WHERE name = 'manufacturing'")
    assert manufacturing.public_bytes(serialization.Encoding.DER) == manufacturing_der
    (out / "root.pem").write_text(blocks[1])
    (out / "manufacturing.pem").write_text(blocks[0])
    return out / "root.pem", out / "manufacturing.pem"


def idevid(device: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((device / "idevid.pem").read_bytes())


def tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: content hash and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- software secure element --------------------------------------------------------------------------


@dataclass
class Line:
    home: Path
    out: Path
    work: Path
    first: Any  # the first run's CompletedProcess


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Line:
    work = tmp_path_factory.mktemp("line")
    home = new_home(work / "H")
    out = work / "O"
    first = devid(*factory(home, out, 30, "--lot", "L1", "--model", "M1", "--serial-prefix", "TST"))
    return Line(home, out, work, first)


def test_factory_run_software(line: Line) -> None:
    stdout = flat(ok(line.first).stdout)
    assert "devices: 30" in stdout and "failures: 0" in stdout, stdout
    assert f"manifest: {line.out / 'manifest.jsonl'}" in stdout

    rows = manifest(line.out)[:30]  # later tests append their runs
    assert [r["device_serial"] for r in rows] == [f"TST{n:08d}" for n in range(1, 31)]
    for r in rows:
        assert r["status"] == "ok", r
        assert (r["lot"], r["model"]) == ("L1", "M1")
        device = Path(r["directory"])
        assert device == line.out / r["device_serial"]
        assert {p.name for p in device.iterdir()} == DEVICE_FILES
        cert = idevid(device)
        assert format(cert.serial_number, "x") == r["certificate_serial"]
        der = cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == r["fingerprint"]
        info = json.loads((device / "device.json").read_text())
        assert (info["serial"], info["lot"], info["model"]) == (r["device_serial"], "L1", "M1")
        assert info["idevid_serial"] == r["certificate_serial"]
        assert info["secure_element"]["backend"] == "software"

    root, manufacturing = trust_files(line.home, line.work, line.out / "TST00000001")
    for serial in ("TST00000001", "TST00000015", "TST00000030"):
        openssl_verify(root, line.out / serial / "idevid.pem", untrusted=manufacturing)


def test_software_element_keeps_its_key_sealed(line: Line) -> None:
    ok(line.first)
    device = line.out / "TST00000007"
    cert = idevid(device)
    # Sealed with its own device-local key (mode 0600), not with the home's passphrase.
    device_key = device / DEVICE_KEY_FILE
    assert len(device_key.read_bytes()) == 32 and stat.S_IMODE(device_key.stat().st_mode) == 0o600
    se = SoftwareSecureElement.open(device)
    assert se.public_key() == cert.public_key()
    assert se.read_slot("idevid") == cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(KeyExportRefused):
        se.export_private_key()

    # The private scalar appears nowhere in the state file, in any usual encoding.
    scalar = se.tls_private_key().private_numbers().private_value.to_bytes(32, "big")
    state = (device / "se.json").read_bytes()
    for clear in (scalar, scalar.hex().encode(), scalar.hex().upper().encode(), base64.b64encode(scalar)):
        assert clear not in state
    assert b"PRIVATE KEY" not in state

    # Another device's key does not open it, and neither does no key at all.
    other = line.work / "TST99999999"
    other.mkdir()
    (other / "se.json").write_bytes(state)
    (other / DEVICE_KEY_FILE).write_bytes((line.out / "TST00000008" / DEVICE_KEY_FILE).read_bytes())
    with pytest.raises(KeyAccessError, match="wrong device key"):
        SoftwareSecureElement.open(other)
    (other / DEVICE_KEY_FILE).unlink()
    with pytest.raises(KeyAccessError, match="older devid"):
        SoftwareSecureElement.open(other)
    # Sealed to its folder: the state and key moved to another device's folder do not open.
    (other / DEVICE_KEY_FILE).write_bytes(device_key.read_bytes())
    with pytest.raises(KeyAccessError):
        SoftwareSecureElement.open(other)


def test_store_holds_the_run(line: Line) -> None:
    ok(line.first)
    first = {f"TST{n:08d}" for n in range(1, 31)}
    listed = ok(devid("cert", "list", "--profile", "idevid", "--json", "--home", line.home))
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert {r["profile"] for r in rows} == {"idevid"}
    ours = [r for r in rows if r["device_serial"] in first]  # other tests' runs share this home
    assert len(ours) == 30 and {r["device_serial"] for r in ours} == first
    assert {r["issuer_name"] for r in ours} == {"manufacturing"}
    assert {r["serial"] for r in ours} == {r["certificate_serial"] for r in manifest(line.out)[:30]}
    assert query(
        line.home,
        "SELECT state, lot, model, se_backend, count(*) FROM devices WHERE lot = 'L1' GROUP BY 1, 2, 3, 4",
    ) == [("ACTIVE", "L1", "M1", "software", 30)]


def test_rerun_of_the_same_serials_is_refused(line: Line) -> None:
    ok(line.first)
    first_files = tree(line.out)
    first_rows = query(line.home, "SELECT * FROM devices ORDER BY id")
    certs = count(line.home, "certificates")
    fresh = line.work / "O2"
    # Same serials into a new folder (the store must refuse) and into the first run's folder.
    into_fresh, into_same = devid_many(
        [
            factory(line.home, fresh, 30, "--serial-prefix", "TST", "--start", "1"),
            factory(line.home, line.out, 30, "--serial-prefix", "TST", "--start", "1"),
        ]
    )
    for result, out in ((into_fresh, fresh), (into_same, line.out)):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "devices: 30 failures: 30" in flat(result.stdout)
        refused = manifest(out)[-30:]
        assert [r["device_serial"] for r in refused] == [f"TST{n:08d}" for n in range(1, 31)]
        for r in refused:
            assert r["status"] == "failed"
            assert r["certificate_serial"] is None
            assert "duplicate-device" in r["error"], r
    assert count(line.home, "certificates") == certs
    assert query(line.home, "SELECT * FROM devices ORDER BY id") == first_rows
    assert [p.name for p in fresh.iterdir()] == ["manifest.jsonl"]  # no half-made device folders
    after = tree(line.out)
    assert {k: v for k, v in after.items() if k != "manifest.jsonl"} == {
        k: v for k, v in first_files.items() if k != "manifest.jsonl"
    }

    # Without --start the line continues after the highest serial of the prefix.
    more = ok(devid(*factory(line.home, line.work / "O3", 3, "--serial-prefix", "TST")))
    assert "devices: 3 failures: 0" in flat(more.stdout)
    assert [r["device_serial"] for r in manifest(line.work / "O3")] == [
        "TST00000031",
        "TST00000032",
        "TST00000033",
    ]


def test_serials_continue_per_prefix(tmp_path: Path) -> None:
    """DEVB00000009 and DEV100000001 belong to other lines: the DEV line goes on at DEV00000003."""
    home = new_home(tmp_path / "H")
    config = Home.load(home)
    authority = open_authority(config, PASSPHRASE.encode())
    maker = SecureElementMaker(SecureElementSpec("software"))
    try:
        made = Station(authority, maker, tmp_path / "earlier", LineInfo("l", "m", "lot")).provision(
            ["DEV00000001", "DEV00000002", "DEVB00000009", "DEV100000001"]
        )
    finally:
        authority.engine.dispose()
    assert all(r.ok for r in made), made
    out, bad_out = tmp_path / "O", tmp_path / "O-bad"
    more, bad_prefix = devid_many(
        [
            factory(home, out, 2, "--serial-prefix", "DEV"),
            factory(home, bad_out, 2, "--serial-prefix", "../escape"),
        ]
    )
    assert "devices: 2 failures: 0" in flat(ok(more).stdout)
    assert [r["device_serial"] for r in manifest(out)] == ["DEV00000003", "DEV00000004"]
    # A prefix that cannot make a valid serial is one clear error before anything is made.
    assert bad_prefix.returncode == 2, bad_prefix.stdout + bad_prefix.stderr
    assert "device serial '../escape00000001'" in flat(bad_prefix.stderr)
    assert not bad_out.exists()
    assert count(home, "devices") == 6


def test_two_workers_300_devices(tmp_path: Path) -> None:
    home = new_home(tmp_path / "H")
    out = tmp_path / "O"
    result = ok(devid(*factory(home, out, 300, "--workers", "2", "--serial-prefix", "W")))
    assert "devices: 300 failures: 0" in flat(result.stdout)
    rows = manifest(out)
    assert len(rows) == 300
    assert {r["status"] for r in rows} == {"ok"}
    assert sorted(r["device_serial"] for r in rows) == [f"W{n:08d}" for n in range(1, 301)]
    assert len({r["certificate_serial"] for r in rows}) == 300
    assert query(
        home, "SELECT count(*), count(DISTINCT serial) FROM certificates WHERE profile = 'idevid'"
    ) == [(300, 300)]
    assert count(home, "devices") == 300
    audit = ok(devid("audit", "verify", "--home", home))
    assert f"audit chain intact: {count(home, 'audit_events')} events verified" in flat(audit.stdout)
    root, manufacturing = trust_files(home, tmp_path, out / "W00000001")
    openssl_verify(root, out / "W00000300" / "idevid.pem", untrusted=manufacturing)


# --- a device that fails its end-of-line test ----------------------------------------------------------


class WrongChallengeElement:
    """A secure element that signs something other than the challenge it is given."""

    def __init__(self, inner: SecureElement) -> None:
        self._inner = inner
        self.backend = inner.backend

    def sign(self, data: bytes) -> bytes:
        return self._inner.sign(b"not the challenge " + data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class OneBadElementMaker(SecureElementMaker):
    def __init__(self, spec: SecureElementSpec, bad_serial: str) -> None:
        super().__init__(spec)
        self.bad_serial = bad_serial

    def create(self, directory: Path, device_serial: str) -> SecureElement:
        se = super().create(directory, device_serial)
        return WrongChallengeElement(se) if device_serial == self.bad_serial else se


def test_a_failing_device_does_not_stop_the_line(tmp_path: Path) -> None:
    home = Home.load(new_home(tmp_path / "H"))
    authority = open_authority(home, PASSPHRASE.encode())
    spec = SecureElementSpec("software")
    maker = OneBadElementMaker(spec, "BAD00000003")
    out = tmp_path / "O"
    station = Station(authority, maker, out, LineInfo("line-t", "m", "lot-t"))
    serials = [f"BAD{n:08d}" for n in range(1, 6)]
    try:
        results = {r.serial: r for r in station.provision(serials)}
    finally:
        authority.engine.dispose()

    assert set(results) == set(serials)
    bad = results.pop("BAD00000003")
    assert not bad.ok
    assert bad.error is not None and "challenge" in bad.error, bad.error
    assert all(r.ok for r in results.values()), results
    states = {str(s): str(state) for s, state in query(tmp_path / "H", "SELECT serial, state FROM devices")}
    assert states == {s: "FAILED_TEST" if s == "BAD00000003" else "ACTIVE" for s in serials}
    # Creation and the failure went the one way device records change: version moved, events queued.
    versions = dict(query(tmp_path / "H", "SELECT serial, version FROM devices"))
    assert versions == {s: 2 if s == "BAD00000003" else 1 for s in serials}
    events = [
        (t, s, json.loads(str(p)))
        for t, s, p in query(tmp_path / "H", "SELECT type, subject, payload FROM events")
    ]
    assert sorted(s for t, s, _ in events if t == "device.registered") == serials
    [change] = [p for t, _, p in events if t == "device.state"]
    assert (change["subject"], change["from"], change["to"]) == ("BAD00000003", "ACTIVE", "FAILED_TEST")
    [(detail,)] = query(
        tmp_path / "H",
        "SELECT detail FROM audit_events WHERE action = 'factory.test' AND subject = 'BAD00000003'",
    )
    assert "challenge" in json.loads(str(detail))["reason"]
    root, manufacturing = trust_files(tmp_path / "H", tmp_path, out / "BAD00000001")
    for serial in results:
        openssl_verify(root, out / serial / "idevid.pem", untrusted=manufacturing)
    audit = ok(devid("audit", "verify", "--home", tmp_path / "H"))
    assert "audit chain intact" in audit.stdout


# --- PKCS#11 secure element (SoftHSM2) -----------------------------------------------------------------


@pytest.fixture
def line_token(tokens: dict[str, SoftToken]) -> SoftToken:
    return tokens["line"]


@pytest.fixture
def prefix() -> str:
    """Device keys stay in the session's token: each test gets serials of its own."""
    return f"P{uuid.uuid4().hex[:6].upper()}"


def pkcs11_args(token: SoftToken, pin_file: Path | None = None, label: str | None = None) -> tuple[str, ...]:
    return (
        "--secure-element",
        "pkcs11",
        "--se-module",
        token.module,
        "--se-token",
        label or token.label,
        "--se-pin-file",
        str(pin_file or token.pin_file),
    )


def test_factory_run_pkcs11(line: Line, line_token: SoftToken, prefix: str) -> None:
    out = line.work / f"pkcs11-{prefix}"
    result = ok(devid(*factory(line.home, out, 5, "--serial-prefix", prefix, *pkcs11_args(line_token))))
    assert "devices: 5 failures: 0" in flat(result.stdout)
    rows = manifest(out)
    assert [r["device_serial"] for r in rows] == [f"{prefix}{n:08d}" for n in range(1, 6)]
    assert {r["status"] for r in rows} == {"ok"}

    session = open_token(line_token.module, line_token.label, line_token.pin)
    root, manufacturing = trust_files(line.home, out, out / rows[0]["device_serial"])
    for r in rows:
        device = Path(r["directory"])
        assert {p.name for p in device.iterdir()} == DEVICE_FILES - {
            "se.json",
            "se-device.key",
        }  # no key material on disk
        text = (device / "device.json").read_text()
        element = json.loads(text)["secure_element"]
        assert element["backend"] == "pkcs11"
        assert element["uri"].startswith("pkcs11:")
        assert f"token={line_token.label}" in element["uri"]
        assert "pin" not in element["uri"].lower()
        assert line_token.pin not in text
        assert not any("pin" in key.lower() for key in element)

        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=r["device_serial"])
        assert isinstance(key, pkcs11.PrivateKey)
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]

        cert = idevid(device)
        se = Pkcs11SecureElement.open(line_token.module, line_token.label, line_token.pin, r["device_serial"])
        assert se.public_key() == cert.public_key()
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert se.read_slot("idevid") == cert.public_bytes(serialization.Encoding.DER)
        openssl_verify(root, device / "idevid.pem", untrusted=manufacturing)
    states = query(line.home, "SELECT se_backend, state FROM devices WHERE serial LIKE ?", f"{prefix}%")
    assert states == [("pkcs11", "ACTIVE")] * 5


def test_line_refuses_to_start(line: Line, line_token: SoftToken, prefix: str, tmp_path: Path) -> None:
    """Wrong PIN, unknown token, wrong passphrase: one clear error, nothing made, nothing written."""
    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("0000")
    before = (count(line.home, "devices"), count(line.home, "certificates"), _token_keys(line_token))
    outs = [tmp_path / "O-pin", tmp_path / "O-token", tmp_path / "O-passphrase"]
    bad_pin, bad_token, bad_passphrase = devid_many(
        [
            factory(line.home, outs[0], 3, "--serial-prefix", prefix, *pkcs11_args(line_token, wrong_pin)),
            factory(
                line.home,
                outs[1],
                3,
                "--serial-prefix",
                prefix,
                *pkcs11_args(line_token, label="no-such-token"),
            ),
            factory(line.home, outs[2], 3, "--serial-prefix", prefix),
        ],
        passphrases=[PASSPHRASE, PASSPHRASE, "not the passphrase"],
    )
    assert "wrong PIN" in flat(bad_pin.stderr)
    assert f"'{line_token.label}'" in flat(bad_pin.stderr)
    assert "0000" not in bad_pin.stdout + bad_pin.stderr
    assert "no PKCS#11 token labelled 'no-such-token'" in flat(bad_token.stderr)
    assert "wrong passphrase" in flat(bad_passphrase.stderr)
    for result in (bad_pin, bad_token, bad_passphrase):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert flat(result.stderr).count("error:") == 1  # one clear error, not one per device
        assert "failed" not in result.stdout
    assert not any(out.exists() for out in outs)
    after = (count(line.home, "devices"), count(line.home, "certificates"), _token_keys(line_token))
    assert after == before


def _token_keys(token: SoftToken) -> int:
    session = open_token(token.module, token.label, token.pin)
    return len(list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})))


def test_refused_device_leaves_no_key_in_the_token(line: Line, line_token: SoftToken) -> None:
    """A serial the store already has is refused before a key is made for it in the element."""
    ok(line.first)
    keys = _token_keys(line_token)
    out = line.work / f"pkcs11-dup-{uuid.uuid4().hex[:6]}"
    result = devid(
        *factory(line.home, out, 2, "--serial-prefix", "TST", "--start", "1", *pkcs11_args(line_token))
    )
    assert result.returncode == 1
    assert {r["status"] for r in manifest(out)} == {"failed"}
    assert _token_keys(line_token) == keys
    session = open_token(line_token.module, line_token.label, line_token.pin)
    assert list(session.get_objects({Attribute.LABEL: "TST00000001"})) == []


class RacingMaker(SecureElementMaker):
    """Another line registers the same serial while this one makes the device's key."""

    def __init__(self, spec: SecureElementSpec, rival: Callable[[str], None]) -> None:
        super().__init__(spec)
        self.rival = rival

    def create(self, directory: Path, device_serial: str) -> SecureElement:
        se = super().create(directory, device_serial)
        self.rival(device_serial)
        return se


def test_device_refused_after_its_key_was_made_leaves_no_key(tmp_path: Path, line_token: SoftToken) -> None:
    """The store refuses the device (a rival line won the serial) after its element made a key:
    the key must not stay in the token, or the serial can never be provisioned there again."""
    home = Home.load(new_home(tmp_path / "H"))
    authority = open_authority(home, PASSPHRASE.encode())
    rival = open_authority(home, PASSPHRASE.encode())

    def register(serial: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        rival.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(serial)), "rival line")

    settings = Pkcs11Settings(line_token.module, line_token.label, str(line_token.pin_file))
    spec = SecureElementSpec("pkcs11", settings)
    serial = f"RACE{uuid.uuid4().hex[:8].upper()}"
    try:
        station = Station(
            authority,
            RacingMaker(spec, register),
            tmp_path / "O",
            LineInfo("l", "m", "lot"),
        )
        [result] = station.provision([serial])
    finally:
        authority.engine.dispose()
        rival.engine.dispose()
    assert not result.ok
    assert result.error is not None and "duplicate-device" in result.error
    assert not (tmp_path / "O" / serial).exists()
    session = open_token(line_token.module, line_token.label, line_token.pin)
    assert list(session.get_objects({Attribute.LABEL: serial})) == []


# --- demo -----------------------------------------------------------------------------------------------


def test_demo_twice(tmp_path: Path) -> None:
    """A second demo on the same home is refused (its figures would mix with the first run's
    devices) and changes nothing; --fresh deletes the earlier demo home and starts again."""
    demo_home = tmp_path / "demo"
    args = (
        "demo",
        "--home",
        demo_home,
        "--devices",
        "50",
        "--contract-devices",
        "20",
        "--sim-devices",
        "40",
        "--sim-years",
        "6",
    )
    first = flat(ok(devid(*args)).stdout)
    assert "50/50 IDevIDs path-validate to the root" in first, first
    assert "20 of its devices registered just in time" in first, first
    assert "a new device is refused (403): True" in first
    assert "DEMO00000001 .. DEMO00000050" in first
    # Two renewal policies: 45 devices on `renew`, 5 on `short`, of which 1 was offline past expiry.
    assert "45 devices enrolled LDevIDs (one year)" in first, first
    assert (
        "5 devices enrolled on EST label 'short' (30-day LDevIDs); at their renewal time 4 renewed" in first
    )
    assert "offline past their LDevID's expiry: 1, of which 1 came back and re-enrolled" in first, first
    # Step 9: six simulated years outlive the 5-year long-lived certificates, not the renewing ones.
    strategies = re.search(
        r"9\. strategies: 40 simulated devices over 6 years .*long-lived lost ([\d,]+) device-days", first
    )
    assert strategies is not None and int(strategies.group(1).replace(",", "")) > 0, first
    assert "renew, short-lived and session lost none" in first
    # The lot is revoked (IDevIDs, LDevIDs, the renewed ones' older LDevIDs) and published.
    revoked = re.search(r"lot 'lot-demo' revoked for keyCompromise: 50 devices and (\d+) certificates", first)
    assert revoked is not None and int(revoked.group(1)) > 100, first
    check_report(demo_home, first, int(revoked.group(1)))
    for ca in ("manufacturing", "operational"):
        sizes = re.search(
            rf"{ca}: full CRL ([\d,]+) B, largest shard CRL ([\d,]+) B, filter ([\d,]+) B, "
            r"one OCSP response ([\d,]+) B",
            first,
        )
        assert sizes is not None, first
        full, shard, filter_size, ocsp = (int(g.replace(",", "")) for g in sizes.groups())
        assert full > 50 * 30 and 0 < shard < full and 0 < filter_size < 1000 and 0 < ocsp < 2000
    assert "demo complete" in first
    # The bar and the summary each say what their rate measures.
    assert "devices/s wall clock (start-up included)" in first, first
    assert re.search(r"line rate: [\d,]+ devices/s \(stations ready to last device", first), first
    again = devid(*args)
    assert again.returncode == 2, again
    assert flat(again.stderr).endswith("--home NEW_FOLDER [demo-home-exists]"), again.stderr
    assert count(demo_home, "devices") == 50 + 20
    second = flat(ok(devid(*args, "--fresh")).stdout)
    assert "deleted the earlier demo home" in second and "new home" in second
    assert "DEMO00000001 .. DEMO00000050" in second, second
    assert "50/50 IDevIDs path-validate to the root" in second
    assert count(demo_home, "devices") == 50 + 20  # factory devices, then contract devices (JITR)
    rows = manifest(demo_home / "devices")
    assert len(rows) == 50 and {r["status"] for r in rows} == {"ok"}
    root, manufacturing = trust_files(demo_home, demo_home, demo_home / "devices" / "DEMO00000050")
    openssl_verify(root, demo_home / "devices" / "DEMO00000050" / "idevid.pem", untrusted=manufacturing)


def check_report(demo_home: Path, output: str, revoked_certificates: int) -> None:
    """The report the demo printed the path of: every section, its charts inline, nothing fetched from
    elsewhere, and the fleet's figures as the store has them."""
    path = demo_home / "report" / "index.html"
    assert f"report: {path}" in output, output
    html = path.read_text()
    for section in ("steps", "fleet", "revocation", "audit", "strategies"):
        assert f'<section id="{section}">' in html
    # The expiry timeline and the sizes chart, then the simulator's two plots (step 9).
    assert html.count("<svg") == 4 and "<script" not in html
    # Nothing fetched: no src at all, and the only links are the plots' own (#ids inside their SVG).
    assert "src=" not in html and re.findall(r'href="(?!#)', html) == []
    assert '<div id="simulation">' in html and "40 devices over 6.0 years on a daily link" in html
    assert "<th>long-lived</th><th>renew</th><th>short-lived</th><th>session</th>" in html
    assert (
        "<strong>lot revocation</strong>" in html
        and f"50 devices and {revoked_certificates:,} certificates" in html
    )
    # Devices by state after the revocation: the lot's 50 REVOKED, the 20 contract devices ACTIVE.
    states = dict(query(demo_home, "SELECT state, count(*) FROM devices GROUP BY state"))
    assert states == {"REVOKED": 50, "ACTIVE": 20}
    for state, n in states.items():
        assert re.search(rf"<tr><td>{state}</td><td class=n>[\d,]+</td><td class=n>{n}</td></tr>", html), (
            state
        )
    for profile, status, n in query(
        demo_home, "SELECT profile, status, count(*) FROM certificates WHERE status != 'valid' GROUP BY 1, 2"
    ):
        row = rf"<tr><td>{profile}</td><td>{status}</td><td class=n>[\d,]+</td><td class=n>{n:,}</td></tr>"
        assert re.search(row, html), (profile, status, n)
    assert "The chain of" in html and "verifies" in html and "<strong>What it means:</strong>" in html


def test_demo_fresh_deletes_only_a_demo_home(tmp_path: Path) -> None:
    acme = tmp_path / "acme"
    ok(devid("init", "--home", acme, "--org", "Acme"))
    refused = devid("demo", "--home", acme, "--fresh", "--devices", "1")
    assert refused.returncode == 2 and "[demo-home-not-demo]" in refused.stderr, refused.stderr
    assert (acme / "devid.toml").is_file() and count(acme, "cas") == 5
