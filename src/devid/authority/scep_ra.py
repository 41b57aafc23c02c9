"""The SCEP registration authority (RFC 8894 2.1.3): the certificate a SCEP client encrypts its
request to and whose key signs every CertRep.

SCEP clients encrypt with RSA key transport (micromdm's scepclient knows nothing else), so the RA
key is RSA-2048. It is not a device key and signs no certificate: it decrypts requests and signs
CertRep messages. It is kept beside the CA keys, encrypted under the home passphrase (a home whose
CA keys are in an HSM has no RA yet), certified by the operational CA (profile `scep-ra`,
keyEncipherment + digitalSignature, one year), recorded and audited like every certificate devid
issues, and certified again when a third of its life is left.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devid.authority import delegates
from devid.authority.core import Authority
from devid.errors import ConfigError
from devid.keys.software import SoftwareKeyStore
from devid.pki.profiles import ProfileName


@dataclass(frozen=True)
class RegistrationAuthority:
    """The RA certificate, the CA certificates above it, and the operations of its key."""

    certificate: x509.Certificate
    #: The issuing CA up to the root (RFC 8894 4.2.1.2: the RA certificate first, then the CAs).
    chain: tuple[x509.Certificate, ...]
    _key: rsa.RSAPrivateKey

    def decrypt_key(self, encrypted: bytes) -> bytes:
        """The content-encryption key a client wrapped for the RA (RSA PKCS #1 v1.5 key transport).
        ValueError when it does not decrypt (a request encrypted to another certificate)."""
        return self._key.decrypt(encrypted, padding.PKCS1v15())

    def sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over a CertRep's signed attributes."""
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class _Holder:
    """The current RA of one authority (`authority.owned`)."""

    def __init__(self, authority: Authority) -> None:
        self._authority = authority
        self._lock = threading.Lock()
        self._ra: RegistrationAuthority | None = None

    def get(self) -> RegistrationAuthority:
        now = self._authority.clock.now().astimezone(UTC)
        with self._lock:
            if self._ra is None or delegates.renew_due(self._ra.certificate, now):
                self._ra = self._load_or_issue()
            return self._ra

    def _load_or_issue(self) -> RegistrationAuthority:
        authority = self._authority
        now = authority.clock.now().astimezone(UTC)
        ca = authority.issuer_for(ProfileName.LDEVID)
        keystore = ca.keystore
        if not isinstance(keystore, SoftwareKeyStore):
            raise ConfigError(
                "scep-ra-keystore", "SCEP needs the CA keys in the software keystore (its RA key is RSA)"
            )
        key = keystore.rsa_decryption_key(f"{authority.key_prefix}scep-ra")
        public = key.public_key()
        cert = delegates.current(authority, ca.name, ProfileName.SCEP_RA, public, now, earliest=True)
        if cert is None:
            delegates.issue(authority, ca.name, ProfileName.SCEP_RA, f"{authority.org} SCEP RA", public, now)
            # Server processes starting together may each have certified the key: all of them
            # answer with the first certificate recorded, so GetCACert is the same everywhere.
            cert = delegates.current(authority, ca.name, ProfileName.SCEP_RA, public, now, earliest=True)
            if cert is None:
                raise ConfigError("scep-ra", "the SCEP RA certificate just issued is not in the store")
        return RegistrationAuthority(cert, tuple(authority.chain(ca.name, with_root=True)), key)


def registration_authority(authority: Authority) -> RegistrationAuthority:
    """The authority's SCEP RA (made and certified on first use, renewed when due)."""
    return authority.owned(_Holder, lambda: _Holder(authority)).get()
