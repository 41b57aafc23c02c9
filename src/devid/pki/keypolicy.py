"""Key policy: device keys are ECDSA P-256, and nothing else."""

from __future__ import annotations

# Finite-field DH is not named here: touching `dh.DHPublicKey` makes cryptography >= 50 print a
# deprecation warning on every command (a DH key is refused like any non-EC key anyway).
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from devid.errors import PolicyError

#: A key devid certifies for a device: P-256, or RSA on a SCEP label opted into it.
DeviceKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def describe_key(key: object) -> str:
    """A short human name of a public key's type, for error messages."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA-{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def require_p256(key: object, what: str = "device key") -> ec.EllipticCurvePublicKey:
    """Return `key` as a P-256 public key, or refuse naming what was found."""
    if isinstance(key, rsa.RSAPublicKey):
        raise PolicyError(
            "key-type",
            f"{what} is {describe_key(key)}: RSA is not accepted; devid issues only to ECDSA P-256 keys",
        )
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PolicyError(
            "key-type", f"{what} is {describe_key(key)}: only ECDSA P-256 (secp256r1) keys are accepted"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise PolicyError(
            "key-curve", f"{what} is on curve {key.curve.name}: only P-256 (secp256r1) is accepted"
        )
    return key


def p256_key_of(
    holder: x509.Certificate | x509.CertificateSigningRequest, what: str, malformed: str
) -> ec.EllipticCurvePublicKey:
    """The P-256 key a certificate or CSR carries, or a refusal: `key-type` for an algorithm or
    curve cryptography does not know either (like any other non-P-256 key), `malformed` for a key
    whose encoding cannot be read."""
    try:
        key = holder.public_key()
    except UnsupportedAlgorithm as exc:
        raise PolicyError(
            "key-type", f"{what} is of a type devid does not know ({exc}): only ECDSA P-256 is accepted"
        ) from None
    except (ValueError, TypeError) as exc:
        raise PolicyError(malformed, f"{what} cannot be read: {exc}") from None
    return require_p256(key, what)


#: The RSA sizes a label opted into RSA accepts (`devid scep allow-rsa`).
SCEP_RSA_BITS = (2048, 3072)


def require_scep_rsa(key: object, what: str = "device key") -> rsa.RSAPublicKey:
    """Return `key` as an RSA-2048/3072 public key (a SCEP label opted into RSA), or refuse."""
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size not in SCEP_RSA_BITS:
        raise PolicyError(
            "key-type",
            f"{what} is {describe_key(key)}: an RSA-allowed SCEP label accepts RSA-2048 or RSA-3072",
        )
    return key
