"""The devid home: a folder holding `devid.toml`, the embedded store and software CA keys."""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from devid.errors import ConfigError, ConflictError, KeyAccessError, NotFoundError, PolicyError
from devid.fsutil import atomic_write, read_file

CONFIG_FILE = "devid.toml"
#: Default hwType for hardwareModuleName: an OID under the UUID arc (2.25, ITU-T X.667), which
#: needs no registration; deployments set their own per model.
DEFAULT_HW_TYPE = "2.25.223072830930129391093620427498329213458"


def default_home() -> Path:
    return Path(os.environ.get("DEVID_HOME") or "devid-home")


def refuse_non_directory(path: Path) -> None:
    """A home named by `--home` or `$DEVID_HOME` that exists must be a folder (else a clean error)."""
    if path.exists() and not path.is_dir():
        raise ConfigError("home-not-a-directory", f"devid home {path} is not a directory")


@dataclass
class Pkcs11Settings:
    module: str
    token: str
    pin_file: str

    def pin(self) -> str:
        pin = read_file(Path(self.pin_file), "PKCS#11 PIN").decode(errors="replace").strip()
        if not pin:
            raise KeyAccessError("pin-file", f"PKCS#11 PIN file {self.pin_file} is empty")
        return pin


@dataclass
class Config:
    org: str
    db_url: str
    key_backend: str
    key_prefix: str
    hw_type: str = DEFAULT_HW_TYPE
    pkcs11: Pkcs11Settings | None = None
    idevid_days: int = 0  # 0: notAfter 99991231235959Z
    ldevid_days: int = 365
    #: EST labels and their renewal policies (see devid.authority.policy); "" is the base path.
    est_labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The deployment's public base URL (`devid serve --public-url`): issued certificates name
    #: `<url>/ocsp` and their shard's CRL under `<url>/crl/`. Empty: they name neither.
    public_url: str = ""
    #: Session-token policy (issuer, audiences, scopes, lifetime): see devid.authority.token_keys.
    tokens: dict[str, Any] = field(default_factory=dict)

    def to_toml(self) -> bytes:
        data: dict[str, Any] = {k: v for k, v in asdict(self).items() if v is not None}
        return tomli_w.dumps(data).encode()

    @classmethod
    def from_toml(cls, text: str, path: Path) -> Config:
        try:
            data = tomllib.loads(text)
            pkcs11 = data.pop("pkcs11", None)
            # Homes made before software secure elements had device-local keys carry a sealing salt.
            data.pop("se_salt", None)
            return cls(**data, pkcs11=Pkcs11Settings(**pkcs11) if pkcs11 else None)
        except (tomllib.TOMLDecodeError, TypeError) as exc:
            raise ConfigError("config-invalid", f"{path} is not a valid devid configuration: {exc}") from None


def check_public_url(text: str) -> str:
    """A deployment's public base URL: http(s), a host, no query; returned without a trailing `/`."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            "public-url", f"not a public base URL: {text!r} (http://host[:port][/path], no query)"
        )
    return text.strip().rstrip("/")


@dataclass
class Home:
    path: Path
    config: Config

    @property
    def keys_dir(self) -> Path:
        return self.path / "keys"

    @classmethod
    def load(cls, path: Path) -> Home:
        file = path / CONFIG_FILE
        refuse_non_directory(path)
        try:
            text = read_file(file, "configuration").decode(errors="replace")
        except NotFoundError:
            raise ConfigError(
                "home-missing", f"no devid home at {path} (no {CONFIG_FILE}): run `devid init`"
            ) from None
        return cls(path, Config.from_toml(text, file))

    def save(self) -> None:
        """Write the configuration back (atomically: a new file renamed over the old), readable by
        its owner only: its db_url may carry the database password."""
        atomic_write(self.path / CONFIG_FILE, self.config.to_toml(), mode=0o600)

    @classmethod
    def create(cls, path: Path, config: Config) -> Home:
        """Write the configuration of a new home; refuses if one is already there."""
        file = path / CONFIG_FILE
        refuse_non_directory(path)
        if file.exists():
            raise ConflictError("home-exists", f"{path} is already a devid home; nothing was changed")
        path.mkdir(parents=True, exist_ok=True)
        with open(file, "xb") as fh:
            fh.write(config.to_toml())
        return cls(path, config)


#: The shortest passphrase devid accepts when one is set (`devid init`); opening keeps working with
#: whatever an existing home was made with.
MIN_PASSPHRASE_LENGTH = 12


def check_new_passphrase(passphrase: bytes) -> None:
    """Refuse a new passphrase shorter than MIN_PASSPHRASE_LENGTH characters (PolicyError)."""
    if len(passphrase.decode("utf-8", errors="replace")) < MIN_PASSPHRASE_LENGTH:
        raise PolicyError(
            "passphrase-too-short",
            f"the passphrase must be at least {MIN_PASSPHRASE_LENGTH} characters long: it protects "
            "the CA keys and every credential devid stores",
        )


def resolve_passphrase(passphrase_file: Path | None) -> bytes:
    """The passphrase from `--passphrase-file`, else `DEVID_PASSPHRASE`; refuses to go on without."""
    if passphrase_file is not None:
        value = read_file(passphrase_file, "passphrase").rstrip(b"\r\n")
    else:
        value = os.environ.get("DEVID_PASSPHRASE", "").encode()
    if not value:
        raise KeyAccessError(
            "passphrase-missing",
            "no passphrase: set DEVID_PASSPHRASE or pass --passphrase-file "
            "(devid will not keep keys unencrypted)",
        )
    return value
