"""Renewal policies: how long an operational identity lives and when a device renews it.

Four field-proven options, chosen per EST label (and per enrollment group later):
`long-lived` (N years, never renewed), `renew` (renew at a fraction of the lifetime, default 2/3,
with per-device jitter so a fleet does not renew in one wave), `short-lived` (days; expiry is the
revocation: a device that was offline past expiry re-enrolls with its IDevID, if still in good
standing), and `session` (no LDevID at all: a short session certificate at each connection).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from devid.errors import ConfigError
from devid.pki.profiles import ProfileName


class RenewalPolicy(StrEnum):
    LONG_LIVED = "long-lived"
    RENEW = "renew"
    SHORT_LIVED = "short-lived"
    SESSION = "session"


@dataclass(frozen=True)
class LabelPolicy:
    """The policy of one EST label (`""` is the unlabelled base path)."""

    label: str
    policy: RenewalPolicy
    lifetime: timedelta
    renew_fraction: float = 2 / 3
    jitter_fraction: float = 0.05
    approval: bool = False
    #: SCEP on this label accepts RSA-2048/3072 device keys too (`devid scep allow-rsa`): the one
    #: deviation from ECC-only, for legacy SCEP clients; such certificates get the `scep-rsa` profile.
    scep_rsa: bool = False

    @property
    def profile(self) -> ProfileName:
        return ProfileName.SESSION if self.policy is RenewalPolicy.SESSION else ProfileName.LDEVID

    @property
    def short_lived(self) -> bool:
        """Certificates of this policy never enter a CRL: they expire before one would matter."""
        return self.policy in (RenewalPolicy.SHORT_LIVED, RenewalPolicy.SESSION)

    @property
    def idevid_fallback(self) -> bool:
        """Whether a device may re-enroll with its IDevID after its operational identity expired."""
        return self.policy in (RenewalPolicy.SHORT_LIVED, RenewalPolicy.RENEW, RenewalPolicy.SESSION)

    def renew_at(self, not_before: datetime, not_after: datetime, device_serial: str) -> datetime | None:
        """When this device should renew a certificate of this validity; None: never.

        The jitter is a stable function of the device serial (not random per call), so a device
        that restarts computes the same moment, and the fleet spreads evenly around the target.
        """
        if self.policy is RenewalPolicy.LONG_LIVED:
            return None
        life = not_after - not_before
        digest = hashlib.sha256(device_serial.encode()).digest()
        spread = (int.from_bytes(digest[:8], "big") / 2**64) * 2 - 1  # in [-1, 1)
        fraction = min(max(self.renew_fraction + spread * self.jitter_fraction, 0.05), 0.95)
        return not_before + life * fraction

    def to_config(self) -> dict[str, Any]:
        scep = {"scep_rsa": True} if self.scep_rsa else {}
        return scep | {
            "policy": self.policy.value,
            "lifetime_hours": self.lifetime / timedelta(hours=1),
            "renew_fraction": self.renew_fraction,
            "jitter_fraction": self.jitter_fraction,
            "approval": self.approval,
        }

    @classmethod
    def from_config(cls, label: str, data: dict[str, Any]) -> LabelPolicy:
        try:
            policy = cls(
                label,
                RenewalPolicy(data["policy"]),
                timedelta(hours=float(data["lifetime_hours"])),
                float(data.get("renew_fraction", 2 / 3)),
                float(data.get("jitter_fraction", 0.05)),
                bool(data.get("approval", False)),
                bool(data.get("scep_rsa", False)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                "policy-invalid", f"EST label {label!r}: invalid renewal policy ({exc})"
            ) from None
        if not 0 < policy.renew_fraction < 1 or not 0 <= policy.jitter_fraction < 0.5:
            raise ConfigError(
                "policy-invalid", f"EST label {label!r}: renew_fraction in (0,1), jitter in [0,0.5)"
            )
        return policy


#: The labels a new home starts with; operators edit them in devid.toml.
DEFAULT_LABELS: dict[str, LabelPolicy] = {
    p.label: p
    for p in (
        LabelPolicy("", RenewalPolicy.RENEW, timedelta(days=365)),
        LabelPolicy("long", RenewalPolicy.LONG_LIVED, timedelta(days=5 * 365)),
        LabelPolicy("short", RenewalPolicy.SHORT_LIVED, timedelta(days=30)),
        LabelPolicy("session", RenewalPolicy.SESSION, timedelta(hours=1)),
    )
}
