"""Device keys in a TPM 2.0 (swtpm in tests, the device's own TPM in the field), through tpm2-pytss.

The key pair is created by the TPM (TPM2_Create under the storage root key at the TCG's persistent
handle 0x81000001, made if absent) with fixedTPM, fixedParent and sensitiveDataOrigin: the private
part only ever leaves the TPM wrapped under that SRK, as a blob no other TPM can load. The blob is kept
in the device folder as a `TSS2 PRIVATE KEY` PEM, the format tpm2-openssl (the OpenSSL 3 provider the
device agent's TLS goes through, devid.keys.tpmtls) reads.

A TPM holds three transient objects at most, so a key is loaded for each signature and flushed right
after: thousands of device keys on one (simulated) TPM never fill it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPM2_RH, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.tsskey import TSSPrivKey
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMS_ECC_PARMS,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_HASHCHECK,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from devid.errors import ConflictError, KeyAccessError, KeyExportRefused, NotFoundError, PolicyError
from devid.fsutil import atomic_write, write_new
from devid.keys.base import HeldPrivateKey

__all__ = ["SRK_HANDLE", "STATE_FILE", "TpmPrivateKey", "TpmSecureElement", "open_tpm"]

#: The TCG's persistent handle of the storage root key (TCG TPM v2.0 Provisioning Guidance).
SRK_HANDLE = 0x81000001
#: The element's state in the device folder (the same name the software element uses).
STATE_FILE = "se.json"
_SIGN = ec.ECDSA(hashes.SHA256())
#: The hash the TPM is told a digest was made with, by the digest's length.
_DIGEST_ALGS = {32: TPM2_ALG.SHA256, 48: TPM2_ALG.SHA384, 64: TPM2_ALG.SHA512}
#: What every device key must carry: made in this TPM and bound to it and to its parent.
KEY_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.SIGN_ENCRYPT
)


def _srk_template() -> TPM2B_PUBLIC:
    """The TCG's ECC P-256 SRK template (restricted decryption key, AES-128-CFB)."""
    return TPM2B_PUBLIC(
        publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.ECC,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=TPMA_OBJECT.USERWITHAUTH
            | TPMA_OBJECT.RESTRICTED
            | TPMA_OBJECT.DECRYPT
            | TPMA_OBJECT.NODA
            | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT
            | TPMA_OBJECT.SENSITIVEDATAORIGIN,
            parameters=TPMU_PUBLIC_PARMS(
                eccDetail=TPMS_ECC_PARMS(
                    symmetric=TPMT_SYM_DEF_OBJECT(
                        algorithm=TPM2_ALG.AES,
                        keyBits=TPMU_SYM_KEY_BITS(aes=128),
                        mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
                    ),
                    scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
                    curveID=TPM2_ECC.NIST_P256,
                    kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
                )
            ),
        )
    )


def _key_template() -> TPM2B_PUBLIC:
    """An unrestricted P-256 signing key (the scheme is chosen per signature: ECDSA-SHA256 here,
    whatever TLS negotiates through the provider)."""
    return TPM2B_PUBLIC(
        publicArea=TPMT_PUBLIC(
            type=TPM2_ALG.ECC,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=KEY_ATTRIBUTES,
            parameters=TPMU_PUBLIC_PARMS(
                eccDetail=TPMS_ECC_PARMS(
                    symmetric=TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                    scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
                    curveID=TPM2_ECC.NIST_P256,
                    kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
                )
            ),
        )
    )


def _tpm_error(tcti: str, doing: str, exc: TSS2_Exception) -> KeyAccessError:
    return KeyAccessError("tpm-error", f"the TPM at {tcti} refused to {doing}: {exc}")


@dataclass
class _OpenTpm:
    """One connection to a TPM per process, with its SRK; ESAPI is not thread-safe, hence the lock."""

    tcti: str
    esapi: ESAPI
    srk: Any
    lock: threading.RLock = field(default_factory=threading.RLock)


_TPMS: dict[str, _OpenTpm] = {}
_TPMS_LOCK = threading.Lock()


