"""Session tokens in the authority: the keys that sign them (P-256, ES256), their rotation, and the
token policy (issuer, audiences, scopes, lifetime). Token formats live in `devid.tokens`.

The keys and their state (which key signs, which retired keys are still published and since when)
live in the store's `token_keys` table, so every host on one PostgreSQL signs with the same key
and publishes the same JWKS. A software key is kept there encrypted under the home passphrase
(the CA keys' PKCS#8 encryption); a PKCS#11 key is generated inside the token and stays there,
the table recording its label. The first key is made at first use under `<key_prefix>token-signer`;
each rotation adds `<key_prefix>token-signer-<n>`. Every use reads the current key from the table,
so `devid token rotate-key` takes effect in every running server at its next token. Two processes
making the first key at once agree: the table admits one current key and one row per label, and
the process whose insert is refused takes up the other's.

A retired key stays published (in the JWKS) for `RETIRED_KEY_PUBLISHED_FOR` after its retirement:
the longest a token may live plus the clock skew devid allows, so every token it signed has expired
before a verifier can no longer find its key. The public keys published are always taken from the
keys themselves, and each must hash to the kid the table names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from devid.authority.core import Authority
from devid.clock import Clock
from devid.config import Home
from devid.errors import ConfigError, ConflictError, KeyAccessError
from devid.keys.base import KeyStore
from devid.keys.software import SoftwareKeyStore
from devid.pki.keypolicy import require_p256
from devid.pki.profiles import CLOCK_SKEW
from devid.store import audit
from devid.store.engine import reading, writing
from devid.store.models import token_keys as _table

#: No session token lives longer than this, whatever the policy says.
MAX_TOKEN_LIFETIME = timedelta(hours=1)
#: How long a retired key stays in the JWKS: every token it signed has expired by then.
RETIRED_KEY_PUBLISHED_FOR = MAX_TOKEN_LIFETIME + CLOCK_SKEW
#: Key label suffix of the first token-signing key (`<key_prefix>token-signer`).
KEY_NAME = "token-signer"

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
    """One token-signing key as the store records it."""

    label: str
    kid: str
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def published_until(self) -> datetime | None:
        """When the key leaves the JWKS (None: it is the current key)."""
        return None if self.retired_at is None else self.retired_at + RETIRED_KEY_PUBLISHED_FOR


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
    """The token-signing keys of one store, opened with the home's keystore."""

    def __init__(self, keystore: KeyStore, key_prefix: str, *, engine: Engine, clock: Clock) -> None:
        self.keystore = keystore
        self.key_prefix = key_prefix
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}  # by kid

    @classmethod
    def for_authority(cls, authority: Authority, key_prefix: str) -> TokenKeyring:
        """The keyring on the authority's store, keystore and clock."""
        return cls(_keystore_of(authority), key_prefix, engine=authority.engine, clock=authority.clock)

    # --- reading ------------------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """Every key the store names, oldest first."""
        with reading(self.engine) as conn:
            return [_record(row) for row in conn.execute(_ALL)]

    def current(self) -> SigningKey:
        """The key that signs now; the first one is generated (and audited) at first use."""
        with reading(self.engine) as conn:
            row = conn.execute(_CURRENT).first()
        record = _record(row) if row is not None else self._create_first()
        return SigningKey(record.kid, record.label, self._key(record))

    def published(self) -> list[PublishedKey]:
        """The current key and the retired keys whose tokens may still be valid, newest first."""
        self.current()  # a JWKS fetched before the first token already names the key that will sign it
        now = self.clock.now()
        live = [r for r in self.records() if r.published_until is None or r.published_until > now]
        live.sort(key=lambda r: (r.retired_at is not None, -(r.created_at.timestamp())))
        return [PublishedKey(r, self._key(r).public_key()) for r in live]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set (RFC 7517 §5) a verifier fetches: `{"keys": [...]}`."""
        return {"keys": [key.jwk() for key in self.published()]}

    # --- rotation -------------------------------------------------------------------------------

    def rotate(self, actor: str = "system") -> tuple[KeyRecord, KeyRecord | None]:
        """Make a new signing key current; the old one stays published until its tokens expired.

        Returns (new, retired). The retirement, the new key and their audit event commit together.
        """
        now = self.clock.now().astimezone(UTC).replace(microsecond=0)
        with writing(self.engine) as conn:
            old_row = conn.execute(_CURRENT.with_for_update()).first()
            old = _record(old_row) if old_row is not None else None
            if old is not None:
                conn.execute(
                    update(_table).where(_table.c.label == old.label).values(is_current=None, retired_at=now)
                )
            new = self._insert_new(conn, now)
            retired = KeyRecord(old.label, old.kid, old.created_at, now) if old else None
            detail = {"label": new.label, "backend": self.keystore.backend}
            if retired is not None:
                detail |= {"retired": retired.kid, "published_until": str(retired.published_until)}
            audit.append(conn, [audit.Event("token.key.rotate", new.kid, actor, "ok", detail)], now)
        return new, retired

    # --- internals ------------------------------------------------------------------------------

    def _create_first(self) -> KeyRecord:
        now = self.clock.now().astimezone(UTC).replace(microsecond=0)
        try:
            with writing(self.engine) as conn:
                row = conn.execute(_CURRENT).first()
                if row is not None:  # made by another writer since this one looked
                    return _record(row)
                record = self._insert_new(conn, now)
                detail = {"label": record.label, "backend": self.keystore.backend}
                audit.append(conn, [audit.Event("token.key.create", record.kid, "system", "ok", detail)], now)
                return record
        except IntegrityError:
            # Another process (on PostgreSQL) made the first key at the same time: use it.
            with reading(self.engine) as conn:
                row = conn.execute(_CURRENT).first()
            if row is None:
                raise
            return _record(row)

    def _insert_new(self, conn: Connection, now: datetime) -> KeyRecord:
        labels = conn.execute(select(_table.c.label)).scalars()
        generation = 1 + max((_generation(self.key_prefix, label) for label in labels), default=0)
        label = self._label(generation)
        key, sealed = self._make_key(label)
        record = KeyRecord(label, jwk_thumbprint(key.public_key()), now)
        conn.execute(
            insert(_table).values(
                label=label,
                kid=record.kid,
                backend=self.keystore.backend,
                encrypted_key=sealed,
                is_current=True,
                created_at=now,
            )
        )
        with self._lock:  # by kid: a key whose row did not commit is never taken for another
            self._keys[record.kid] = key
        return record

    def _label(self, generation: int) -> str:
        return (
            f"{self.key_prefix}{KEY_NAME}" if generation == 1 else f"{self.key_prefix}{KEY_NAME}-{generation}"
        )

    def _make_key(self, label: str) -> tuple[ec.EllipticCurvePrivateKey, bytes | None]:
        """A new key and what the store keeps of it: the encrypted key, or None (it stays in the token)."""
        if isinstance(self.keystore, SoftwareKeyStore):
            key = ec.generate_private_key(ec.SECP256R1())
            return key, self.keystore.encrypt(key)
        try:
            key = self.keystore.generate(label)
        except ConflictError:
            # Left by a transaction that did not commit (a crash, a concurrent first use): take it up.
            key = self.keystore.load(label)
        require_p256(key.public_key())
        return key, None

    def _key(self, record: KeyRecord) -> ec.EllipticCurvePrivateKey:
        with self._lock:
            key = self._keys.get(record.kid)
        if key is not None:
            return key
        with reading(self.engine) as conn:
            sealed = conn.execute(_SEALED, {"label": record.label}).scalar_one_or_none()
        if sealed is None:
            key = self.keystore.load(record.label)
        elif isinstance(self.keystore, SoftwareKeyStore):
            key = self.keystore.decrypt(sealed, f"token-signing key {record.label!r}")
        else:
            raise ConfigError(
                "token-keys-backend",
                f"token-signing key {record.label!r} is a software key; this home's keys are in "
                f"{self.keystore.backend}",
            )
        if jwk_thumbprint(key.public_key()) != record.kid:
            raise KeyAccessError(
                "token-key-mismatch",
                f"token-signing key {record.label!r} does not match the kid {record.kid} recorded "
                "in the store",
            )
        with self._lock:
            self._keys[record.kid] = key
        return key


_ALL = select(_table).order_by(_table.c.id)
_CURRENT = select(_table).where(_table.c.is_current.is_(True))
_SEALED = select(_table.c.encrypted_key).where(_table.c.label == bindparam("label"))


def _record(row: Any) -> KeyRecord:
    return KeyRecord(row.label, row.kid, row.created_at, row.retired_at)


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


def set_token_policy(authority: Authority, policy: TokenPolicy) -> None:
    authority.own(TokenPolicy, policy)


def token_policy(authority: Authority) -> TokenPolicy:
    """The policy set for `authority`, else the defaults for its organisation."""
    return authority.owned(TokenPolicy, lambda: TokenPolicy.for_org(authority.org))


# --- which keyring (and policy) an authority uses --------------------------------------------------


def attach(authority: Authority, home: Home) -> TokenKeyring:
    """Give `authority` the token keyring with the key prefix of `home`, and the token policy of its
    `[tokens]` table (defaults when the configuration has none). Called by `open_authority`."""
    settings = getattr(home.config, "tokens", None) or {}
    set_token_policy(authority, TokenPolicy.from_config(dict(settings), home.config.org))
    return attach_keyring(authority, TokenKeyring.for_authority(authority, home.config.key_prefix))


def attach_keyring(authority: Authority, ring: TokenKeyring) -> TokenKeyring:
    """Give `authority` a keyring built by the caller (tests, embedders with their own layout)."""
    return authority.own(TokenKeyring, ring)


def token_keyring(authority: Authority) -> TokenKeyring:
    """The keyring attached to `authority`; for one opened without it, one with the key prefix of its
    CA key labels (`<prefix><ca name>`), which is exactly what `attach` would use."""
    return authority.owned(
        TokenKeyring, lambda: TokenKeyring.for_authority(authority, _key_prefix(authority))
    )


def _key_prefix(authority: Authority) -> str:
    labelled = [ca for ca in authority.cas.values() if ca.key_label and ca.key_label.endswith(ca.name)]
    if not labelled:
        raise ConfigError(
            "token-keys-unconfigured",
            "this authority has no token keyring: open it with open_authority (which attaches one)",
        )
    label = labelled[0].key_label or ""
    return label[: len(label) - len(labelled[0].name)]
