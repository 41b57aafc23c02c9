"""The states a stored row can be in, as enums every layer may import.

They are `StrEnum`s: a member is the very string stored, so rows written before the enums existed
read back equal to them and no data migration is needed.
"""

from __future__ import annotations

from enum import StrEnum


class DeviceState(StrEnum):
    """AWS IoT's certificate/device states where they apply, plus the factory's test failure."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    #: On hold (certificateHold): its certificates are revoked until `devid unrevoke` lifts it.
    SUSPENDED = "SUSPENDED"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"
    FAILED_TEST = "FAILED_TEST"


class CertificateStatus(StrEnum):
    """A certificate is valid until replaced by a renewal (superseded) or revoked."""

    VALID = "valid"
    SUPERSEDED = "superseded"
    REVOKED = "revoked"


class ManufacturerState(StrEnum):
    """Whether a registered manufacturer CA's devices are accepted."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
