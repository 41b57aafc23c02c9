"""Session tokens in the authority: the keys that sign them (P-256, ES256), their rotation, and the
token policy (issuer, audiences, scopes, lifetime). Token formats live in `devid.tokens`.

The keys live in the same keystore as the CA keys: passphrase-encrypted PKCS#8 files, or a PKCS#11
token where they are generated inside and sign inside. The first is made at first use under
`<key_prefix>token-signer`; each rotation adds `<key_prefix>token-signer-<n>`. Which key signs,
and which retired keys are still published, is kept in a small JSON file beside the software keys
(`<home>/keys/token-keys.json`), written atomically under a file lock so that concurrent first
uses or rotations in several processes agree. Every process notices a change of that file at its
next use, so `devid token rotate-key` takes effect in a running server without a restart.

A retired key stays published (in the JWKS) for `RETIRED_KEY_PUBLISHED_FOR` after its retirement:
the longest a token may live plus the clock skew devid allows, so every token it signed has expired
before a verifier can no longer find its key. The public keys published are always taken from the
keys themselves (never from the state file), and each must hash to the kid the state names.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sqlalchemy import Engine

from devid.authority.core import Authority
from devid.clock import Clock
from devid.config import Home
from devid.errors import ConfigError, ConflictError, KeyAccessError
from devid.fsutil import atomic_write
from devid.keys.base import KeyStore
from devid.pki.keypolicy import require_p256
from devid.pki.profiles import CLOCK_SKEW
from devid.store import audit
from devid.store.engine import writing

#: No session token lives longer than this, whatever the policy says.
MAX_TOKEN_LIFETIME = timedelta(hours=1)
#: How long a retired key stays in the JWKS: every token it signed has expired by then.
RETIRED_KEY_PUBLISHED_FOR = MAX_TOKEN_LIFETIME + CLOCK_SKEW
#: Key label suffix of the first token-signing key (`<key_prefix>token-signer`).
KEY_NAME = "token-signer"
STATE_FILE = "token-keys.json"

_ES256 = ec.ECDSA(hashes.SHA256())


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The required members of a P-256 public JWK (RFC 7518 §6.2.1)."""
    require_p256(public_key)
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint: the required members, sorted, no whitespace; base64url."""
    jwk = public_jwk(public_key)
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class KeyRecord:
    """One token-signing key as the state file records it."""

    label: str
    kid: str
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def published_until(self) -> datetime | None:
        """When the key leaves the JWKS (None: it is the current key)."""
        return None if self.retired_at is None else self.retired_at + RETIRED_KEY_PUBLISHED_FOR

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kid": self.kid,
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        retired = data.get("retired_at")
        return cls(
            str(data["label"]),
            str(data["kid"]),
            datetime.fromisoformat(data["created_at"]),
            datetime.fromisoformat(retired) if retired else None,
        )


@dataclass(frozen=True)
class SigningKey:
    """The key that signs now: its kid and a handle that signs (in the token, for PKCS#11)."""

    kid: str
    label: str
    private_key: ec.EllipticCurvePrivateKey

    def sign(self, data: bytes) -> bytes:
        """ES256 over `data` as JOSE and COSE want it: r || s, 32 bytes each (RFC 7518 §3.4)."""
        r, s = utils.decode_dss_signature(self.private_key.sign(data, _ES256))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class PublishedKey:
    record: KeyRecord
    public_key: ec.EllipticCurvePublicKey

    def jwk(self) -> dict[str, str]:
        return {**public_jwk(self.public_key), "kid": self.record.kid, "use": "sig", "alg": "ES256"}


class TokenKeyring:
    """The token-signing keys of one devid home."""

    def __init__(
        self, keystore: KeyStore, key_prefix: str, state_path: Path, *, engine: Engine, clock: Clock
    ) -> None:
        self.keystore = keystore
        self.key_prefix = key_prefix
        self.state_path = state_path
        self.engine = engine
        self.clock = clock
        self._lock = threading.RLock()
        self._stamp: tuple[int, int, int] | None = None
        self._records: list[KeyRecord] = []
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}

    @classmethod
    def for_home(cls, home: Home, authority: Authority) -> TokenKeyring:
        """The keyring of `home`, using the authority's keystore, store (for audit) and clock."""
        return cls(
            _keystore_of(authority),
            home.config.key_prefix,
            home.keys_dir / STATE_FILE,
            engine=authority.engine,
            clock=authority.clock,
        )

    # --- reading ------------------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key the state names, oldest first (re-read when the file changed)."""
        with self._lock:
            self._refresh()
            return list(self._records)

    def current(self) -> SigningKey:
        """The key that signs now; the first one is generated (and audited) at first use."""
        with self._lock:
            self._refresh()
            record = self._current_record()
            if record is None:
                with self._file_lock():
                    self._refresh()
                    record = self._current_record() or self._create_first()
            return SigningKey(record.kid, record.label, self._key(record))

    def published(self) -> list[PublishedKey]:
        """The current key and the retired keys whose tokens may still be valid, newest first."""
        self.current()  # a JWKS fetched before the first token already names the key that will sign it
        now = self.clock.now()
        with self._lock:
            self._refresh()
            live = [r for r in self._records if r.published_until is None or r.published_until > now]
            live.sort(key=lambda r: (r.retired_at is not None, -(r.created_at.timestamp())))
            return [PublishedKey(r, self._key(r).public_key()) for r in live]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set (RFC 7517 §5) a verifier fetches: `{"keys": [...]}`."""
        return {"keys": [key.jwk() for key in self.published()]}

    # --- rotation -------------------------------------------------------------------------------

    def rotate(self, actor: str = "system") -> tuple[KeyRecord, KeyRecord | None]:
        """Make a new signing key current; the old one stays published until its tokens expired.

        Returns (new, retired). The new key is in the keystore before the state names it, so a crash
        at any point leaves a state whose current key exists; a key generated by a crashed rotation
        is taken up by the next one.
        """
        with self._lock, self._file_lock():
            self._refresh()
            now = self.clock.now().astimezone(UTC).replace(microsecond=0)
            old = self._current_record()
            generation = 1 + max((_generation(self.key_prefix, r.label) for r in self._records), default=0)
            new = self._make_key(self._label(generation), now)
            retired = KeyRecord(old.label, old.kid, old.created_at, now) if old else None
            records = [r for r in self._records if r != old] + ([retired] if retired else []) + [new]
            self._write(records)
            detail = {"label": new.label, "backend": self.keystore.backend}
            if retired is not None:
                detail |= {"retired": retired.kid, "published_until": str(retired.published_until)}
            self._audit("token.key.rotate", new.kid, actor, detail, now)
            return new, retired

    # --- internals ------------------------------------------------------------------------------

    def _label(self, generation: int) -> str:
        return (
            f"{self.key_prefix}{KEY_NAME}" if generation == 1 else f"{self.key_prefix}{KEY_NAME}-{generation}"
        )

    def _current_record(self) -> KeyRecord | None:
        current = [r for r in self._records if r.retired_at is None]
        if len(current) > 1:
            raise ConfigError(
                "token-keys-invalid", f"{self.state_path} names {len(current)} current token-signing keys"
            )
        return current[0] if current else None

    def _create_first(self) -> KeyRecord:
        now = self.clock.now().astimezone(UTC).replace(microsecond=0)
        generation = 1 + max((_generation(self.key_prefix, r.label) for r in self._records), default=0)
        record = self._make_key(self._label(generation), now)
        self._write([*self._records, record])
        self._audit(
            "token.key.create",
            record.kid,
            "system",
            {"label": record.label, "backend": self.keystore.backend},
            now,
        )
        return record

    def _make_key(self, label: str, now: datetime) -> KeyRecord:
        try:
            key = self.keystore.generate(label)
        except ConflictError:
            # Left by a crash between generating the key and recording it: take it up.
            key = self.keystore.load(label)
        require_p256(key.public_key())
        self._keys[label] = key
        return KeyRecord(label, jwk_thumbprint(key.public_key()), now)

    def _key(self, record: KeyRecord) -> ec.EllipticCurvePrivateKey:
        key = self._keys.get(record.label)
        if key is None:
            key = self.keystore.load(record.label)
            if jwk_thumbprint(key.public_key()) != record.kid:
                raise KeyAccessError(
                    "token-key-mismatch",
                    f"token-signing key {record.label!r} does not match the kid {record.kid} "
                    f"recorded in {self.state_path}",
                )
            self._keys[record.label] = key
        return key

    def _refresh(self) -> None:
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, []
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.state_path.read_bytes())
            records = [KeyRecord.from_json(item) for item in data["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "token-keys-invalid", f"{self.state_path} is not a valid token key state: {exc}"
            ) from None
        self._stamp, self._records = stamp, records

    def _write(self, records: list[KeyRecord]) -> None:
        data = {"version": 1, "keys": [r.to_json() for r in records]}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps(data, indent=2).encode() + b"\n")
        self._stamp = None
        self._refresh()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock across processes sharing this home (first use, rotation)."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _audit(self, action: str, subject: str, actor: str, detail: dict[str, Any], at: datetime) -> None:
        with writing(self.engine) as conn:
            audit.append(conn, [audit.Event(action, subject, actor, "ok", detail)], at)


def _generation(prefix: str, label: str) -> int:
    base = f"{prefix}{KEY_NAME}"
    if label == base:
        return 1
    tail = label.removeprefix(base + "-")
    return int(tail) if tail != label and tail.isdigit() else 0


def _keystore_of(authority: Authority) -> KeyStore:
    ca = next((ca for ca in authority.cas.values() if ca.key_label), None)
    if ca is None:
        raise ConfigError("token-keys-unconfigured", "the authority holds no keystore for token-signing keys")
    return ca.keystore


# --- token policy: issuer, audiences, scopes, lifetime ---------------------------------------------

DEFAULT_AUDIENCE = "devid"
DEFAULT_SCOPES = ("telemetry:publish", "config:read")
DEFAULT_LIFETIME = timedelta(minutes=15)
#: RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def default_issuer(org: str) -> str:
    """`urn:devid:<org>` with the organisation lower-cased and runs of other characters as `-`."""
    slug = re.sub(r"[^a-z0-9]+", "-", org.lower()).strip("-") or "devid"
    return f"urn:devid:{slug}"


@dataclass(frozen=True)
class TokenPolicy:
    """Token policy of one devid home.

    `scopes` are all a device may be granted; a request for none gets `default_scopes` (all of
    them unless set). `lifetime` is the default, never above `MAX_TOKEN_LIFETIME` (one hour).
    """

    issuer: str
    audiences: tuple[str, ...] = (DEFAULT_AUDIENCE,)
    default_audience: str = DEFAULT_AUDIENCE
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    default_scopes: tuple[str, ...] | None = None
    lifetime: timedelta = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ConfigError("token-policy", "the token issuer must not be empty")
        if self.default_audience not in self.audiences:
            raise ConfigError(
                "token-policy", f"default audience {self.default_audience!r} is not an allowed audience"
            )
        for scope in (*self.scopes, *(self.default_scopes or ())):
            if not _SCOPE_TOKEN.fullmatch(scope):
                raise ConfigError(
                    "token-policy", f"scope {scope!r} is not a valid scope token (RFC 6749 §3.3)"
                )
        if self.default_scopes is not None and not set(self.default_scopes) <= set(self.scopes):
            raise ConfigError("token-policy", "default scopes must be among the allowed scopes")
        if not timedelta(0) < self.lifetime <= MAX_TOKEN_LIFETIME:
            raise ConfigError(
                "token-policy", f"token lifetime must be above 0 and at most {MAX_TOKEN_LIFETIME}"
            )

    @property
    def granted_by_default(self) -> tuple[str, ...]:
        return self.default_scopes if self.default_scopes is not None else self.scopes

    @classmethod
    def for_org(cls, org: str) -> TokenPolicy:
        return cls(issuer=default_issuer(org))

    def to_config(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "issuer": self.issuer,
            "audiences": list(self.audiences),
            "default_audience": self.default_audience,
            "scopes": list(self.scopes),
            "lifetime_minutes": self.lifetime / timedelta(minutes=1),
        }
        if self.default_scopes is not None:
            data["default_scopes"] = list(self.default_scopes)
        return data

    @classmethod
    def from_config(cls, data: dict[str, Any], org: str) -> TokenPolicy:
        """From a `[tokens]` table of devid.toml; every key optional."""
        try:
            audiences = tuple(str(a) for a in data.get("audiences", (DEFAULT_AUDIENCE,)))
            default_scopes = data.get("default_scopes")
            return cls(
                issuer=str(data.get("issuer") or default_issuer(org)),
                audiences=audiences,
                default_audience=str(data.get("default_audience", audiences[0] if audiences else "")),
                scopes=tuple(str(s) for s in data.get("scopes", DEFAULT_SCOPES)),
                default_scopes=tuple(str(s) for s in default_scopes) if default_scopes is not None else None,
                lifetime=timedelta(minutes=float(data.get("lifetime_minutes", 15))),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError("token-policy", f"invalid [tokens] configuration: {exc}") from None


_POLICIES: weakref.WeakKeyDictionary[Authority, TokenPolicy] = weakref.WeakKeyDictionary()
_POLICIES_LOCK = threading.Lock()


def set_token_policy(authority: Authority, policy: TokenPolicy) -> None:
    with _POLICIES_LOCK:
        _POLICIES[authority] = policy


def token_policy(authority: Authority) -> TokenPolicy:
    """The policy set for `authority`, else the defaults for its organisation."""
    with _POLICIES_LOCK:
        policy = _POLICIES.get(authority)
        if policy is None:
            policy = _POLICIES[authority] = TokenPolicy.for_org(authority.org)
        return policy


# --- which keyring (and policy) an authority uses --------------------------------------------------

_KEYRINGS: weakref.WeakKeyDictionary[Authority, TokenKeyring] = weakref.WeakKeyDictionary()
_KEYRINGS_LOCK = threading.Lock()


def attach(authority: Authority, home: Home) -> TokenKeyring:
    """Give `authority` the token keyring of `home`, and the token policy of its `[tokens]` table
    (defaults when the configuration has none). Called by `open_authority`."""
    ring = TokenKeyring.for_home(home, authority)
    settings = getattr(home.config, "tokens", None) or {}
    set_token_policy(authority, TokenPolicy.from_config(dict(settings), home.config.org))
    with _KEYRINGS_LOCK:
        _KEYRINGS[authority] = ring
    return ring


def attach_keyring(authority: Authority, ring: TokenKeyring) -> TokenKeyring:
    """Give `authority` a keyring built by the caller (tests, embedders with their own layout)."""
    with _KEYRINGS_LOCK:
        _KEYRINGS[authority] = ring
    return ring


def token_keyring(authority: Authority) -> TokenKeyring:
    """The keyring attached to `authority`; for one opened without it, the software home it comes from.

    The fallback finds the home's key folder through the software keystore (`<home>/keys`) and the
    key prefix through the CA key labels, which is exactly what `attach` would use.
    """
    with _KEYRINGS_LOCK:
        ring = _KEYRINGS.get(authority)
        if ring is not None:
            return ring
        keystore = _keystore_of(authority)
        directory = getattr(keystore, "directory", None)
        labelled = [ca for ca in authority.cas.values() if ca.key_label and ca.key_label.endswith(ca.name)]
        if not isinstance(directory, Path) or not labelled:
            raise ConfigError(
                "token-keys-unconfigured",
                "this authority has no token keyring: open it with open_authority (which attaches one)",
            )
        label = labelled[0].key_label or ""
        prefix = label[: len(label) - len(labelled[0].name)]
        ring = TokenKeyring(
            keystore, prefix, directory / STATE_FILE, engine=authority.engine, clock=authority.clock
        )
        _KEYRINGS[authority] = ring
        return ring
