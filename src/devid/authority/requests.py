"""Typed issuance requests and results, the authority's whole vocabulary with its callers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection

from devid.errors import PolicyError
from devid.pki.keypolicy import DeviceKey
from devid.pki.profiles import ProfileName

#: No `_`: the serial is the subject's serialNumber (2.5.4.5), a PrintableString, which has none.
_SERIAL_SYNTAX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,63}")


def check_device_serial(serial: str) -> str:
    """Device serials name folders, URLs and subjects: 1-64 of letters, digits and `.:-`."""
    if not _SERIAL_SYNTAX.fullmatch(serial):
        raise PolicyError(
            "device-serial-syntax",
            f"device serial {serial!r} is not 1-64 characters of letters, digits and . : - "
            "starting with a letter or digit",
        )
    return serial


@dataclass(frozen=True)
class NewDevice:
    """A device record created in the same transaction as its first certificate."""

    serial: str
    model: str | None = None
    lot: str | None = None
    line: str | None = None
    se_backend: str | None = None
    directory: str | None = None


@dataclass(frozen=True)
class MatterIds:
    """A Matter product: Vendor ID and Product ID (16 bits each). Its DACs come from the PAI of
    that product line, a CA named `matter-pai-<VID>-<PID>` in the store."""

    vid: int
    pid: int

    def __post_init__(self) -> None:
        for name, value in (("VID", self.vid), ("PID", self.pid)):
            if not 0 <= value <= 0xFFFF:
                raise PolicyError(f"matter-bad-{name.lower()}", f"{name} {value:#x} is not 16 bits")

    @property
    def pai_name(self) -> str:
        return pai_name(self.vid, self.pid)


def paa_name(vid: int | None) -> str:
    """The store's name for a Matter PAA: `matter-paa-FFF1`, or `matter-paa` naming no vendor."""
    return "matter-paa" if vid is None else f"matter-paa-{vid:04X}"


def pai_name(vid: int, pid: int) -> str:
    return f"matter-pai-{vid:04X}-{pid:04X}"


@dataclass(frozen=True)
class IssueRequest:
    """One certificate to issue. The public key must already have passed key policy or a CSR check."""

    profile: ProfileName
    public_key: DeviceKey
    device_serial: str | None = None
    new_device: NewDevice | None = None
    common_name: str | None = None
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    #: Validity chosen by a renewal policy, instead of the profile's default.
    lifetime: timedelta | None = None
    #: Issued under a short-lived policy: no CRL distribution point, never in a CRL (expiry and
    #: a refused renewal are its revocation); OCSP and the filter still answer for it.
    short_lived: bool = False
    #: Fingerprint of the certificate this one replaces (re-enrollment): it must be current, and
    #: is marked superseded in the same transaction.
    supersedes: str | None = None
    #: Supersede, in the same transaction, every valid certificate of this profile the device
    #: holds (an enrollment with the IDevID replaces the device's operational identity).
    supersedes_held: bool = False
    #: Writes that must commit with this certificate, run in its transaction before its device is
    #: looked up (a device registered just in time, its allocation); if they fail, the batch fails.
    prepare: Callable[[Connection, datetime], None] | None = field(default=None, compare=False)
    #: A Matter DAC's product: its VID/PID go into the subject, and its product line's PAI signs it.
    matter: MatterIds | None = None

    @property
    def serial_of_device(self) -> str | None:
        return self.new_device.serial if self.new_device else self.device_serial


@dataclass(frozen=True)
class Issued:
    """A certificate that is already committed to the store."""

    certificate: x509.Certificate
    der: bytes
    serial: int
    fingerprint: str
    profile: ProfileName
    issuer: str
    device_serial: str | None

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)
