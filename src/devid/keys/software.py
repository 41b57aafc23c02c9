"""Software keys: CA keys as encrypted PKCS#8 files, and a simulated secure element.

The simulated element keeps its state in the device folder, sealed with AES-256-GCM under a key
derived (scrypt, once per process) from the devid passphrase and a per-home salt, so a factory
run can provision thousands of devices a second while nothing lies on disk in clear.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from devid.errors import ConflictError, KeyAccessError, KeyExportRefused, NotFoundError
from devid.fsutil import atomic_write, write_new

_SIGN = ec.ECDSA(hashes.SHA256())


def encrypt_private_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def decrypt_private_key(pem: bytes, passphrase: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError):
        raise KeyAccessError("wrong-passphrase", f"cannot decrypt {what}: wrong passphrase") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyAccessError("key-type", f"{what} is not an EC key")
    return key


class SoftwareKeyStore:
    """CA keys as passphrase-encrypted PKCS#8 PEM files in one folder."""

    backend = "software"

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        self.directory = directory
        self._passphrase = passphrase

    def _path(self, label: str) -> Path:
        return self.directory / f"{label}.key.pem"

    def generate(self, label: str) -> ec.EllipticCurvePrivateKey:
        path = self._path(label)
        if path.exists():
            raise ConflictError("key-exists", f"a key named {label!r} already exists at {path}")
        key = ec.generate_private_key(ec.SECP256R1())
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, encrypt_private_key(key, self._passphrase))
        return key

    def load(self, label: str) -> ec.EllipticCurvePrivateKey:
        path = self._path(label)
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError("key-missing", f"CA key {label!r} not found at {path}") from None
        return decrypt_private_key(pem, self._passphrase, f"CA key {label!r}")

    def encrypt(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        """`key` as this store keeps its own (encrypted PKCS#8 PEM), for keeping elsewhere."""
        return encrypt_private_key(key, self._passphrase)

    def decrypt(self, pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
        """A key `encrypt` made, under this store's passphrase."""
        return decrypt_private_key(pem, self._passphrase, what)


@functools.lru_cache(maxsize=8)
def _master_key(passphrase: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase)


class Sealer:
    """AES-256-GCM sealing of secure-element state.

    One key per home (from scrypt over the passphrase), with the device folder's name as
    associated data: state moved to another device's folder does not open. Random 96-bit nonces
    stay far below the 2^32 messages NIST SP 800-38D allows per key.
    """

    def __init__(self, passphrase: bytes, salt: bytes) -> None:
        self.salt = salt
        self._aead = AESGCM(_master_key(passphrase, salt))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], context)
        except InvalidTag:
            raise KeyAccessError(
                "wrong-passphrase", "cannot open the secure element state: wrong passphrase or tampered state"
            ) from None


SE_STATE_FILE = "se.json"


class SoftwareSecureElement:
    """A simulated secure element whose state is sealed in `<device dir>/se.json`."""

    backend = "software"

    def __init__(
        self,
        directory: Path,
        sealer: Sealer,
        key: ec.EllipticCurvePrivateKey,
        slots: dict[str, bytes],
        durable: bool = True,
    ) -> None:
        self.directory = directory
        self._sealer = sealer
        self._key = key
        self._public = key.public_key()
        self._slots = slots
        self._durable = durable
        self._saved = (directory / SE_STATE_FILE).exists()

    @classmethod
    def create(
        cls, directory: Path, sealer: Sealer, *, durable: bool = True, persist: bool = True
    ) -> SoftwareSecureElement:
        """Generate a key inside a new element; the folder must not already hold one.

        `persist=False` defers the first write to the first slot write: a production line writes
        the element's state once, with the IDevID in its slot, instead of twice.
        """
        if (directory / SE_STATE_FILE).exists():
            raise ConflictError("se-exists", f"{directory} already holds a secure element")
        se = cls(directory, sealer, ec.generate_private_key(ec.SECP256R1()), {}, durable)
        if persist:
            se._save()
        return se

    @classmethod
    def open(cls, directory: Path, sealer: Sealer, *, durable: bool = True) -> SoftwareSecureElement:
        try:
            state = json.loads((directory / SE_STATE_FILE).read_text())
        except FileNotFoundError:
            raise NotFoundError("se-missing", f"no secure element state in {directory}") from None
        context = directory.name.encode()
        scalar = sealer.open(base64.b64decode(state["sealed_key"]), context)
        key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
        slots = {name: base64.b64decode(der) for name, der in state["slots"].items()}
        return cls(directory, sealer, key, slots, durable)

    def _save(self) -> None:
        scalar = self._key.private_numbers().private_value.to_bytes(32, "big")
        state = {
            "backend": self.backend,
            "salt": base64.b64encode(self._sealer.salt).decode(),
            "public_key": self._public.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            ).hex(),
            "sealed_key": base64.b64encode(self._sealer.seal(scalar, self.directory.name.encode())).decode(),
            "slots": {name: base64.b64encode(der).decode() for name, der in self._slots.items()},
        }
        data = json.dumps(state).encode()
        if self._saved:
            atomic_write(self.directory / SE_STATE_FILE, data, durable=self._durable)
        else:
            write_new(self.directory / SE_STATE_FILE, data)
            self._saved = True

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _SIGN)

    def sign_csr(self, builder: x509.CertificateSigningRequestBuilder) -> x509.CertificateSigningRequest:
        return builder.sign(self._key, hashes.SHA256())

    def write_slot(self, slot: str, cert_der: bytes) -> None:
        self._slots[slot] = cert_der
        self._save()

    def read_slot(self, slot: str) -> bytes | None:
        return self._slots.get(slot)

    def export_private_key(self) -> NoReturn:
        raise KeyExportRefused("key-export-refused", "the secure element never exports its private key")

    def discard(self) -> None:
        """Forget the element: its sealed state file goes (a device refused before its identity)."""
        (self.directory / SE_STATE_FILE).unlink(missing_ok=True)

    def tls_private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key for an in-memory TLS handshake: the one place a software element lends its key."""
        return self._key

    def reference(self) -> dict[str, Any]:
        return {"backend": self.backend, "state": SE_STATE_FILE}
