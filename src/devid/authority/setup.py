"""Creating a devid home (CA hierarchy, store, config) and opening the authority of an existing one."""

from __future__ import annotations

import fcntl
import os
import shutil
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine, insert, make_url

from devid.authority import credential_key, token_keys
from devid.authority.core import AUDIT_KEY_NAME, Authority, IssuingCA
from devid.authority.credential_key import CredentialKey
from devid.authority.policy import DEFAULT_LABELS, LabelPolicy
from devid.clock import Clock, SystemClock
from devid.config import (
    Config,
    Home,
    Pkcs11Settings,
    check_new_passphrase,
    check_public_url,
    refuse_non_directory,
)
from devid.errors import ConfigError, ConflictError, NotFoundError
from devid.keys.base import KeyStore, SecretKey
from devid.keys.software import SoftwareKeyStore
from devid.pki.profiles import PROFILES, Profile, ProfileName, Template, ca_subject, self_signed_template
from devid.pki.serials import random_serial, serial_hex
from devid.store import audit, repo
from devid.store.engine import make_engine, reading, writing
from devid.store.schema import check_schema, migrate

#: The hierarchy `devid init` creates: (name, role, parent, profile, common name suffix).
HIERARCHY = (
    ("root", "root", None, ProfileName.ROOT_CA, "Root CA"),
    ("manufacturing", "manufacturing", "root", ProfileName.INTERMEDIATE_CA, "Manufacturing CA"),
    ("operational", "operational", "root", ProfileName.INTERMEDIATE_CA, "Operational CA"),
    (
        "manufacturing-ocsp",
        "ocsp-signer",
        "manufacturing",
        ProfileName.OCSP_SIGNER,
        "Manufacturing OCSP Signer",
    ),
    ("operational-ocsp", "ocsp-signer", "operational", ProfileName.OCSP_SIGNER, "Operational OCSP Signer"),
)
#: CA lifetimes: the root and manufacturing CA outlive the IDevIDs they anchor (RFC 5280 9999 date).
OPERATIONAL_CA_LIFETIME = timedelta(days=20 * 365)


def ca_profile(role: str, profile_name: ProfileName) -> Profile:
    """The certificate profile of a CA of `role`: its own profile's, but 20 years for an operational CA."""
    profile = PROFILES[profile_name]
    return profile.with_validity(OPERATIONAL_CA_LIFETIME) if role == "operational" else profile


def keystore_for(home: Home, passphrase: bytes) -> KeyStore:
    cfg = home.config
    if cfg.key_backend == "software":
        return SoftwareKeyStore(home.keys_dir, passphrase)
    if cfg.key_backend == "pkcs11":
        if cfg.pkcs11 is None:
            raise ConfigError("config-invalid", "key_backend is pkcs11 but no [pkcs11] section is configured")
        from devid.keys.pkcs11 import Pkcs11KeyStore

        return Pkcs11KeyStore(cfg.pkcs11.module, cfg.pkcs11.token, cfg.pkcs11.pin())
    raise ConfigError("config-invalid", f"unknown key backend {cfg.key_backend!r}")


def init_home(
    path: Path,
    *,
    org: str,
    passphrase: bytes,
    db_url: str | None = None,
    key_backend: str = "software",
    pkcs11: Pkcs11Settings | None = None,
    clock: Clock | None = None,
    public_url: str = "",
) -> Home:
    """Create config, store and CA hierarchy; refuse an existing home and leave nothing behind on failure.

    The home folder is made 0700 and an SQLite database 0600 whatever the umask (SQLite gives its
    -wal and -shm files the database's mode)."""
    clock = clock or SystemClock()
    refuse_non_directory(path)
    check_new_passphrase(passphrase)
    if (path / "devid.toml").exists():
        raise ConflictError("home-exists", f"{path} is already a devid home; nothing was changed")
    if key_backend not in ("software", "pkcs11"):
        raise ConfigError("key-backend", f"unknown key backend {key_backend!r}: use software or pkcs11")
    if key_backend == "pkcs11" and pkcs11 is None:
        raise ConfigError(
            "pkcs11-settings",
            "--key-backend pkcs11 needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-file",
        )
    created_dir = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    config = Config(
        org=org,
        db_url=db_url or f"sqlite:///{(path / 'devid.db').resolve()}",
        key_backend=key_backend,
        key_prefix=f"devid-{os.urandom(4).hex()}-",
        pkcs11=pkcs11,
        est_labels={label: policy.to_config() for label, policy in DEFAULT_LABELS.items()},
        public_url=check_public_url(public_url) if public_url else "",
    )
    home = Home(path, config)
    try:
        keystore = keystore_for(home, passphrase)
        _create_private_sqlite_file(config.db_url)
        engine = make_engine(config.db_url)
        migrate(engine)
        with reading(engine) as conn:
            if repo.count(conn, repo.cas):
                raise ConflictError("store-not-empty", "the database already holds a devid CA hierarchy")
        _create_hierarchy(engine, keystore, home, clock)
        keystore.generate_secret(config.key_prefix + credential_key.KEY_NAME)
        engine.dispose()
        Home.create(path, config)
    except BaseException:
        if created_dir:
            shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(home.keys_dir, ignore_errors=True)
            (path / "devid.db").unlink(missing_ok=True)
        raise
    return home


