"""The interfaces every key backend implements.

A CA key is handed to `cryptography`'s builders as an `ec.EllipticCurvePrivateKey`: a software key
is one, and a token key is an object that subclasses it and signs inside the token (the approach
pyca recommends for HSMs), so the authority has one signing path whatever the backend.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, NoReturn, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from devid.errors import KeyExportRefused

#: PKCS#11 EC_PARAMS / X.509 namedCurve for P-256: OBJECT IDENTIFIER 1.2.840.10045.3.1.7.
P256_EC_PARAMS = bytes.fromhex("06082a8648ce3d030107")


class HeldPrivateKey(ec.EllipticCurvePrivateKey):
    """A P-256 key held by hardware (a PKCS#11 token, a TPM): `sign` hashes here and the hardware
    signs the digest (`sign_digest`), so `cryptography`'s builders use it unchanged; everything that
    would take the private value out refuses."""

    def __init__(self, public: ec.EllipticCurvePublicKey, label: str, holder: str) -> None:
        self._public = public
        self.label = label
        self._holder = holder

    @abstractmethod
    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a SHA-256 (or other) digest inside the hardware, DER-encoded signature."""

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError(f"a {self._holder} EC key only signs with ECDSA, not {signature_algorithm!r}")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise ValueError(f"the {self._holder} cannot produce deterministic (RFC 6979) ECDSA signatures")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
            if len(digest) != algorithm.digest_size:
                raise ValueError(f"prehashed data must be {algorithm.digest_size} bytes, not {len(digest)}")
        else:
            h = hashes.Hash(algorithm)
            h.update(bytes(data))
            digest = h.finalize()
        return self.sign_digest(digest)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> NoReturn:
        raise KeyExportRefused("key-export-refused", f"{self._holder} key {self.label!r} is for signing only")

    def private_numbers(self) -> NoReturn:
        raise KeyExportRefused(
            "key-export-refused", f"{self._holder} key {self.label!r} never leaves the {self._holder}"
        )

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> NoReturn:
        self.private_numbers()

    def __copy__(self) -> HeldPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[Any, Any]) -> HeldPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


class SecretKey(Protocol):
    """A 256-bit secret kept like the CA keys (encrypted file, or inside the token): only HMAC values
    come out of it."""

    def hmac_sha256(self, data: bytes) -> bytes: ...


class KeyStore(Protocol):
    """Where the authority's CA keys live (encrypted files or a token)."""

    backend: str

    def generate(self, label: str) -> ec.EllipticCurvePrivateKey:
        """Create a new P-256 key under `label`; refuses a label that exists."""
        ...

    def load(self, label: str) -> ec.EllipticCurvePrivateKey:
        """Open the key stored under `label`."""
        ...

    def generate_secret(self, label: str) -> SecretKey:
        """Create a new random 256-bit secret key under `label`; refuses a label that exists."""
        ...

    def load_secret(self, label: str) -> SecretKey:
        """Open the secret key stored under `label` (NotFoundError if there is none)."""
        ...


class SecureElement(Protocol):
    """A device's secure element: the key is generated inside and only signatures come out."""

    backend: str

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 over `data`, DER-encoded signature."""
        ...

    def sign_csr(self, builder: x509.CertificateSigningRequestBuilder) -> x509.CertificateSigningRequest:
        """Sign a CSR inside the element (proof of possession without the key leaving)."""
        ...

    def write_slot(self, slot: str, cert_der: bytes) -> None: ...

    def read_slot(self, slot: str) -> bytes | None: ...

    def export_private_key(self) -> NoReturn:
        """Always refuses: raises KeyExportRefused."""
        ...

    def discard(self) -> None:
        """Destroy the key and slots: for a device refused before it received its identity."""
        ...

    def reference(self) -> dict[str, Any]:
        """What a device folder records to find this element again (no secrets)."""
        ...
