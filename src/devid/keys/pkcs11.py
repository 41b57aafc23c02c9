"""Keys held in a PKCS#11 token (SoftHSM2 in tests, an HSM in production).

The private key never leaves the token: `Pkcs11PrivateKey` is an `ec.EllipticCurvePrivateKey` whose
`sign` hashes in Python and has the token sign the digest with raw CKM_ECDSA (SoftHSM offers no
CKM_ECDSA_SHA256), so `cryptography`'s certificate, CSR and CRL builders sign with it unchanged.

A token allows one login per process (a second C_Login fails with UserAlreadyLoggedIn), so logged-in
sessions are cached per process and per token; object lookup is a linear scan in SoftHSM, so key
handles are cached on that session too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from pkcs11 import Attribute, CertificateType, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11err

from devid.errors import ConflictError, KeyAccessError, KeyExportRefused, NotFoundError, PolicyError
from devid.keys.base import P256_EC_PARAMS, HeldPrivateKey

__all__ = [
    "Pkcs11KeyStore",
    "Pkcs11PrivateKey",
    "Pkcs11SecureElement",
    "open_token",
    "pkcs11_uri",
]

_SIGN = ec.ECDSA(hashes.SHA256())
#: RFC 7512 characters allowed unescaped in a path attribute value (besides unreserved ones).
_URI_SAFE = ":[]@!$'()*+,=&"


@dataclass
class _OpenToken:
    """A logged-in session plus what must be shared by everyone using that token in this process."""

    session: pkcs11.Session
    pin_digest: bytes
    lock: threading.RLock = field(default_factory=threading.RLock)
    keys: dict[str, Pkcs11PrivateKey] = field(default_factory=dict)


# Kept across fork(): a child inherits SoftHSM's logged-in state, so the parent's sessions keep working
# there and a fresh C_Login would fail with UserAlreadyLoggedIn.
_TOKENS: dict[tuple[str, str], _OpenToken] = {}
_TOKENS_LOCK = threading.Lock()


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode("utf-8")).digest()


def _load_module(module_path: str, real_path: str) -> Any:
    """Load (once per process, python-pkcs11 caches it) the PKCS#11 module, naming it on failure."""
    if not os.path.isfile(real_path):
        raise KeyAccessError("pkcs11-module", f"PKCS#11 module {module_path} does not exist")
    try:
        return pkcs11.lib(real_path)
    except p11err.PKCS11Error as exc:
        raise KeyAccessError("pkcs11-module", f"cannot load PKCS#11 module {module_path}: {exc}") from None


def _open(module_path: str, token_label: str, pin: str) -> _OpenToken:
    # A real path as the key: loading one library under two names would initialise it twice.
    real = os.path.realpath(module_path)
    key = (real, token_label)
    with _TOKENS_LOCK:
        cached = _TOKENS.get(key)
        if cached is not None:
            # The token will not check the PIN again (already logged in), so we do.
            if not hmac.compare_digest(cached.pin_digest, _pin_digest(pin)):
                raise KeyAccessError("wrong-pin", f"wrong PIN for PKCS#11 token {token_label!r}")
            return cached
        lib = _load_module(module_path, real)
        try:
            token = lib.get_token(token_label=token_label)
        except p11err.NoSuchToken:
            raise KeyAccessError(
                "token-missing", f"no PKCS#11 token labelled {token_label!r} in {module_path}"
            ) from None
        except p11err.MultipleTokensReturned:
            raise KeyAccessError(
                "token-ambiguous", f"several PKCS#11 tokens are labelled {token_label!r} in {module_path}"
            ) from None
        try:
            session = token.open(rw=True, user_pin=pin)
        except p11err.PinIncorrect:
            raise KeyAccessError("wrong-pin", f"wrong PIN for PKCS#11 token {token_label!r}") from None
        except p11err.PinLocked:
            raise KeyAccessError(
                "pin-locked", f"the user PIN of PKCS#11 token {token_label!r} is locked"
            ) from None
        except (p11err.PinInvalid, p11err.PinLenRange):
            raise KeyAccessError("wrong-pin", f"invalid PIN for PKCS#11 token {token_label!r}") from None
        except p11err.UserAlreadyLoggedIn:
            raise KeyAccessError(
                "already-logged-in",
                f"PKCS#11 token {token_label!r} was logged in by other code in this process; "
                "devid must be the one to log in so it can check the PIN",
            ) from None
        except p11err.UserPinNotInitialized:
            raise KeyAccessError(
                "pin-uninitialised", f"PKCS#11 token {token_label!r} has no user PIN set"
            ) from None
        except p11err.PKCS11Error as exc:
            raise KeyAccessError(
                "token-error", f"cannot log in to PKCS#11 token {token_label!r}: {type(exc).__name__}"
            ) from None
        opened = _OpenToken(session=session, pin_digest=_pin_digest(pin))
        _TOKENS[key] = opened
        return opened