def _create_private_sqlite_file(db_url: str) -> None:
    """Create an SQLite database file with mode 0600 before SQLite does (with 0666 & ~umask)."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    fd = os.open(url.database, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _create_hierarchy(engine: Engine, keystore: KeyStore, home: Home, clock: Clock) -> None:
    now = clock.now()
    org = home.config.org
    made: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    rows, events = [], []
    for ca_id, (name, role, parent, profile_name, cn) in enumerate(HIERARCHY, start=1):
        label = home.config.key_prefix + name
        key = keystore.generate(label)
        subject = ca_subject(org, f"{org} {cn}")
        profile = ca_profile(role, profile_name)
        if parent is None:
            template, signer = self_signed_template(profile, subject), key
        else:
            parent_cert, signer = made[parent]
            template = Template.for_issuer(profile, parent_cert)
        serial = random_serial()
        cert = template.builder(subject, key.public_key(), serial, now).sign(signer, hashes.SHA256())
        made[name] = (cert, key)
        parent_id = next((i for i, h in enumerate(HIERARCHY, start=1) if h[0] == parent), None)
        rows.append(
            {
                "id": ca_id,
                "name": name,
                "role": role,
                "parent_id": parent_id,
                "key_label": label,
                "subject": subject.rfc4514_string(),
                "serial": serial_hex(serial),
                "not_after": cert.not_valid_after_utc,
                "der": cert.public_bytes(Encoding.DER),
                "created_at": now,
            }
        )
        events.append(
            audit.Event(
                "ca.create",
                name,
                "devid init",
                "ok",
                {"role": role, "serial": serial_hex(serial), "key_backend": keystore.backend},
            )
        )
    keystore.generate(home.config.key_prefix + AUDIT_KEY_NAME)  # signs the audit checkpoints
    with writing(engine) as conn:
        conn.execute(insert(repo.cas), rows)
        audit.append(conn, events, now)


def _credential_root(home: Home, keystore: KeyStore, root_label: str | None) -> SecretKey:
    """The credential key of `home`; a home made before it existed gets one on first use, after the
    passphrase (or PIN) is proven by opening the root CA key, under a lock shared by its processes."""
    label = home.config.key_prefix + credential_key.KEY_NAME
    try:
        return keystore.load_secret(label)
    except NotFoundError:
        pass
    home.keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(home.keys_dir / f"{credential_key.KEY_NAME}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return keystore.load_secret(label)
        except NotFoundError:
            if root_label is not None:
                keystore.load(root_label)
            return keystore.generate_secret(label)
    finally:
        os.close(fd)


def open_authority(home: Home, passphrase: bytes, *, clock: Clock | None = None) -> Authority:
    """The authority of an existing home, with keys opened lazily on first signature."""
    engine = make_engine(home.config.db_url)
    check_schema(engine)
    keystore = keystore_for(home, passphrase)
    with reading(engine) as conn:
        ca_rows = repo.all_cas(conn)
    if not ca_rows:
        raise ConfigError("store-empty", f"the store of {home.path} holds no CA hierarchy")
    cas = {
        row.name: IssuingCA(
            row.id,
            row.name,
            row.role,
            x509.load_der_x509_certificate(row.der),
            row.key_label,
            keystore,
            crl_shards=row.crl_shards,
            public_url=home.config.public_url or None,
        )
        for row in ca_rows
    }
    cfg = home.config
    lifetimes: dict[ProfileName, timedelta | None] = {
        ProfileName.IDEVID: timedelta(days=cfg.idevid_days) if cfg.idevid_days else None,
        ProfileName.LDEVID: timedelta(days=cfg.ldevid_days),
    }
    labels = {label: LabelPolicy.from_config(label, data) for label, data in cfg.est_labels.items()}
    root_label = next(ca.key_label for ca in cas.values() if ca.role == "root")
    authority = Authority(
        engine,
        cfg.org,
        cas,
        credentials=CredentialKey(lambda: _credential_root(home, keystore, root_label)),
        clock=clock,
        hw_type=cfg.hw_type,
        lifetimes=lifetimes,
        labels=labels or dict(DEFAULT_LABELS),
    )
    token_keys.attach(authority, home)
    return authority
