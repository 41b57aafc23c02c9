"""Software keys: CA keys as encrypted PKCS#8 files, secret keys as passphrase-sealed files, and a
simulated secure element.

The simulated element keeps its state in the device folder, sealed with AES-256-GCM under the
device's own random 256-bit key (`se-device.key`, mode 0600, made with the element): it stands in
for the device-unique key a real secure element keeps in hardware, so the device never needs the
CA operator's passphrase. A random 256-bit key needs no stretching (no KDF), so a factory run still
provisions thousands of devices a second while no private key lies on disk in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from devid.errors import ConflictError, KeyAccessError, KeyExportRefused, NotFoundError
from devid.fsutil import atomic_write, write_new

_SIGN = ec.ECDSA(hashes.SHA256())


def encrypt_private_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, passphrase: bytes) -> bytes:
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


class SoftwareSecretKey:
    """A secret key in memory, opened from its passphrase-sealed file."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def hmac_sha256(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()


#: scrypt cost of a secret key file: about 0.1 s and 32 MiB, paid once by a process that opens it.
_SCRYPT = {"name": "scrypt", "n": 2**15, "r": 8, "p": 1}


def _kek(passphrase: bytes, kdf: dict[str, Any]) -> AESGCM:
    if kdf.get("name") != "scrypt":
        raise KeyAccessError("key-type", f"unknown key derivation {kdf.get('name')!r}")
    scrypt = Scrypt(salt=bytes.fromhex(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"])
    return AESGCM(scrypt.derive(passphrase))


class SoftwareKeyStore:
    """CA keys as passphrase-encrypted PKCS#8 PEM files, and secret keys, in one folder."""

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

    def rsa_decryption_key(self, label: str, bits: int = 2048) -> rsa.RSAPrivateKey:
        """The RSA key `label` (made on first use; two processes making it at once agree): for a
        protocol that encrypts to the authority with RSA key transport (SCEP), never for signing
        certificates."""
        path = self.directory / f"{label}.rsa.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            key = rsa.generate_private_key(65537, bits)
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                write_new(path, encrypt_private_key(key, self._passphrase))
                return key
            except FileExistsError:
                pem = path.read_bytes()
        try:
            loaded = serialization.load_pem_private_key(pem, password=self._passphrase)
        except (ValueError, TypeError):
            raise KeyAccessError(
                "wrong-passphrase", f"cannot decrypt key {label!r}: wrong passphrase"
            ) from None
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise KeyAccessError("key-type", f"key {label!r} is not an RSA key")
        return loaded

    def _secret_path(self, label: str) -> Path:
        return self.directory / f"{label}.secret.json"

    def encrypt(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        """`key` as this store keeps its own (encrypted PKCS#8 PEM), for keeping elsewhere."""
        return encrypt_private_key(key, self._passphrase)

    def decrypt(self, pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
        """A key `encrypt` made, under this store's passphrase."""
        return decrypt_private_key(pem, self._passphrase, what)

    def generate_secret(self, label: str) -> SoftwareSecretKey:
        """32 random bytes sealed with AES-256-GCM under scrypt(passphrase, random salt), the label as
        associated data; the file is created exclusively (0600), so two processes cannot both make it."""
        key, nonce = os.urandom(32), os.urandom(12)
        kdf = {**_SCRYPT, "salt": os.urandom(16).hex()}
        sealed = nonce + _kek(self._passphrase, kdf).encrypt(nonce, key, label.encode())
        state = {"kdf": kdf, "sealed": base64.b64encode(sealed).decode()}
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            write_new(self._secret_path(label), json.dumps(state).encode())
        except FileExistsError:
            raise ConflictError("key-exists", f"a secret key named {label!r} already exists") from None
        return SoftwareSecretKey(key)

    def load_secret(self, label: str) -> SoftwareSecretKey:
        path = self._secret_path(label)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFoundError("key-missing", f"secret key {label!r} not found at {path}") from None
        sealed = base64.b64decode(state["sealed"])
        try:
            key = _kek(self._passphrase, state["kdf"]).decrypt(sealed[:12], sealed[12:], label.encode())
            return SoftwareSecretKey(key)
        except InvalidTag:
            raise KeyAccessError(
                "wrong-passphrase", f"cannot decrypt secret key {label!r}: wrong passphrase"
            ) from None


SE_STATE_FILE = "se.json"
#: The device-local sealing key: 32 random bytes, mode 0600 (a hardware-fused key's stand-in).
DEVICE_KEY_FILE = "se-device.key"


class Sealer:
    """AES-256-GCM sealing of secure-element state under one device's own key.

    The device folder's name is the associated data: state moved to another device's folder does
    not open. Random 96-bit nonces stay far below the 2^32 messages NIST SP 800-38D allows per key.
    """

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._aead = AESGCM(key)

    @classmethod
    def new(cls) -> Sealer:
        return cls(os.urandom(32))

    @classmethod
    def of_device(cls, directory: Path) -> Sealer:
        """The sealer of the element in `directory`, from its device-local key file."""
        try:
            key = (directory / DEVICE_KEY_FILE).read_bytes()
        except FileNotFoundError:
            raise KeyAccessError(
                "se-device-key",
                f"{directory} has no {DEVICE_KEY_FILE}: its secure element was sealed by an older devid "
                "with the home's passphrase; provision the device again",
            ) from None
        if len(key) != 32:
            raise KeyAccessError("se-device-key", f"{directory / DEVICE_KEY_FILE} is not a 256-bit key")
        return cls(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, blob: bytes, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], context)
        except InvalidTag:
            raise KeyAccessError(
                "se-sealed", "cannot open the secure element state: wrong device key or tampered state"
            ) from None


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
    def create(cls, directory: Path, *, durable: bool = True) -> SoftwareSecureElement:
        """Generate a key and a device-local sealing key inside a new element; the folder must not
        already hold one. The element is written at once: a line killed after the IDevID committed
        finds the key again and finishes the device (`devid.factory.station`)."""
        if (directory / SE_STATE_FILE).exists():
            raise ConflictError("se-exists", f"{directory} already holds a secure element")
        se = cls(directory, Sealer.new(), ec.generate_private_key(ec.SECP256R1()), {}, durable)
        se._save()
        return se

    @classmethod
    def open(cls, directory: Path, *, durable: bool = True) -> SoftwareSecureElement:
        try:
            state = json.loads((directory / SE_STATE_FILE).read_text())
        except FileNotFoundError:
            raise NotFoundError("se-missing", f"no secure element state in {directory}") from None
        sealer = Sealer.of_device(directory)
        context = directory.name.encode()
        scalar = sealer.open(base64.b64decode(state["sealed_key"]), context)
        key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
        slots = {name: base64.b64decode(der) for name, der in state["slots"].items()}
        return cls(directory, sealer, key, slots, durable)

    def _save(self) -> None:
        scalar = self._key.private_numbers().private_value.to_bytes(32, "big")
        state = {
            "backend": self.backend,
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
            write_new(self.directory / DEVICE_KEY_FILE, self._sealer.key)
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
        """Forget the element: its sealed state and key go (a device refused before its identity)."""
        (self.directory / SE_STATE_FILE).unlink(missing_ok=True)
        (self.directory / DEVICE_KEY_FILE).unlink(missing_ok=True)

    def tls_private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key for an in-memory TLS handshake: the one place a software element lends its key."""
        return self._key

    def reference(self) -> dict[str, Any]:
        return {"backend": self.backend, "state": SE_STATE_FILE}