def open_token(module_path: str, token_label: str, pin: str) -> pkcs11.Session:
    """A logged-in read/write session on the token, opened once per token per process."""
    return _open(module_path, token_label, pin).session


def pkcs11_uri(token_label: str, object_label: str, object_type: str = "private") -> str:
    """An RFC 7512 URI naming an object (what OpenSSL's pkcs11-provider and p11-kit accept)."""

    def enc(value: str) -> str:
        return urllib.parse.quote(value, safe=_URI_SAFE)

    return f"pkcs11:token={enc(token_label)};object={enc(object_label)};type={object_type}"


def _unwrap_ec_point(raw: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the X9.62 point; some tokens give the bare point."""
    if len(raw) >= 2 and raw[0] == 0x04:
        length = raw[1]
        offset = 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(raw[2 : 2 + n], "big")
            offset = 2 + n
        if offset + length == len(raw):
            return raw[offset:]
    return raw


class Pkcs11PrivateKey(HeldPrivateKey):
    """A P-256 private key inside a token, usable wherever `cryptography` wants a private key to sign."""

    def __init__(self, private: pkcs11.PrivateKey, public: ec.EllipticCurvePublicKey, label: str) -> None:
        if not isinstance(private, pkcs11.SignMixin):
            raise KeyAccessError("key-type", f"token key {label!r} cannot sign")
        super().__init__(public, label, "token")
        self._private = private

    def sign_digest(self, digest: bytes) -> bytes:
        """The token signs the digest (raw CKM_ECDSA); r||s comes back and goes out as DER."""
        # python-pkcs11 serialises operations on a session, so concurrent threads are safe here.
        raw = self._private.sign(digest, mechanism=Mechanism.ECDSA)
        half = len(raw) // 2
        r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        return utils.encode_dss_signature(r, s)


def _find_pair(token: _OpenToken, label: str) -> tuple[pkcs11.PrivateKey | None, pkcs11.PublicKey | None]:
    """One scan of the token for the key pair labelled `label` (both halves share the label)."""
    private: pkcs11.PrivateKey | None = None
    public: pkcs11.PublicKey | None = None
    for obj in token.session.get_objects({Attribute.LABEL: label}):
        if isinstance(obj, pkcs11.PrivateKey):
            if private is not None:
                raise KeyAccessError("key-ambiguous", f"several private keys are labelled {label!r}")
            private = obj
        elif isinstance(obj, pkcs11.PublicKey):
            if public is not None:
                raise KeyAccessError("key-ambiguous", f"several public keys are labelled {label!r}")
            public = obj
    return private, public


def _public_from_token(public: pkcs11.PublicKey, label: str) -> ec.EllipticCurvePublicKey:
    if public.key_type != KeyType.EC or bytes(public[Attribute.EC_PARAMS]) != P256_EC_PARAMS:
        raise KeyAccessError("key-type", f"token key {label!r} is not an EC P-256 key")
    point = _unwrap_ec_point(bytes(public[Attribute.EC_POINT]))
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def _generate(token: _OpenToken, label: str) -> Pkcs11PrivateKey:
    """A persistent, sensitive, non-extractable P-256 signing pair made inside the token."""
    with token.lock:
        public, private = token.session.generate_keypair(
            KeyType.EC,
            store=True,
            label=label,
            id=label.encode("utf-8"),
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: P256_EC_PARAMS, Attribute.TOKEN: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DERIVE: False,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
            },
        )
        key = Pkcs11PrivateKey(private, _public_from_token(public, label), label)
        token.keys[label] = key
        return key


def _exists(token: _OpenToken, label: str) -> bool:
    if label in token.keys:
        return True
    private, public = _find_pair(token, label)
    return private is not None or public is not None


def _load(token: _OpenToken, label: str) -> Pkcs11PrivateKey | None:
    with token.lock:
        key = token.keys.get(label)
        if key is not None:
            return key
        private, public = _find_pair(token, label)
        if private is None:
            return None
        if public is None:
            raise KeyAccessError("key-incomplete", f"token key {label!r} has no public key object")
        key = Pkcs11PrivateKey(private, _public_from_token(public, label), label)
        token.keys[label] = key
        return key


class Pkcs11SecretKey:
    """A generic secret key inside the token (sensitive, non-extractable): HMAC-SHA256 is computed
    there (CKM_SHA256_HMAC)."""

    def __init__(self, key: pkcs11.SecretKey, token: _OpenToken) -> None:
        if not isinstance(key, pkcs11.SignMixin):
            raise KeyAccessError("key-type", "the token's secret key cannot compute HMACs")
        self._key = key
        self._token = token

    def hmac_sha256(self, data: bytes) -> bytes:
        with self._token.lock:
            return bytes(self._key.sign(data, mechanism=Mechanism.SHA256_HMAC))


class Pkcs11KeyStore:
    """CA keys as key pairs, and secret keys, in a PKCS#11 token, found by label."""

    backend = "pkcs11"

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self._token = _open(module_path, token_label, pin)

    def generate(self, label: str) -> Pkcs11PrivateKey:
        with self._token.lock:
            if _exists(self._token, label):
                raise ConflictError(
                    "key-exists", f"a key labelled {label!r} already exists in token {self.token_label!r}"
                )
            return _generate(self._token, label)

    def load(self, label: str) -> Pkcs11PrivateKey:
        key = _load(self._token, label)
        if key is None:
            raise NotFoundError("key-missing", f"no key labelled {label!r} in token {self.token_label!r}")
        return key

    def _secrets(self, label: str) -> list[pkcs11.SecretKey]:
        query = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}
        found = self._token.session.get_objects(query)
        return [obj for obj in found if isinstance(obj, pkcs11.SecretKey)]

    def generate_secret(self, label: str) -> Pkcs11SecretKey:
        with self._token.lock:
            if self._secrets(label):
                raise ConflictError(
                    "key-exists", f"a secret key labelled {label!r} is already in token {self.token_label!r}"
                )
            key = self._token.session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                store=True,
                label=label,
                id=label.encode("utf-8"),
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                },
            )
            return Pkcs11SecretKey(key, self._token)

    def load_secret(self, label: str) -> Pkcs11SecretKey:
        with self._token.lock:
            found = self._secrets(label)
        if not found:
            raise NotFoundError(
                "key-missing", f"no secret key labelled {label!r} in token {self.token_label!r}"
            )
        if len(found) > 1:
            raise KeyAccessError("key-ambiguous", f"several secret keys are labelled {label!r}")
        return Pkcs11SecretKey(found[0], self._token)

    def uri(self, label: str) -> str:
        """The RFC 7512 URI of the key labelled `label` (no PIN in it)."""
        return pkcs11_uri(self.token_label, label)


