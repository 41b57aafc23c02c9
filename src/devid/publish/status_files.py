"""CRLs, revocation filters and allowlist snapshots over HTTP, as the publisher recorded them.

    GET /crl/<ca>.crl            the full CRL (DER; PEM with `?format=pem` or Accept: application/x-pem-file)
    GET /crl/<ca>-delta.crl      its delta against the latest full CRL
    GET /crl/<ca>/<shard>.crl    one partition
    GET /filter/<ca>[?since=V]   the signed revocation filter, or the signed delta from version V
    GET /allowlist/<name>[?since=V]  the signed allowlist of a hub or enrollment group (or its delta)

Answers carry ETag, Last-Modified and Cache-Control, so a CDN or a gateway revalidates cheaply
(If-None-Match gets 304). The latest version of everything is held in memory and reloaded when
the store's `published` table moves (one indexed query at most every `poll` seconds).
Allowlists are built on request (at most every `allowlist_every` seconds per name), since they
change with every issuance as well as every revocation.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from devid.authority.core import Authority
from devid.authority.status_signing import blob_signer
from devid.errors import DevidError, NotFoundError
from devid.pki.chain import key_identifier as ca_key_id
from devid.revocation import crl, records
from devid.revocation.allowlist import build_allowlist, diff_allowlists
from devid.revocation.filter import diff_filters
from devid.revocation.publisher import FILTER, status_cas
from devid.store.engine import reading, unavailable
from devid.store.models import certificates, devices, enrollments, hubs, published

#: (status, headers, body): the shape of `devid.publish.plain_http`'s replies.
Reply = tuple[int, Sequence[tuple[str, str]], bytes]

ALLOWLIST = "allowlist"
#: Allowlists span CAs (a device's IDevID and LDevID); the operational CA, whose certificate every
#: gateway's bundle holds, signs them.
ALLOWLIST_SIGNER = "operational"
ALLOWLIST_LIFETIME = timedelta(days=1)
#: Seconds a CDN or gateway may reuse an answer before revalidating: revocations reach it this fast.
MAX_AGE = 10
_CRL = re.compile(r"/crl/(?P<ca>[A-Za-z0-9._-]+?)(?:/(?P<shard>\d{1,4}))?(?P<delta>-delta)?\.crl")
_NAMED = re.compile(r"/(?P<kind>filter|allowlist)/(?P<name>[A-Za-z0-9._:-]{1,128})")
_PEM_TYPE = "application/x-pem-file"
log = logging.getLogger("devid.publish")


def _text(status: int, message: str) -> Reply:
    return (
        status,
        (("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")),
        (message + "\n").encode(),
    )


@dataclass
class StatusFiles:
    """The handler of the status paths, for aiohttp (`devid.publish.routes`) and the plain port."""

    authority: Authority
    poll: float = 0.25
    allowlist_every: float = 2.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _marker: tuple[int, int] | None = None
    _checked: float = 0.0
    _latest: dict[tuple[str, str], records.Published | None] = field(default_factory=dict)
    _deltas: dict[tuple[str, str, int, int], bytes] = field(default_factory=dict)
    _allowlist_built: dict[str, tuple[float, object]] = field(default_factory=dict)

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if method not in ("GET", "HEAD"):
            return 405, (("Allow", "GET, HEAD"), ("Content-Type", "text/plain")), b"method not allowed\n"
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            reply = self._answer(parts.path, query, headers)
        except DevidError as exc:
            reply = _text(404 if exc.code.startswith("unknown") else 400, f"{exc.message} [{exc.code}]")
        except Exception as exc:
            down = unavailable(exc)
            if down is None:
                raise
            status, fields, text = _text(503, f"{down.message} [{down.code}]")
            reply = status, (*fields, ("Retry-After", str(down.retry_after))), text
        if method == "HEAD":
            return reply[0], reply[1], b""
        return reply

    def _answer(self, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Reply:
        self.refresh()
        crl_match = _CRL.fullmatch(path)
        if crl_match is not None:
            return self._crl(crl_match, query, headers)
        named = _NAMED.fullmatch(path)
        if named is None:
            return _text(404, f"no status data at {path}")
        since = query.get("since")
        if since is not None and not since.isdigit():
            return _text(400, "since= takes a version number")
        if named["kind"] == "filter":
            return self._versioned(FILTER, named["name"], since, headers, self._filter_delta)
        return self._allowlist(named["name"], since, headers)

    # --- CRLs -----------------------------------------------------------------------------------

    def _crl(self, match: re.Match[str], query: Mapping[str, str], headers: Mapping[str, str]) -> Reply:
        ca = match["ca"]
        if ca not in status_cas(self.authority):
            return _text(404, f"no CA named {ca!r} publishes a CRL here")
        shard = None if match["shard"] is None else int(match["shard"])
        found = self._get(crl.DELTA if match["delta"] else crl.FULL, crl.scope(ca, shard))
        if found is None:
            return _text(404, f"no such CRL published: {match.group(0)}")
        pem = query.get("format") == "pem" or _PEM_TYPE in headers.get("accept", "")
        data = (
            x509.load_der_x509_crl(found.data).public_bytes(serialization.Encoding.PEM) if pem else found.data
        )
        return _cached(found, data, _PEM_TYPE if pem else "application/pkix-crl", headers, self._now())

    # --- filters and allowlists -----------------------------------------------------------------

    def _versioned(
        self,
        kind: str,
        scope: str,
        since: str | None,
        headers: Mapping[str, str],
        delta: Any,
    ) -> Reply:
        found = self._get(kind, scope)
        if found is None:
            return _text(404, f"no {kind} published for {scope!r}")
        if since is None:
            return _cached(found, found.data, "application/octet-stream", headers, self._now())
        held = int(since)
        if held == found.number:
            return 304, _validators(found, found.data, self._now()), b""
        key = (kind, scope, held, found.number)
        data = self._deltas.get(key)
        if data is None:
            with reading(self.authority.engine) as conn:
                old = records.version(conn, kind, scope, held)
            if old is None or held > found.number:
                return _text(404, f"version {held} of the {kind} of {scope!r} is not kept: fetch the whole")
            data = self._deltas[key] = delta(scope, old.data, found.data)
        return _cached(found, data, "application/octet-stream", headers, self._now())

    def _filter_delta(self, ca: str, old: bytes, new: bytes) -> bytes:
        return diff_filters(old, new, sign=blob_signer(self.authority, ca))

    def _allowlist(self, name: str, since: str | None, headers: Mapping[str, str]) -> Reply:
        self._build_allowlist(name)
        return self._versioned(ALLOWLIST, name, since, headers, self._allowlist_delta)

    def _allowlist_delta(self, name: str, old: bytes, new: bytes) -> bytes:
        return diff_allowlists(old, new, sign=blob_signer(self.authority, ALLOWLIST_SIGNER))

    def _build_allowlist(self, name: str) -> None:
        """A new version of `name`'s allowlist if its members changed: looked at once a revocation
        or an issuance happened since the last look, else at most every `allowlist_every` s."""
        now_mono = time.monotonic()
        with reading(self.authority.engine) as conn:
            marker = (
                tuple(records.generations(conn).items()),
                conn.execute(select(func.max(certificates.c.id))).scalar(),
            )
        last_time, last_marker = self._allowlist_built.get(name, (-1e9, None))
        if marker == last_marker and now_mono - last_time < self.allowlist_every:
            return
        self._allowlist_built[name] = (now_mono, marker)
        now = self.authority.clock.now().astimezone(UTC).replace(microsecond=0)
        with reading(self.authority.engine) as conn:
            hub = conn.execute(select(hubs.c.id).where(hubs.c.name == name)).scalar()
            group = conn.execute(select(enrollments.c.id).where(enrollments.c.name == name)).scalar()
            if hub is None and group is None:
                raise NotFoundError("unknown-allowlist", f"no hub or enrollment group named {name!r}")
            member = devices.c.hub_id == hub if hub is not None else devices.c.enrollment_id == group
            members, count = records.authorized_indices(conn, member, now)
            gen = sum(records.generations(conn).values())
            found = records.latest(conn, ALLOWLIST, name)
        digest = hashlib.sha256(repr((sorted(members.items()), count)).encode()).hexdigest()
        if found is not None and found.base_number == int(digest[:15], 16):
            return
        version = found.number + 1 if found is not None else 1
        data = build_allowlist(
            # Named by key identifier: a gateway knows the CA certificates, not devid's CA names.
            {ca_key_id(self.authority.cas[ca].certificate): found for ca, found in members.items()},
            devices=count,
            scope=name,
            version=version,
            issued_at=now,
            next_update=now + ALLOWLIST_LIFETIME,
            sign=blob_signer(self.authority, ALLOWLIST_SIGNER),
        )
        # `base_number` holds a digest of the members for allowlists: an unchanged set is not re-signed.
        records.record(
            self.authority.engine,
            ALLOWLIST,
            name,
            version,
            gen,
            int(digest[:15], 16),
            now,
            now + ALLOWLIST_LIFETIME,
            data,
        )
        self._latest.pop((ALLOWLIST, name), None)

    def _now(self) -> datetime:
        """The authority's clock (injected), for how long an answer may be cached."""
        return self.authority.clock.now().astimezone(UTC)

    # --- the cache ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the status data when the store's published table changed (at most every `poll`
        seconds): all the latest versions at once, so that every process serves every CRL and
        filter from memory should the store go away (the server calls this every second, besides
        each request). While the store is away, what was read stays served until its nextUpdate."""
        now = time.monotonic()
        if now - self._checked < self.poll:
            return
        with self._lock:
            self._checked = now
            try:
                with reading(self.authority.engine) as conn:
                    marker = conn.execute(select(func.max(published.c.id), func.count())).one()
                    if marker != self._marker:
                        latest: dict[tuple[str, str], records.Published | None] = {**records.latest_all(conn)}
                        self._marker = (marker[0] or 0, marker[1])
                        self._latest = latest
                        self._deltas.clear()
            except Exception as exc:
                if unavailable(exc) is None:
                    raise
                log.warning("status data served from cache, the store is unavailable: %s", exc)

    def _get(self, kind: str, scope: str) -> records.Published | None:
        key = (kind, scope)
        if key not in self._latest:
            with reading(self.authority.engine) as conn:
                self._latest[key] = records.latest(conn, kind, scope)
        return self._latest[key]


def _validators(found: records.Published, data: bytes, now: datetime) -> list[tuple[str, str]]:
    age = max(0, min(MAX_AGE, int((found.next_update - now).total_seconds())))
    return [
        ("ETag", f'"{hashlib.sha256(data).hexdigest()[:32]}"'),
        ("Last-Modified", format_datetime(found.this_update.astimezone(UTC), usegmt=True)),
        ("Expires", format_datetime(found.next_update.astimezone(UTC), usegmt=True)),
        ("Cache-Control", f"public, max-age={age}, must-revalidate"),
    ]


def _cached(
    found: records.Published, data: bytes, content_type: str, headers: Mapping[str, str], now: datetime
) -> Reply:
    validators = _validators(found, data, now)
    etag = validators[0][1]
    if etag in [t.strip() for t in headers.get("if-none-match", "").split(",")]:
        return 304, validators, b""
    return 200, [("Content-Type", content_type), *validators], data
