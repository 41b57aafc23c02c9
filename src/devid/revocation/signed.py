"""The signed, versioned envelope of revocation filters, allowlists and their deltas.

Compact because a device or gateway fetches it often over constrained links (a 100-revocation
delta fits in 300 bytes), and verifiable on a device with nothing but ECDSA P-256:

    magic "DV" | format 1 | kind | scope: length byte + UTF-8 | version | for a delta: version - base
    | issued-at (unix s) | next-update - issued-at (s) | payload | signature r || s (32 + 32 bytes)

Numbers are LEB128 varints. The signature (ECDSA P-256 with SHA-256, by the CA itself, the only
signer) covers every byte before it. The magic cannot begin a DER structure, so nothing else the
CA key signs (certificates, CRLs, OCSP responses: all DER SEQUENCEs, 0x30) reads as an envelope.

Every error is a PolicyError with a `filter-*` code (the family of signed status snapshots,
allowlists included): `filter-format` (garbage, truncation), `filter-signature`, `filter-kind`,
`filter-scope`, `filter-version-older`, `filter-delta-base`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from devid.errors import PolicyError
from devid.revocation.golomb import Reader, format_error, text, varint

MAGIC = b"DV"
FORMAT = 1
SIGNATURE_SIZE = 64
_ECDSA = ec.ECDSA(hashes.SHA256())
_MAX_NUMBER = (1 << 63) - 1

#: Signs for the CA: its private key (a token key subclasses it), or a callable returning a
#: DER-encoded ECDSA P-256/SHA-256 signature of the bytes given, as `key.sign` does.
Signer = ec.EllipticCurvePrivateKey | Callable[[bytes], bytes]


class Kind(IntEnum):
    FILTER = 1
    FILTER_DELTA = 2
    ALLOWLIST = 3
    ALLOWLIST_DELTA = 4

    @property
    def is_delta(self) -> bool:
        return self in (Kind.FILTER_DELTA, Kind.ALLOWLIST_DELTA)


@dataclass(frozen=True)
class Header:
    """What an envelope says about its payload. Times are whole seconds, timezone-aware UTC."""

    kind: Kind
    #: The CA name (filters) or the hub or enrollment group (allowlists).
    scope: str
    version: int
    issued_at: datetime
    next_update: datetime
    #: The version a delta applies to (None for a full snapshot).
    base_version: int | None = None

    def as_snapshot(self, kind: Kind) -> Header:
        """The header of the full `kind` snapshot this delta's version stands for."""
        return replace(self, kind=kind, base_version=None)

    def encode(self) -> bytes:
        issued, next_update = _seconds(self.issued_at), _seconds(self.next_update)
        if next_update < issued:
            raise PolicyError("filter-time", "next-update is before issued-at")
        if not 0 <= self.version <= _MAX_NUMBER:
            raise PolicyError("filter-version", f"version {self.version} out of range")
        if self.kind.is_delta != (self.base_version is not None):
            raise PolicyError("filter-kind", f"a {self.kind.name} has a base version iff it is a delta")
        out = bytearray(MAGIC)
        out += bytes((FORMAT, self.kind)) + text(self.scope) + varint(self.version)
        if self.base_version is not None:
            if not 0 <= self.base_version < self.version:
                raise PolicyError("filter-delta-base", "a delta's base version is below its version")
            out += varint(self.version - self.base_version)
        return bytes(out + varint(issued) + varint(next_update - issued))

    @classmethod
    def parse(cls, reader: Reader) -> Header:
        if reader.take(len(MAGIC)) != MAGIC:
            raise format_error("not a devid revocation envelope")
        form, kind_byte = reader.take(2)
        if form != FORMAT:
            raise format_error(f"unknown format {form}")
        try:
            kind = Kind(kind_byte)
        except ValueError:
            raise format_error(f"unknown kind {kind_byte}") from None
        scope = reader.text()
        version = reader.varint(_MAX_NUMBER)
        base = version - reader.varint(version) if kind.is_delta else None
        if base == version:
            raise format_error("a delta onto its own version")
        issued = reader.varint(_MAX_NUMBER)
        next_update = issued + reader.varint(_MAX_NUMBER - issued)
        return cls(kind, scope, version, _datetime(issued), _datetime(next_update), base)


class Versioned:
    """What a loaded snapshot (filter, allowlist) tells of itself: its verified header's fields."""

    header: Header

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def issued_at(self) -> datetime:
        return self.header.issued_at

    @property
    def next_update(self) -> datetime:
        return self.header.next_update


def seal(header: Header, payload: bytes, sign: Signer) -> bytes:
    """The signed envelope of `payload`."""
    body = header.encode() + payload
    der = sign.sign(body, _ECDSA) if isinstance(sign, ec.EllipticCurvePrivateKey) else sign(body)
    r, s = decode_dss_signature(der)
    return body + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def peek(data: bytes) -> Header:
    """The header of an envelope, NOT verified: only to find which CA's key verifies it."""
    return Header.parse(Reader(bytes(data)))


def open_envelope(data: bytes, public_key: ec.EllipticCurvePublicKey, kind: Kind) -> tuple[Header, Reader]:
    """The verified header of envelope `data`, which must be a `kind`, and a reader at its payload."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise PolicyError("filter-key", "revocation envelopes are verified with the CA's P-256 public key")
    data = bytes(data)
    if len(data) < SIGNATURE_SIZE:
        raise format_error("truncated")
    body, signature = data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:]
    reader = Reader(body)
    header = Header.parse(reader)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), body, _ECDSA)
    except InvalidSignature:
        raise PolicyError("filter-signature", f"the signature on {header.scope!r} does not verify") from None
    if header.kind != kind:
        raise PolicyError("filter-kind", f"expected a {kind.name}, got a {header.kind.name}")
    return header, reader


def check_successor(held: Header, update: Header) -> None:
    """Refuse `update` (a full snapshot or a delta) as the successor of the `held` version."""
    if update.scope != held.scope:
        raise PolicyError("filter-scope", f"an update for {update.scope!r} offered to {held.scope!r}")
    if update.version < held.version or (update.kind.is_delta and update.version == held.version):
        raise PolicyError(
            "filter-version-older", f"version {update.version} is not newer than the held {held.version}"
        )
    if update.base_version is not None and update.base_version != held.version:
        raise PolicyError(
            "filter-delta-base",
            f"delta from version {update.base_version} offered to version {held.version}",
        )


def verifying_key(sign: Signer, public_key: ec.EllipticCurvePublicKey | None) -> ec.EllipticCurvePublicKey:
    """The key to verify the CA's own envelopes with: `public_key`, else the public half of `sign`."""
    if public_key is not None:
        return public_key
    if not isinstance(sign, ec.EllipticCurvePrivateKey):
        raise TypeError("envelopes given as bytes need the CA's public_key to be verified")
    return sign.public_key()


def _seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise PolicyError("filter-time", "times must be timezone-aware")
    seconds = int(moment.timestamp())
    if not 0 <= seconds <= _MAX_NUMBER:
        raise PolicyError("filter-time", f"{moment} is out of range")
    return seconds


def _datetime(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise format_error(f"time {seconds} out of range") from None