class Pkcs11SecureElement:
    """A simulated device secure element: the device's key pair and certificate slots in a token."""

    backend = "pkcs11"

    def __init__(
        self, module_path: str, token_label: str, token: _OpenToken, device_serial: str, key: Pkcs11PrivateKey
    ) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.device_serial = device_serial
        self._token = token
        self._key = key

    @classmethod
    def create(cls, module_path: str, token_label: str, pin: str, device_serial: str) -> Pkcs11SecureElement:
        """Generate the device key inside the token; refuses a serial that already has one."""
        token = _open(module_path, token_label, pin)
        with token.lock:
            if _exists(token, device_serial):
                raise ConflictError(
                    "se-exists", f"token {token_label!r} already holds a key for device {device_serial!r}"
                )
            key = _generate(token, device_serial)
        return cls(module_path, token_label, token, device_serial, key)

    @classmethod
    def open(cls, module_path: str, token_label: str, pin: str, device_serial: str) -> Pkcs11SecureElement:
        token = _open(module_path, token_label, pin)
        key = _load(token, device_serial)
        if key is None:
            raise NotFoundError(
                "se-missing", f"token {token_label!r} holds no key for device {device_serial!r}"
            )
        return cls(module_path, token_label, token, device_serial, key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def private_key(self) -> Pkcs11PrivateKey:
        """The signing-only key object (its export methods refuse), e.g. for in-process builders."""
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _SIGN)

    def sign_csr(self, builder: x509.CertificateSigningRequestBuilder) -> x509.CertificateSigningRequest:
        return builder.sign(self._key, hashes.SHA256())

    def _slot_label(self, slot: str) -> str:
        return f"{self.device_serial}/{slot}"

    def _slot_objects(self, slot: str) -> list[pkcs11.Object]:
        return list(
            self._token.session.get_objects(
                {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: self._slot_label(slot)}
            )
        )

    def write_slot(self, slot: str, cert_der: bytes) -> None:
        """Store a certificate as a CKO_CERTIFICATE object; the new one goes in before the old goes."""
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise PolicyError("bad-certificate", f"slot {slot!r} only holds DER X.509 certificates") from None
        with self._token.lock:
            old = self._slot_objects(slot)
            self._token.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: self._slot_label(slot),
                    Attribute.ID: self.device_serial.encode("utf-8"),
                    Attribute.SUBJECT: cert.subject.public_bytes(),
                    Attribute.ISSUER: cert.issuer.public_bytes(),
                    Attribute.SERIAL_NUMBER: _der_integer(cert.serial_number),
                    Attribute.VALUE: bytes(cert_der),
                }
            )
            for obj in old:
                obj.destroy()

    def read_slot(self, slot: str) -> bytes | None:
        with self._token.lock:
            objects = self._slot_objects(slot)
            if not objects:
                return None
            return bytes(objects[-1][Attribute.VALUE])

    def export_private_key(self) -> NoReturn:
        raise KeyExportRefused("key-export-refused", "the secure element never exports its private key")

    def discard(self) -> None:
        """Destroy the device's key pair and slots (a device refused before it got its identity)."""
        with self._token.lock:
            for obj in list(
                self._token.session.get_objects({Attribute.ID: self.device_serial.encode("utf-8")})
            ):
                obj.destroy()
            self._token.keys.pop(self.device_serial, None)

    def tls_key_uri(self) -> str:
        """The RFC 7512 URI of the device key, for OpenSSL's pkcs11-provider (no PIN in it)."""
        return pkcs11_uri(self.token_label, self.device_serial)

    def reference(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "module": self.module_path,
            "token": self.token_label,
            "object": self.device_serial,
            "uri": self.tls_key_uri(),
        }


def _der_integer(value: int) -> bytes:
    """DER INTEGER encoding (CKA_SERIAL_NUMBER holds the certificate serial DER-encoded)."""
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    if len(body) < 0x80:
        return bytes([0x02, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([0x02, 0x80 | len(size)]) + size + body
