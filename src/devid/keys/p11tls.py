"""TLS client authentication with a key that stays in a PKCS#11 token, through OpenSSL's pkcs11-provider.

Python's `ssl` loads a private key only from a file, and only through the OpenSSL providers the
process activated when `ssl` was first imported. So a device whose key is in a token needs:

- an OpenSSL configuration that activates the default provider and pkcs11-provider for the device's
  PKCS#11 module, naming a PIN *file* (`pkcs11-module-token-pin = file:...`: the PIN itself is never
  in the configuration, in argv or in the environment), with the quirks `no-deinit` (no C_Finalize at
  exit, which crashes processes that also use the module through python-pkcs11) and
  `no-operation-state`; it is written next to the device's files, mode 0600;
- `OPENSSL_CONF` pointing at that file in the environment of the process *before* `ssl` is imported
  (the `devid agent` command re-executes itself to arrange it: see devid.cli.agent_cmd);
- a PEM file of type `PKCS#11 PROVIDER URI` wrapping the key's RFC 7512 URI (the provider's decoder
  turns it into a key handle inside the token): that is what `load_cert_chain` gets as its key file.

The token key signs the TLS handshake inside the token; it stays SENSITIVE and non-EXTRACTABLE.
"""

from __future__ import annotations

import base64
import ctypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from devid.errors import ConfigError, KeyAccessError
from devid.fsutil import atomic_write

__all__ = [
    "CONF_FILE",
    "KEY_FILE",
    "ProviderFiles",
    "ProviderKey",
    "TokenTls",
    "check_pin_file",
    "provider_active",
    "provider_module",
    "uri_pem",
]

CONF_FILE = "openssl-pkcs11.cnf"
KEY_FILE = "tls-key-uri.pem"
PEM_LABEL = "PKCS#11 PROVIDER URI"
#: The description the provider's uri2pem tool writes; the provider's decoder checks it.
URI_DESCRIPTION = "PKCS#11 Provider URI v1.0"
#: Overrides where pkcs11-provider's module is looked for (else OpenSSL's own modules directory).
PROVIDER_ENV = "DEVID_PKCS11_PROVIDER"
INSTALL_HINT = (
    "install OpenSSL's pkcs11-provider (Debian 12: `apt-get install pkcs11-provider` from "
    "bookworm-backports; Debian 13 and Ubuntu 24.04: the main archive)"
)
_OPENSSL_MODULES_DIR = 8  # OpenSSL_version(OPENSSL_MODULES_DIR)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def uri_pem(uri: str) -> bytes:
    """The provider's PEM wrapper of a key URI: SEQUENCE { VisibleString desc, UTF8String uri }."""
    if not uri.startswith("pkcs11:"):
        raise ValueError(f"not a PKCS#11 URI: {uri!r}")
    der = _der(0x30, _der(0x1A, URI_DESCRIPTION.encode("ascii")) + _der(0x0C, uri.encode("utf-8")))
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {PEM_LABEL}-----\n{body}-----END {PEM_LABEL}-----\n".encode("ascii")


def _libcrypto() -> ctypes.CDLL | None:
    """The libcrypto Python's `ssl` is linked with (the one whose providers matter), if it can be found."""
    import ssl  # noqa: F401  (maps libcrypto into the process)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if Path(path).name.startswith("libcrypto.so"):
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


def modules_dir() -> Path | None:
    """OpenSSL's provider modules directory ($OPENSSL_MODULES, else the one libcrypto was built with)."""
    if os.environ.get("OPENSSL_MODULES"):
        return Path(os.environ["OPENSSL_MODULES"])
    lib = _libcrypto()
    if lib is None:
        return None
    lib.OpenSSL_version.restype = ctypes.c_char_p
    lib.OpenSSL_version.argtypes = [ctypes.c_int]
    text = (lib.OpenSSL_version(_OPENSSL_MODULES_DIR) or b"").decode(errors="replace")
    # 'MODULESDIR: "/usr/lib/x86_64-linux-gnu/ossl-modules"'
    return Path(text.split('"')[1]) if text.count('"') >= 2 else None


def provider_module() -> Path:
    """The pkcs11-provider module file, or a ConfigError naming what to install."""
    override = os.environ.get(PROVIDER_ENV)
    candidates = [Path(override)] if override else []
    if not override:
        directory = modules_dir()
        if directory is not None:
            candidates.append(directory / "pkcs11.so")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(map(str, candidates)) or "OpenSSL's modules directory (unknown)"
    raise ConfigError(
        "se-tls-unsupported",
        f"this device's key is in a PKCS#11 token and TLS client authentication from the token needs "
        f"OpenSSL's pkcs11-provider, which is not installed (looked at {looked}): {INSTALL_HINT}",
    )