def _connect(tcti: str) -> ESAPI:
    # libtss2 logs every failed command on stderr: devid reports the failure itself, once.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        return ESAPI(TCTILdr.parse(tcti))
    except TSS2_Exception as exc:
        raise KeyAccessError(
            "tpm-unreachable", f"no TPM answers at {tcti} ({exc}): check the TPM, or --se-tcti"
        ) from None


def _storage_root(esapi: ESAPI, tcti: str) -> Any:
    """The SRK at 0x81000001: used when present (it must be a storage key), else made and persisted."""
    try:
        srk = esapi.tr_from_tpmpublic(SRK_HANDLE)
    except TSS2_Exception:
        srk = None
    if srk is None:
        try:
            primary = esapi.create_primary(TPM2B_SENSITIVE_CREATE(), _srk_template(), ESYS_TR.OWNER)[0]
            try:
                srk = esapi.evict_control(ESYS_TR.OWNER, primary, SRK_HANDLE)
            finally:
                esapi.flush_context(primary)
        except TSS2_Exception as exc:
            try:  # another process made it in the meantime
                srk = esapi.tr_from_tpmpublic(SRK_HANDLE)
            except TSS2_Exception:
                raise _tpm_error(tcti, f"create the storage root key at {SRK_HANDLE:#x}", exc) from None
    public = esapi.read_public(srk)[0].publicArea
    wanted = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT
    if public.objectAttributes & wanted != wanted:
        raise KeyAccessError(
            "tpm-srk", f"the object at {SRK_HANDLE:#x} in the TPM at {tcti} is not a storage (parent) key"
        )
    return srk


def open_tpm(tcti: str) -> _OpenTpm:
    """The process's connection to the TPM at `tcti`, its storage root key ready."""
    with _TPMS_LOCK:
        opened = _TPMS.get(tcti)
        if opened is None:
            esapi = _connect(tcti)
            try:
                srk = _storage_root(esapi, tcti)
            except BaseException:
                esapi.close()
                raise
            opened = _TPMS[tcti] = _OpenTpm(tcti, esapi, srk)
        return opened


