"""Moving and copying a whole store: `devid store migrate` from SQLite to PostgreSQL (everything
intact, refusals changing nothing), and `devid backup` under continuous issuance then `devid restore`
into a new home that verifies, chains and issues on (never over a home that issued since)."""

from __future__ import annotations

import dataclasses
import stat
import tarfile
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import PASSPHRASE
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from e2e import devid, devid_many, ok
from sqlalchemy import func, select

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import open_authority
from devid.cli.backup_cmd import restore
from devid.cli.db_cmd import migrate_store
from devid.config import Home
from devid.errors import ConfigError, ConflictError, DevidError
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.registry import manufacturers
from devid.revocation import crl
from devid.store import outbox
from devid.store.engine import make_engine, reading, writing
from devid.store.models import certificates, events, metadata
from devid.store.schema import migrate
from devid.store.transfer import table_digest


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _issue(authority: Authority, prefix: str, n: int) -> list[str]:
    made = authority.issue_many(
        [
            IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice(f"{prefix}-{i}", "m", lot=prefix))
            for i in range(n)
        ]
    )
    return [serial_hex(i.serial) for i in made]


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=subject == "Contoso CA", path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _register_manufacturer(authority: Authority) -> None:
    """A contract manufacturer's CA, registered with proof of possession (emits an outbox event)."""
    ca_key, proof_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert(
        "Contoso CA", ca_key, x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Contoso CA")]), ca_key
    )
    code = manufacturers.create_registration_code(authority, "test")
    proof = _cert(code, proof_key, ca.subject, ca_key)
    manufacturers.register(
        authority, "contoso", ca.public_bytes(Encoding.PEM), proof.public_bytes(Encoding.PEM)
    )


def _populate(home: Home) -> list[str]:
    """Issued certificates, a registered manufacturer, revocations, a CRL, outbox events, a
    checkpointed audit chain; the serials issued."""
    authority = open_authority(home, PASSPHRASE)
    try:
        serials = _issue(authority, "D", 8)
        revoke(authority, RevokeRequest(Selector.DEVICE, "D-0", Reason.KEY_COMPROMISE), "test")
        revoke(authority, RevokeRequest(Selector.SERIAL, serials[1], Reason.SUPERSEDED), "test")
        crl.build(authority, "manufacturing")
        _register_manufacturer(authority)
        authority.checkpoint_audit()
    finally:
        authority.close()
    return serials


def _digests(url: str) -> dict[str, tuple[int, str]]:
    engine = make_engine(url)
    with reading(engine) as conn:
        found = {table.name: table_digest(conn, table) for table in metadata.sorted_tables}
    engine.dispose()
    return found


def test_migrate_moves_everything_and_the_cli_works_on_postgresql(sqlite_home: Home, pg_url: str) -> None:
    serials = _populate(sqlite_home)
    sqlite_url = sqlite_home.config.db_url
    before = _digests(sqlite_url)
    assert before["events"][0] >= 3 and before["manufacturers"][0] == 1 and before["revocations"][0] == 2

    moved = ok(devid("store", "migrate", "--to", pg_url, "--home", sqlite_home.path)).stdout
    assert "audit chain verified" in moved, moved

    config = tomllib.loads((sqlite_home.path / "devid.toml").read_text())
    assert config["db_url"] == pg_url
    assert (
        stat.S_IMODE((sqlite_home.path / "devid.toml").stat().st_mode) == 0o600
    )  # the URL may hold a password
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    assert stat.S_IMODE(database.stat().st_mode) == 0o400
    assert _digests(pg_url) == before  # every table, row for row
    verified, listed = devid_many(
        [
            ("audit", "verify", "--home", str(sqlite_home.path)),
            ("cert", "list", "--home", str(sqlite_home.path), "--json"),
        ]
    )
    assert "audit chain intact" in ok(verified).stdout
    listing = ok(listed).stdout
    assert all(serial in listing for serial in serials)

    authority = open_authority(Home.load(sqlite_home.path), PASSPHRASE)
    try:
        [new] = _issue(authority, "after", 1)
        with reading(authority.engine) as conn:
            total = conn.execute(select(func.count()).select_from(certificates)).scalar_one()
            distinct = conn.execute(select(func.count(certificates.c.serial.distinct()))).scalar_one()
            ids = conn.execute(select(events.c.id)).scalars().all()
    finally:
        authority.close()
    assert new not in serials and total == distinct == before["certificates"][0] + 1
    assert len(ids) == len(set(ids))


