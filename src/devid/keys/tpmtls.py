"""TLS client authentication with a key that stays in a TPM, through OpenSSL's tpm2 provider
(tpm2-openssl).

As with a PKCS#11 token (devid.keys.p11tls), Python's `ssl` uses only the providers active when it is
first imported, so the process must start with OPENSSL_CONF naming a configuration that activates
the tpm2 provider (with the TPM's TCTI) *before* the default provider: OpenSSL 3.0 takes the
signature from the first provider offering it, and the default one cannot sign with a TPM key.
The key file `load_cert_chain` gets is the TPM's wrapped key blob (`TSS2 PRIVATE KEY` PEM), which the
provider loads into the TPM; the private key is never outside it.

The provider hashes in the TPM too and holds several objects during a handshake, more than the three
transient slots of a TPM: the TPM must be reached through a resource manager that swaps objects,
tpm2-abrmd (TCTI `tabrmd:`), as tpm2-openssl's documentation says; the kernel's /dev/tpmrm0 is not
enough.

Nothing here loads a TPM library: this module only writes files and checks the process.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from devid.errors import ConfigError, KeyAccessError
from devid.fsutil import atomic_write
from devid.keys.p11tls import ProviderFiles, ProviderKey, conf_value, modules_dir, provider_active

__all__ = ["CONF_FILE", "DEFAULT_TCTI", "KEY_FILE", "TCTI_ENV", "TpmTls", "provider_module"]

CONF_FILE = "openssl-tpm2.cnf"
KEY_FILE = "tpm-key.pem"
#: A Linux TPM behind the kernel's resource manager (TLS needs tpm2-abrmd: tabrmd:bus_type=system).
DEFAULT_TCTI = "device:/dev/tpmrm0"
#: Where devid finds the TPM's TCTI when --se-tcti is not given.
TCTI_ENV = "DEVID_TPM_TCTI"
#: The variable tpm2-openssl reads the TCTI from.
TCTI_PROVIDER_ENV = "TPM2OPENSSL_TCTI"
#: Overrides where the tpm2 provider module is looked for (else OpenSSL's modules directory).
PROVIDER_ENV = "DEVID_TPM2_PROVIDER"
INSTALL_HINT = "apt-get install tpm2-openssl tpm2-abrmd (the provider and a TPM resource manager)"


def provider_module() -> Path:
    """The tpm2 provider module file, or a ConfigError naming what to install."""
    override = os.environ.get(PROVIDER_ENV)
    directory = None if override else modules_dir()
    candidate = Path(override) if override else (directory / "tpm2.so" if directory else None)
    if candidate is not None and candidate.is_file():
        return candidate.resolve()
    raise ConfigError(
        "se-tls-unsupported",
        f"this device's key is in a TPM and TLS client authentication with it needs OpenSSL's tpm2 "
        f"provider, which is not installed (looked at {candidate or 'an unknown modules directory'}): "
        f"{INSTALL_HINT}",
    )


def openssl_conf(provider: Path) -> bytes:
    return (
        "# Written by devid for TLS client authentication with a key in a TPM.\n"
        "# tpm2 comes first: OpenSSL 3.0 signs with the first provider offering the algorithm.\n"
        "openssl_conf = openssl_init\n\n"
        "[openssl_init]\nproviders = provider_sect\n\n"
        "[provider_sect]\ntpm2 = tpm2_sect\ndefault = default_sect\n\n"
        "[tpm2_sect]\n"
        f"module = {conf_value(str(provider))}\n"
        "activate = 1\n\n"
        "[default_sect]\nactivate = 1\n"
    ).encode()


@dataclass(frozen=True)
class TpmTls(ProviderFiles):
    """The files a process needs to authenticate TLS with a device's TPM key, in its folder."""

    tcti: str
    conf_name: ClassVar[str] = CONF_FILE
    key_name: ClassVar[str] = KEY_FILE

    def _key_pem(self) -> bytes:
        state = json.loads((self.directory / "se.json").read_text())
        if state.get("backend") != "tpm":
            raise KeyAccessError("se-backend", f"the secure element in {self.directory} is not a TPM key")
        return str(state["key"]).encode()

    def prepare(self) -> ProviderKey:
        """Write (only when changed) the OpenSSL configuration and the key blob PEM, both 0600."""
        wanted = {
            self.conf_file: openssl_conf(provider_module()),
            self.key_file: self._key_pem(),
        }
        for path, data in wanted.items():
            if not path.exists() or path.read_bytes() != data or stat.S_IMODE(path.stat().st_mode) != 0o600:
                atomic_write(path, data, mode=0o600)
        return self.provider_key()

    def provider_key(self) -> ProviderKey:
        return ProviderKey(
            f"the TPM key of {self.directory.name} through the tpm2 provider", self.key_file, self.conf_file
        )

    def environment(self) -> dict[str, str]:
        """What the environment of a process needs (set before `ssl` is imported) to use the key. The
        TCTI goes in the provider's own variable: tpm2-openssl 1.1.1 did not reach the TPM with the
        `tcti` parameter of its configuration section (measured: a tabrmd TCTI failed to connect)."""
        return {"OPENSSL_CONF": str(self.conf_file), TCTI_PROVIDER_ENV: self.tcti}

    def require_in_effect(self) -> None:
        for name, value in self.environment().items():
            if os.environ.get(name) != value:
                raise ConfigError(
                    "se-tls-provider",
                    f"TLS with the TPM key needs {name}={value} in the environment before Python's ssl "
                    "module is imported (the `devid agent` command arranges it itself)",
                )
        if provider_active("tpm2") is False:
            raise ConfigError(
                "se-tls-provider",
                f"OpenSSL did not activate the tpm2 provider from {self.conf_file}: check that file, "
                f"the provider ({INSTALL_HINT}) and that a TPM answers at {self.tcti}",
            )
