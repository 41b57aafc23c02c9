"""Making the secure element of a device on the line, whichever backend the line uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devid.config import Pkcs11Settings
from devid.errors import ConfigError
from devid.keys.base import SecureElement
from devid.keys.software import SoftwareSecureElement

BACKENDS = ("software", "pkcs11", "tpm")


@dataclass(frozen=True)
class SecureElementSpec:
    """Which secure element the line fits; picklable, so worker processes can rebuild it."""

    backend: str
    pkcs11: Pkcs11Settings | None = None
    #: The TPM's TCTI (tpm2-tss syntax, e.g. device:/dev/tpmrm0 or tabrmd:bus_type=session).
    tcti: str | None = None

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                "se-backend", f"unknown secure element {self.backend!r}: use {', '.join(BACKENDS)}"
            )
        if self.backend == "pkcs11" and self.pkcs11 is None:
            raise ConfigError("se-pkcs11", "a pkcs11 secure element needs a module, token and PIN file")
        if self.backend == "tpm" and not self.tcti:
            raise ConfigError("se-tpm", "a tpm secure element needs the TPM's TCTI")


class SecureElementMaker:
    """Creates new elements (factory) and opens existing ones (tests, the device agent)."""

    def __init__(self, spec: SecureElementSpec) -> None:
        spec.validate()
        self.spec = spec
        self._pin = spec.pkcs11.pin() if spec.pkcs11 else ""
        if spec.pkcs11 is not None:
            # Log in now, once: a wrong PIN or token label stops the line before any device, and a
            # real token, which locks its PIN after a few failed logins, is not tried per device.
            from devid.keys.pkcs11 import open_token

            open_token(spec.pkcs11.module, spec.pkcs11.token, self._pin)
        if spec.backend == "tpm":
            # Likewise an absent or failing TPM stops the line before any device.
            from devid.keys.tpm import open_tpm

            assert spec.tcti is not None
            open_tpm(spec.tcti)

    def create(self, directory: Path, device_serial: str) -> SecureElement:
        if self.spec.backend == "software":
            return SoftwareSecureElement.create(directory, durable=False)
        if self.spec.backend == "tpm":
            from devid.keys.tpm import TpmSecureElement

            assert self.spec.tcti is not None
            return TpmSecureElement.create(directory, self.spec.tcti)
        from devid.keys.pkcs11 import Pkcs11SecureElement

        assert self.spec.pkcs11 is not None
        p = self.spec.pkcs11
        return Pkcs11SecureElement.create(p.module, p.token, self._pin, device_serial)

    def open(self, directory: Path, device_serial: str) -> SecureElement:
        if self.spec.backend == "software":
            return SoftwareSecureElement.open(directory)
        if self.spec.backend == "tpm":
            from devid.keys.tpm import TpmSecureElement

            assert self.spec.tcti is not None
            return TpmSecureElement.open(directory, self.spec.tcti)
        from devid.keys.pkcs11 import Pkcs11SecureElement

        assert self.spec.pkcs11 is not None
        p = self.spec.pkcs11
        return Pkcs11SecureElement.open(p.module, p.token, self._pin, device_serial)
