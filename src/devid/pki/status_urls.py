"""Where a deployment publishes status data: the paths certificates and CRLs point to.

One layout for the server that serves them, the CA that writes them into certificates, and the
tools that fetch them; `base` is the deployment's public URL (`devid serve --public-url`).
"""

from __future__ import annotations

OCSP_PATH = "/ocsp"


def crl_path(ca: str, shard: int | None = None, *, delta: bool = False) -> str:
    """`/crl/<ca>.crl` (full), `/crl/<ca>/<shard>.crl` (one partition), `-delta` before `.crl`
    for the delta CRL against the latest base of the same scope."""
    stem = f"/crl/{ca}" if shard is None else f"/crl/{ca}/{shard}"
    return f"{stem}{'-delta' if delta else ''}.crl"


def url(base: str, path: str) -> str:
    return base.rstrip("/") + path
