"""devid's signed revocation filter and allowlist as the gateway's snapshot formats.

A filter answers by the dense index inside a certificate's serial; a certificate issued after the
filter was built is NOT_COVERED, which the gateway takes as good (it could not have been revoked
when the filter was made; the next update says otherwise), while a serial that carries no index
at all (a certificate made before indices) is UNKNOWN. An allowlist names the CAs it covers by
their key identifier (hex), which the gateway reads off the issuer certificate it checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from devid.errors import PolicyError
from devid.gateway.status import CertRef, Verdict
from devid.pki.chain import key_identifier as ca_key_id
from devid.pki.serials import serial_index
from devid.revocation.allowlist import Allowlist, load_allowlist
from devid.revocation.filter import FilterAnswer, RevocationFilter, load_filter


def _ec(public_key: CertificatePublicKeyTypes) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PolicyError("filter-key", "status snapshots are signed with P-256 CA keys")
    return public_key


@dataclass(frozen=True)
class FilterSnapshot:
    view: RevocationFilter

    @property
    def version(self) -> int:
        return self.view.version

    def verdict(self, ref: CertRef) -> Verdict:
        answer = self.view.check_serial(ref.serial)
        if answer is FilterAnswer.REVOKED:
            return Verdict.REVOKED
        if answer is FilterAnswer.NOT_COVERED and serial_index(ref.serial) is None:
            return Verdict.UNKNOWN
        return Verdict.GOOD

    def apply(self, delta: bytes, public_key: CertificatePublicKeyTypes) -> FilterSnapshot:
        # The view keeps the key it was verified with; a delta signed by another is refused.
        return FilterSnapshot(self.view.apply(delta))


class FilterFormat:
    def load(self, data: bytes, public_key: CertificatePublicKeyTypes) -> FilterSnapshot:
        return FilterSnapshot(load_filter(data, _ec(public_key)))


@dataclass(frozen=True)
class AllowlistSnapshot:
    view: Allowlist

    @property
    def version(self) -> int:
        return self.view.version

    def verdict(self, ref: CertRef) -> Verdict:
        return Verdict.GOOD if self.view.admits(ca_key_id(ref.issuer), ref.serial) else Verdict.UNKNOWN

    def apply(self, delta: bytes, public_key: CertificatePublicKeyTypes) -> AllowlistSnapshot:
        return AllowlistSnapshot(self.view.apply(delta))


class AllowlistFormat:
    def load(self, data: bytes, public_key: CertificatePublicKeyTypes) -> AllowlistSnapshot:
        return AllowlistSnapshot(load_allowlist(data, _ec(public_key)))
