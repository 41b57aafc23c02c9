"""The interfaces every key backend implements.

A CA key is handed to `cryptography`'s builders as an `ec.EllipticCurvePrivateKey`: a software key
is one, and a token key is an object that subclasses it and signs inside the token (the approach
pyca recommends for HSMs), so the authority has one signing path whatever the backend.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

#: PKCS#11 EC_PARAMS / X.509 namedCurve for P-256: OBJECT IDENTIFIER 1.2.840.10045.3.1.7.
P256_EC_PARAMS = bytes.fromhex("06082a8648ce3d030107")


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
