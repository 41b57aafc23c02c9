"""Keeps the server's TLS trust in step with the registry.

Python's `ssl` cannot accept an unknown client chain and judge it later, so a device of a newly
registered manufacturer would fail the handshake until its CA is in the context. A live context
takes new CAs at once (`load_verify_locations` affects new handshakes); this task adds every
manufacturer CA and group signing certificate the registry has, checking the store's registry
generation every second, so a registration made by any process is trusted without a restart.
Removing trust needs no context swap: a deactivated manufacturer's devices still complete the
handshake and are refused by the application with a reason.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from cryptography.hazmat.primitives import serialization

from devid.pki.encoding import fingerprint
from devid.registry.onboarding import Registry

log = logging.getLogger("devid.web")


class TrustSync:
    def __init__(self, registry: Registry, context: ssl.SSLContext) -> None:
        self.registry = registry
        self.context = context
        self._loaded: set[str] = set()
        self._generation = -1

    def refresh(self) -> int:
        """Load anchors the context does not have yet; the number added."""
        snap = self.registry.snapshot()
        if snap.generation == self._generation:
            return 0
        added = 0
        for cert in snap.trust_anchors():
            der = cert.public_bytes(serialization.Encoding.DER)
            fp = fingerprint(der)
            if fp not in self._loaded:
                self.context.load_verify_locations(cadata=der)
                self._loaded.add(fp)
                added += 1
        self._generation = snap.generation
        return added

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                added = await asyncio.to_thread(self.refresh)
                if added:
                    log.info("trusting %d new manufacturer or enrollment CA certificate(s)", added)
            except Exception:  # the store may be briefly unreachable: keep the last trust, retry
                log.exception("cannot refresh TLS trust from the registry")
            await asyncio.sleep(interval)
