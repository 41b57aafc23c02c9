"""The credential key: what makes a stored credential worth something only with the CA secret.

API tokens, enrollment secrets and registration codes are stored as HMAC-SHA256 values under a
key that only the unlocked authority holds, so whoever can write the database but lacks the
passphrase (or the HSM PIN) cannot add a credential devid would honour; sink secrets and broker
passwords are sealed (AES-256-GCM) under the same key, so a database dump does not reveal them.

The root is one random 256-bit secret key in the keystore, beside the CA keys: with software keys
a file sealed under the passphrase, with PKCS#11 a generic secret key inside the token that never
leaves it. Each use has its own purpose label, and its own subkey, HMAC(root, label), computed once
per process (one HMAC inside the token, not one per request), so a MAC made for one kind of
credential is never valid as another. A random 256-bit credential needs no salt or stretching:
there is nothing to guess, so one HMAC per check keeps lookups by the MAC itself (unique index).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from enum import StrEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devid.errors import KeyAccessError
from devid.keys.base import SecretKey

#: The credential key's label suffix in the keystore (`<key_prefix>credential-key`).
KEY_NAME = "credential-key"
_DOMAIN = b"devid credential key v1: "
#: Sealed values start with this, so values stored in clear by an older devid are recognised.
SEALED_PREFIX = b"devid-sealed-v1:"


class Purpose(StrEnum):
    """What a MAC or a sealed value is for; each has its own subkey."""

    API_TOKEN = "api-token"
    ENROLLMENT_SECRET = "enrollment-secret"
    REGISTRATION_CODE = "registration-code"
    SINK_SECRET = "sink-secret"
    UI_SESSION = "ui-session"
    SCEP_TRANSACTION = "scep-transaction"


def legacy_digest(value: str) -> str:
    """How devid stored credentials before they were keyed (SHA-256, hex): found only to say so."""
    return hashlib.sha256(value.encode()).hexdigest()


class CredentialKey:
    """MACs and sealing under the authority's credential key, opened on first use."""

    def __init__(self, open_root: Callable[[], SecretKey]) -> None:
        self._open_root = open_root
        self._subkeys: dict[Purpose, bytes] = {}
        self._lock = threading.Lock()

    def _subkey(self, purpose: Purpose) -> bytes:
        key = self._subkeys.get(purpose)
        if key is None:
            with self._lock:
                key = self._subkeys.get(purpose)
                if key is None:
                    key = self._open_root().hmac_sha256(_DOMAIN + purpose.value.encode())
                    self._subkeys[purpose] = key
        return key

    def mac(self, purpose: Purpose, value: str) -> str:
        """HMAC-SHA256 of `value` for `purpose`, hex: what the store keeps and looks up."""
        return hmac.new(self._subkey(purpose), value.encode(), hashlib.sha256).hexdigest()

    def seal(self, purpose: Purpose, plaintext: bytes, context: bytes) -> bytes:
        """AES-256-GCM under the purpose's subkey; `context` (e.g. the row's name) is bound to it."""
        nonce = os.urandom(12)
        return SEALED_PREFIX + nonce + AESGCM(self._subkey(purpose)).encrypt(nonce, plaintext, context)

    def open(self, purpose: Purpose, sealed: bytes, context: bytes) -> bytes:
        body = sealed.removeprefix(SEALED_PREFIX)
        try:
            return AESGCM(self._subkey(purpose)).decrypt(body[:12], body[12:], context)
        except InvalidTag:
            raise KeyAccessError(
                "sealed-value", f"a sealed {purpose.value} does not open: another credential key or tampered"
            ) from None