def provider_active(name: str = "pkcs11") -> bool | None:
    """Whether provider `name` is active in this process's OpenSSL (None: cannot tell)."""
    lib = _libcrypto()
    if lib is None or not hasattr(lib, "OSSL_PROVIDER_available"):
        return None
    lib.OSSL_PROVIDER_available.restype = ctypes.c_int
    lib.OSSL_PROVIDER_available.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return bool(lib.OSSL_PROVIDER_available(None, name.encode()))


def check_pin_file(pin_file: Path) -> Path:
    """The PIN file as an absolute path; refused when missing or readable by group or others."""
    try:
        mode = pin_file.stat().st_mode
    except OSError as exc:
        raise KeyAccessError("pin-file", f"cannot read PKCS#11 PIN file {pin_file}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise KeyAccessError("pin-file", f"PKCS#11 PIN file {pin_file} is not a regular file")
    if mode & 0o077:
        raise KeyAccessError(
            "pin-file-permissions",
            f"PKCS#11 PIN file {pin_file} is readable by others (mode {stat.S_IMODE(mode):o}): "
            f"chmod 600 {pin_file}",
        )
    return pin_file.resolve()


def conf_value(value: str) -> str:
    """A path as an OpenSSL configuration value (no way to quote newlines; `$` would expand)."""
    if any(c in value for c in "\n\r\"'$#\\"):
        raise ConfigError("se-tls-path", f"path {value!r} cannot be written into an OpenSSL configuration")
    return value


def openssl_conf(provider: Path, pkcs11_module: Path, pin_file: Path) -> bytes:
    return (
        "# Written by devid for TLS client authentication with a key in a PKCS#11 token.\n"
        "# No PIN here: the provider reads it from the PIN file, which only its owner can read.\n"
        "openssl_conf = openssl_init\n\n"
        "[openssl_init]\nproviders = provider_sect\n\n"
        "[provider_sect]\ndefault = default_sect\npkcs11 = pkcs11_sect\n\n"
        "[default_sect]\nactivate = 1\n\n"
        "[pkcs11_sect]\n"
        f"module = {conf_value(str(provider))}\n"
        f"pkcs11-module-path = {conf_value(str(pkcs11_module))}\n"
        f"pkcs11-module-token-pin = file:{conf_value(str(pin_file))}\n"
        "pkcs11-module-quirks = no-deinit no-operation-state\n"
        "activate = 1\n"
    ).encode()


@dataclass(frozen=True)
class ProviderKey:
    """A private key the TLS stack reaches through an OpenSSL provider (pkcs11-provider: `pem_file`
    wraps its URI; tpm2: `pem_file` is the TPM's wrapped key blob) that `conf_file` activates."""

    what: str
    pem_file: Path
    conf_file: Path


@dataclass(frozen=True)
class ProviderFiles:
    """Where the OpenSSL configuration activating a provider and the key's PEM for it are written."""

    directory: Path
    conf_name: ClassVar[str] = CONF_FILE
    key_name: ClassVar[str] = KEY_FILE

    @property
    def conf_file(self) -> Path:
        return self.directory / self.conf_name

    @property
    def key_file(self) -> Path:
        return self.directory / self.key_name


@dataclass(frozen=True)
class TokenTls(ProviderFiles):
    """The files a process needs to authenticate TLS with one token key, written in `directory`."""

    pkcs11_module: str
    uri: str
    pin_file: Path

    def prepare(self) -> ProviderKey:
        """Write (only when changed) the OpenSSL configuration and the key's URI PEM, both 0600."""
        pin_file = check_pin_file(self.pin_file)
        module = Path(self.pkcs11_module)
        if not module.is_file():
            raise KeyAccessError("pkcs11-module", f"PKCS#11 module {module} does not exist")
        wanted = {
            self.conf_file: openssl_conf(provider_module(), module.resolve(), pin_file),
            self.key_file: uri_pem(self.uri),
        }
        for path, data in wanted.items():
            if not path.exists() or path.read_bytes() != data or stat.S_IMODE(path.stat().st_mode) != 0o600:
                atomic_write(path, data, mode=0o600)
        return self.provider_key()

    def provider_key(self) -> ProviderKey:
        """What the TLS context loads (the files `prepare` writes)."""
        return ProviderKey(f"the token key {self.uri} through pkcs11-provider", self.key_file, self.conf_file)

    def environment(self) -> dict[str, str]:
        """What the environment of a process needs (set before `ssl` is imported) to use the key."""
        return {"OPENSSL_CONF": str(self.conf_file)}

    def require_in_effect(self) -> None:
        if os.environ.get("OPENSSL_CONF") != str(self.conf_file):
            raise ConfigError(
                "se-tls-provider",
                f"TLS with the token key needs OPENSSL_CONF={self.conf_file} in the environment before "
                "Python's ssl module is imported (the `devid agent` command arranges it itself)",
            )
        if provider_active() is False:
            raise ConfigError(
                "se-tls-provider",
                f"OpenSSL did not activate pkcs11-provider from {self.conf_file}: "
                f"check that file and the provider ({INSTALL_HINT})",
            )
