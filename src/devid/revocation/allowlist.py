"""Allowlist snapshots: the certificates that currently authorize devices in one hub or group.

Where a filter says which certificates are revoked, an allowlist says which ones may connect: per
CA, the indices of the unexpired, unrevoked certificates of the scope's active devices, stored
exactly with the same Golomb codec. Anything else (another CA, a certificate issued after the
snapshot, a serial without an index) is not admitted until a newer snapshot or delta says so.

Payload of an ALLOWLIST envelope: the number of devices, the number of CAs, then per CA (sorted by
name) its name and its set. Of an ALLOWLIST_DELTA: the new number of devices, the number of CAs
that changed, then per CA its name, a bound on its indices, the indices added and those removed.
A set's bound (universe) is one past its largest index: an allowlist has no coverage horizon.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from devid.errors import PolicyError
from devid.pki.serials import serial_index
from devid.revocation.golomb import MAX_UNIVERSE, IndexSet, Reader, apply_changes, format_error, text, varint
from devid.revocation.signed import (
    Header,
    Kind,
    Signer,
    Versioned,
    check_successor,
    open_envelope,
    seal,
    verifying_key,
)

_MAX_CAS = 1 << 16
_MAX_DEVICES = (1 << 63) - 1


@dataclass(frozen=True)
class Allowlist(Versioned):
    """A loaded, verified allowlist of one hub or group; `apply` a verified delta to get the next one."""

    header: Header
    #: Devices the snapshot covers (for the operator; admission goes by certificate).
    devices: int
    #: Per CA name, the admitted certificate indices (no CA without any).
    members: Mapping[str, IndexSet]
    #: The CA key this allowlist verified with: deltas applied to it must verify with it too.
    public_key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)

    @property
    def scope(self) -> str:
        return self.header.scope

    def admits(self, ca_name: str, serial: int) -> bool:
        """Whether the certificate with `serial` issued by CA `ca_name` may connect."""
        index = serial_index(serial)
        admitted = self.members.get(ca_name)
        return index is not None and admitted is not None and index in admitted

    def apply(self, delta: bytes) -> Allowlist:
        """The allowlist `delta` (signed by the same CA) makes of this one; this one is left as it was.

        Refuses (PolicyError) a delta that is not newer (`filter-version-older`), that starts from
        another version (`filter-delta-base`), for another scope (`filter-scope`), or broken."""
        header, reader = open_envelope(delta, self.public_key, Kind.ALLOWLIST_DELTA)
        check_successor(self.header, header)
        devices = reader.varint(_MAX_DEVICES)
        members = dict(self.members)
        for ca_name in _names(reader):
            universe = reader.varint(MAX_UNIVERSE)
            added, removed = reader.index_set(universe), reader.index_set(universe)
            held = members.pop(ca_name, IndexSet.of((), 0))
            admitted = apply_changes(held, added, removed)
            if admitted:
                members[ca_name] = _bounded(admitted)
        reader.end()
        return Allowlist(header.as_snapshot(Kind.ALLOWLIST), devices, members, self.public_key)


def _bounded(indices: Iterable[int]) -> IndexSet:
    """The set of `indices` below one past the largest of them."""
    entries = set(indices)
    return IndexSet.of(entries, max(entries, default=-1) + 1)


def _names(reader: Reader) -> Iterable[str]:
    """Read a count, then yield that many CA names, which must be strictly ascending (canonical)."""
    previous: str | None = None
    for _ in range(reader.varint(_MAX_CAS)):
        name = reader.text()
        if previous is not None and name <= previous:
            raise format_error("CA names out of order")
        previous = name
        yield name


def build_allowlist(
    members: Mapping[str, Iterable[int]],
    *,
    devices: int,
    scope: str,
    version: int,
    issued_at: datetime,
    next_update: datetime,
    sign: Signer,
) -> bytes:
    """The signed allowlist of hub or group `scope`: per CA name, the indices of the certificates
    that authorize its `devices` active devices."""
    sets = {name: _bounded(indices) for name, indices in members.items()}
    names = sorted(name for name, admitted in sets.items() if len(admitted))
    payload = bytearray(varint(devices) + varint(len(names)))
    for name in names:
        payload += text(name) + varint(sets[name].universe) + sets[name].encode()
    header = Header(Kind.ALLOWLIST, scope, version, issued_at, next_update)
    return seal(header, bytes(payload), sign)


def load_allowlist(
    data: bytes, public_key: ec.EllipticCurvePublicKey, *, held: Allowlist | None = None
) -> Allowlist:
    """Verify and decode a full allowlist; with `held`, refuse one for another scope or older than it."""
    header, reader = open_envelope(data, public_key, Kind.ALLOWLIST)
    if held is not None:
        check_successor(held.header, header)
    devices = reader.varint(_MAX_DEVICES)
    members = {}
    for name in _names(reader):
        admitted = reader.index_set(reader.varint(MAX_UNIVERSE))
        if not len(admitted):
            raise format_error(f"CA {name!r} listed with no certificate")
        members[name] = admitted
    reader.end()
    return Allowlist(header, devices, members, public_key)


def diff_allowlists(
    old: Allowlist | bytes,
    new: Allowlist | bytes,
    *,
    sign: Signer,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> bytes:
    """The signed delta taking `old` to `new` (same scope, newer version); it carries `new`'s version,
    times and device count. Allowlists given as bytes are loaded with `public_key` (by default the
    public half of `sign`, when it is a key)."""
    old_view, new_view = (
        a if isinstance(a, Allowlist) else load_allowlist(a, verifying_key(sign, public_key))
        for a in (old, new)
    )
    if new_view.scope != old_view.scope:
        raise PolicyError("filter-scope", f"cannot diff {old_view.scope!r} against {new_view.scope!r}")
    if new_view.version <= old_view.version:
        raise PolicyError("filter-version-older", "a delta goes from an older version to a newer one")
    changes = bytearray()
    changed = 0
    for name in sorted(old_view.members.keys() | new_view.members.keys()):
        before = set(old_view.members.get(name, ()))
        after = set(new_view.members.get(name, ()))
        if before == after:
            continue
        changed += 1
        universe = max(max(before, default=-1), max(after, default=-1)) + 1
        added, removed = IndexSet.of(after - before, universe), IndexSet.of(before - after, universe)
        changes += text(name) + varint(universe) + added.encode() + removed.encode()
    header = Header(
        Kind.ALLOWLIST_DELTA,
        new_view.scope,
        new_view.version,
        new_view.issued_at,
        new_view.next_update,
        base_version=old_view.version,
    )
    return seal(header, varint(new_view.devices) + varint(changed) + bytes(changes), sign)