def test_migrate_refusals_change_nothing(sqlite_home: Home, pg_url: str) -> None:
    config = (sqlite_home.path / "devid.toml").read_bytes()
    database = Path(sqlite_home.config.db_url.removeprefix("sqlite:///"))
    # A target holding devid data already: refused, naming the table.
    target = make_engine(pg_url)
    migrate(target)
    with writing(target) as conn:
        outbox.emit(conn, datetime.now(UTC), "test.event", "x", {})
    before = _digests(pg_url)
    cases = {
        "db-unreachable": "postgresql+psycopg://postgres@127.0.0.1:1/devid",
        "target-not-postgresql": f"sqlite:///{sqlite_home.path / 'copy.db'}",
        "target-not-empty": pg_url,
    }
    for code, url in cases.items():
        with pytest.raises(DevidError) as caught:
            migrate_store(to=url, home=sqlite_home.path)
        assert caught.value.code == code, caught.value.message
    assert "events (1 rows)" in caught.value.message
    assert (sqlite_home.path / "devid.toml").read_bytes() == config
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert _digests(pg_url) == before
    # A home already on PostgreSQL has nothing to move.
    on_pg = sqlite_home.path.parent / "on-pg"
    on_pg.mkdir()
    Home(on_pg, dataclasses.replace(sqlite_home.config, db_url=pg_url)).save()
    with pytest.raises(ConfigError) as already:
        migrate_store(to=pg_url, home=on_pg)
    assert already.value.code == "store-not-sqlite"
    target.dispose()


def _chains(
    cert: x509.Certificate, issuers: dict[x509.Name, x509.Certificate], root: x509.Certificate
) -> bool:
    while cert.issuer != cert.subject:
        issuer = issuers[cert.issuer]
        cert.verify_directly_issued_by(issuer)
        cert = issuer
    return cert == root


def test_backup_under_issuance_restores_a_working_ca(home: Home, tmp_path: Path) -> None:
    """On SQLite (online backup API) and PostgreSQL (REPEATABLE READ copy)."""
    authority = open_authority(home, PASSPHRASE)
    _issue(authority, "B", 4)
    stop, issued = threading.Event(), []

    def issue_on() -> None:
        while not stop.is_set():
            issued.extend(_issue(authority, f"T{len(issued)}", 2))

    worker = threading.Thread(target=issue_on)
    worker.start()
    try:
        while len(issued) < 4:
            stop.wait(0.05)
        archive = tmp_path / "backup.tar.gz"
        ok(devid("backup", "--out", archive, "--home", home.path))
        assert len(issued) > 4  # issuance went on while the snapshot was taken
    finally:
        stop.set()
        worker.join()
    authority.close()
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        keys = [tar.extractfile(n).read() for n in names if n.endswith(".key.pem")]  # type: ignore[union-attr]
    assert keys and all(b"ENCRYPTED" in key for key in keys)

    new = tmp_path / "restored"
    ok(devid("restore", archive, "--home", new))
    restored = open_authority(Home.load(new), PASSPHRASE)
    try:
        assert restored.verify_audit().ok  # as `devid audit verify` does, with the audit key
        with reading(restored.engine) as conn:
            ders = conn.execute(select(certificates.c.der)).scalars().all()
        assert len(ders) >= 8
        cas = [ca.certificate for ca in restored.cas.values()]
        issuers = {ca.subject: ca for ca in cas}
        assert all(_chains(x509.load_der_x509_certificate(der), issuers, restored.root) for der in ders)
        [after] = _issue(restored, "R", 1)
        with reading(restored.engine) as conn:
            serials = conn.execute(select(certificates.c.serial)).scalars().all()
        assert after in serials and len(serials) == len(set(serials))
    finally:
        restored.close()

    # The original went on issuing after the backup: restoring the backup over it is refused.
    with pytest.raises(ConflictError) as over:
        restore(archive, home.path)
    assert over.value.code == "restore-would-repeat"
    assert "CA manufacturing certificate index" in over.value.message and "audit event" in over.value.message
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(ConfigError) as invalid:
        restore(junk, tmp_path / "from-junk")
    assert invalid.value.code == "backup-invalid" and not (tmp_path / "from-junk").exists()
