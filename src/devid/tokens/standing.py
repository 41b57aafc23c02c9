"""Whether a verified session token is still active (RFC 7662's `active`): its signature and
times say what was true when it was issued; its holder's standing says what is true now. A
token bound to a revoked certificate, or held by a device that is no longer ACTIVE (revoked,
suspended, disabled), verifies as inactive: revocation ends sessions too, not only certificates."""

from __future__ import annotations

from devid.authority.core import Authority
from devid.store import repo
from devid.store.engine import reading
from devid.store.states import CertificateStatus, DeviceState
from devid.tokens.claims import TokenClaims, b64url_decode


def inactive_reason(authority: Authority, claims: TokenClaims) -> str | None:
    """None while the token's certificate is unrevoked and its device ACTIVE; else why not."""
    if claims.x5t_s256 is None:
        return "token-unbound"
    fingerprint = b64url_decode(claims.x5t_s256).hex()
    with reading(authority.engine) as conn:
        row = repo.certificate_by_fingerprint(conn, fingerprint)
    if row is None:
        return "certificate-unknown"
    if row.status == CertificateStatus.REVOKED:
        return "certificate-revoked"
    if row.device_state is not None and row.device_state != DeviceState.ACTIVE:
        return f"device-{str(row.device_state).lower().replace('_', '-')}"
    return None
