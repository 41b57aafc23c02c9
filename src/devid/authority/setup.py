"""Creating a devid home (CA hierarchy, store, config) and opening the authority of an existing one."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Engine, insert

from devid.authority import token_keys
from devid.authority.core import Authority, IssuingCA
from devid.authority.policy import DEFAULT_LABELS, LabelPolicy
from devid.clock import Clock, SystemClock
from devid.config import Config, Home, Pkcs11Settings
from devid.errors import ConfigError, ConflictError
from devid.keys.base import KeyStore
from devid.keys.software import Sealer, SoftwareKeyStore
from devid.pki.profiles import PROFILES, ProfileName, Template, ca_subject, self_signed_template
from devid.pki.serials import random_serial, serial_hex
from devid.store import audit, repo
from devid.store.engine import check_schema, make_engine, migrate, reading, writing

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


def sealer_for(home: Home, passphrase: bytes) -> Sealer:
    return Sealer(passphrase, bytes.fromhex(home.config.se_salt))


def init_home(
    path: Path,
    *,
    org: str,
    passphrase: bytes,
    db_url: str | None = None,
    key_backend: str = "software",
    pkcs11: Pkcs11Settings | None = None,
    clock: Clock | None = None,
) -> Home:
    """Create config, store and CA hierarchy; refuse an existing home and leave nothing behind on failure."""
    clock = clock or SystemClock()
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
    config = Config(
        org=org,
        db_url=db_url or f"sqlite:///{(path / 'devid.db').resolve()}",
        key_backend=key_backend,
        se_salt=os.urandom(16).hex(),
        key_prefix=f"devid-{os.urandom(4).hex()}-",
        pkcs11=pkcs11,
        est_labels={label: policy.to_config() for label, policy in DEFAULT_LABELS.items()},
    )
    home = Home(path, config)
    try:
        keystore = keystore_for(home, passphrase)
        engine = make_engine(config.db_url)
        migrate(engine)
        with reading(engine) as conn:
            if repo.count(conn, repo.cas):
                raise ConflictError("store-not-empty", "the database already holds a devid CA hierarchy")
        _create_hierarchy(engine, keystore, home, clock)
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


def _create_hierarchy(engine: Engine, keystore: KeyStore, home: Home, clock: Clock) -> None:
    now = clock.now()
    org = home.config.org
    made: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    rows, events = [], []
    for ca_id, (name, role, parent, profile_name, cn) in enumerate(HIERARCHY, start=1):
        label = home.config.key_prefix + name
        key = keystore.generate(label)
        subject = ca_subject(org, f"{org} {cn}")
        profile = PROFILES[profile_name]
        if name == "operational":
            profile = profile.with_validity(OPERATIONAL_CA_LIFETIME)
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
    with writing(engine) as conn:
        conn.execute(insert(repo.cas), rows)
        audit.append(conn, events, now)


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
            row.id, row.name, row.role, x509.load_der_x509_certificate(row.der), row.key_label, keystore
        )
        for row in ca_rows
    }
    cfg = home.config
    lifetimes: dict[ProfileName, timedelta | None] = {
        ProfileName.IDEVID: timedelta(days=cfg.idevid_days) if cfg.idevid_days else None,
        ProfileName.LDEVID: timedelta(days=cfg.ldevid_days),
    }
    labels = {label: LabelPolicy.from_config(label, data) for label, data in cfg.est_labels.items()}
    authority = Authority(
        engine,
        cfg.org,
        cas,
        clock=clock,
        hw_type=cfg.hw_type,
        lifetimes=lifetimes,
        labels=labels or dict(DEFAULT_LABELS),
    )
    token_keys.attach(authority, home)
    return authority
