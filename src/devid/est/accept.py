"""Which certificate encoding an EST answer carries: the `Accept` header against what is offered.

The first offer is the default (PKCS#7 certs-only, what RFC 7030 clients expect): it answers a
request with no Accept header, a wildcard, or only types not offered. Another offer wins only
when the client names it with a higher quality, or as early with the same quality.
"""

from __future__ import annotations

from collections.abc import Sequence


def _base(media_type: str) -> str:
    return media_type.split(";", 1)[0].strip().lower()


def _quality(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return max(0.0, min(1.0, float(value.strip())))
            except ValueError:
                return 0.0
    return 1.0


def choose(accept: str | None, offers: Sequence[str]) -> str:
    """The offer `accept` prefers (`offers[0]` when it prefers none of the others)."""
    best, best_quality = offers[0], 0.0
    for media_range in (accept or "").split(","):
        wanted, *params = media_range.split(";")
        quality = _quality(params)
        wanted = wanted.strip().lower()
        if quality <= best_quality or not wanted:
            continue
        if wanted in ("*/*", "application/*"):
            found: str | None = offers[0]
        else:
            found = next((offer for offer in offers if _base(offer) == wanted), None)
        if found is not None:
            best, best_quality = found, quality
    return best