def _public_key(public: TPM2B_PUBLIC, label: str) -> ec.EllipticCurvePublicKey:
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise KeyAccessError("key-type", f"TPM key {label!r} is not an EC P-256 key")
    x = int.from_bytes(bytes(area.unique.ecc.x), "big")
    y = int.from_bytes(bytes(area.unique.ecc.y), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


class TpmPrivateKey(HeldPrivateKey):
    """A P-256 key made by the TPM, known here only by its wrapped blob; each signature loads it."""

    def __init__(self, tpm: _OpenTpm, private: TPM2B_PRIVATE, public: TPM2B_PUBLIC, label: str) -> None:
        super().__init__(_public_key(public, label), label, "TPM")
        self._tpm = tpm
        self.private_blob = private
        self.public_blob = public

    def attributes(self) -> int:
        """The key's TPMA_OBJECT bits, as the TPM certified them in its public area."""
        return int(self.public_blob.publicArea.objectAttributes)

    def sign_digest(self, digest: bytes) -> bytes:
        hash_alg = _DIGEST_ALGS.get(len(digest))
        if hash_alg is None:
            raise ValueError(f"a TPM signs SHA-256/384/512 digests, not {len(digest)} bytes")
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = hash_alg
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        tpm = self._tpm
        with tpm.lock:
            try:
                handle = tpm.esapi.load(tpm.srk, self.private_blob, self.public_blob)
                try:
                    signature = tpm.esapi.sign(handle, digest, scheme, ticket)
                finally:
                    tpm.esapi.flush_context(handle)
            except TSS2_Exception as exc:
                raise _tpm_error(tpm.tcti, f"sign with key {self.label!r}", exc) from None
        ecdsa = signature.signature.ecdsa
        r = int.from_bytes(bytes(ecdsa.signatureR), "big")
        s = int.from_bytes(bytes(ecdsa.signatureS), "big")
        return utils.encode_dss_signature(r, s)

    def tss_pem(self) -> bytes:
        """The `TSS2 PRIVATE KEY` PEM (wrapped blob, parent = the persistent SRK) tpm2-openssl loads."""
        return bytes(TSSPrivKey(self.private_blob, self.public_blob, True, SRK_HANDLE).to_pem())

    @classmethod
    def from_tss_pem(cls, tpm: _OpenTpm, pem: bytes, label: str) -> TpmPrivateKey:
        try:
            key = TSSPrivKey.from_pem(pem)
        except ValueError:
            raise KeyAccessError("tpm-key", f"the TPM key blob of {label!r} is damaged") from None
        if key.parent != SRK_HANDLE:
            raise KeyAccessError("tpm-key", f"the TPM key of {label!r} does not hang under the SRK")
        return cls(tpm, key.private, key.public, label)


class TpmSecureElement:
    """A device's secure element in a TPM: the key made inside it, its wrapped blob and the
    certificate slots in `<device dir>/se.json` (certificates are public; the blob is useless
    without the TPM that made it)."""

    backend = "tpm"

    def __init__(self, directory: Path, key: TpmPrivateKey, slots: dict[str, bytes], tcti: str) -> None:
        self.directory = directory
        self.tcti = tcti
        self._key = key
        self._slots = slots

    @classmethod
    def create(cls, directory: Path, tcti: str) -> TpmSecureElement:
        """Have the TPM make a new key; the folder must not already hold an element. The state is
        written at once, so a line killed after the IDevID committed finds the key again."""
        if (directory / STATE_FILE).exists():
            raise ConflictError("se-exists", f"{directory} already holds a secure element")
        tpm = open_tpm(tcti)
        with tpm.lock:
            try:
                private, public = tpm.esapi.create(tpm.srk, TPM2B_SENSITIVE_CREATE(), _key_template())[:2]
            except TSS2_Exception as exc:
                raise _tpm_error(tcti, "create a key", exc) from None
        se = cls(directory, TpmPrivateKey(tpm, private, public, directory.name), {}, tcti)
        write_new(directory / STATE_FILE, se._state())
        return se

    @classmethod
    def open(cls, directory: Path, tcti: str) -> TpmSecureElement:
        try:
            state = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise NotFoundError("se-missing", f"no secure element state in {directory}") from None
        if state.get("backend") != cls.backend:
            raise KeyAccessError("se-backend", f"the secure element in {directory} is not a TPM key")
        key = TpmPrivateKey.from_tss_pem(open_tpm(tcti), state["key"].encode(), directory.name)
        slots = {name: bytes.fromhex(der) for name, der in state["slots"].items()}
        return cls(directory, key, slots, tcti)

    def _state(self) -> bytes:
        return json.dumps(
            {
                "backend": self.backend,
                "key": self._key.tss_pem().decode(),
                "slots": {name: der.hex() for name, der in self._slots.items()},
            }
        ).encode()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def private_key(self) -> TpmPrivateKey:
        """The signing-only key object (its export methods refuse)."""
        return self._key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _SIGN)

    def sign_csr(self, builder: x509.CertificateSigningRequestBuilder) -> x509.CertificateSigningRequest:
        return builder.sign(self._key, hashes.SHA256())

    def write_slot(self, slot: str, cert_der: bytes) -> None:
        try:
            x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise PolicyError("bad-certificate", f"slot {slot!r} only holds DER X.509 certificates") from None
        self._slots[slot] = bytes(cert_der)
        atomic_write(self.directory / STATE_FILE, self._state())

    def read_slot(self, slot: str) -> bytes | None:
        return self._slots.get(slot)

    def export_private_key(self) -> NoReturn:
        raise KeyExportRefused("key-export-refused", "the secure element never exports its private key")

    def discard(self) -> None:
        """Forget the key: without its blob the TPM can never load it again."""
        (self.directory / STATE_FILE).unlink(missing_ok=True)

    def reference(self) -> dict[str, Any]:
        return {"backend": self.backend, "tcti": self.tcti, "state": STATE_FILE}
