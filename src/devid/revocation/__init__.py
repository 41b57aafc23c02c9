"""Revocation data: CRLs (full, delta, partitioned), OCSP responses, the revocation filter and
allowlist snapshots. Built from the store's record, signed only through the authority."""
