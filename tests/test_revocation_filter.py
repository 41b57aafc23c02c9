"""The compact revocation filter and allowlist snapshots: exact answers, deltas, refusals, sizes."""

from __future__ import annotations

import functools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devid.errors import DevidError, PolicyError
from devid.pki.serials import indexed_serial, random_serial, serial_index
from devid.revocation import golomb
from devid.revocation.allowlist import Allowlist, build_allowlist, diff_allowlists, load_allowlist
from devid.revocation.filter import (
    FilterAnswer,
    RevocationFilter,
    build_filter,
    diff_filters,
    load_filter,
)
from devid.revocation.signed import Header, Kind, seal

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = KEY.public_key()
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
NEXT = T0 + timedelta(hours=6)
CA = "operational"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_filter(revoked: set[int] | list[int], universe: int, version: int = 1, ca_name: str = CA) -> bytes:
    return build_filter(
        revoked, universe, version=version, ca_name=ca_name, issued_at=T0, next_update=NEXT, sign=KEY
    )


def make_allowlist(members: dict[str, set[int]], version: int = 1, devices: int = 3) -> bytes:
    return build_allowlist(
        members, devices=devices, scope="hub-eu-1", version=version, issued_at=T0, next_update=NEXT, sign=KEY
    )


def serial_without_index() -> int:
    while True:
        serial = random_serial()
        if serial_index(serial) is None:
            return serial


# -- the codec ---------------------------------------------------------------------------------------


@st.composite
def index_sets(draw: st.DrawFn, max_universe: int = 5000) -> tuple[set[int], int]:
    universe = draw(st.integers(0, max_universe) | st.integers(0, 1 << 56))
    if universe == 0:
        return set(), 0
    members = draw(st.sets(st.integers(0, universe - 1), max_size=min(universe, 300)))
    if draw(st.booleans()) and universe <= max_universe:  # dense sets: stored as their complement
        members = set(range(universe)) - members
    return members, universe


@FUZZ
@given(index_sets())
def test_codec_round_trips_any_set(case: tuple[set[int], int]) -> None:
    members, universe = case
    decoded = golomb.decode(golomb.encode(members, universe), universe)
    assert sorted(decoded) == sorted(members)
    assert len(decoded) == len(members)
    probes = {0, universe - 1, universe, *list(members)[:20]}
    for i in probes:
        assert (i in decoded) == (i in members)


def test_codec_refuses_indices_outside_the_universe() -> None:
    for bad in ([5], [-1]):
        with pytest.raises(PolicyError) as err:
            golomb.encode(bad, 5)
        assert err.value.code == "filter-index-range"


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 1 << 20))
def test_codec_refuses_garbage_with_a_format_error(data: bytes, universe: int) -> None:
    try:
        decoded = golomb.decode(data, universe)
    except PolicyError as err:
        assert err.code == "filter-format"
    else:
        assert all(0 <= i < universe for i in decoded)


# -- the filter --------------------------------------------------------------------------------------


def test_every_index_of_100000_issued_answers_exactly() -> None:
    universe = 100_000
    rng = random.Random(9)
    # Random revocations, a whole revoked production batch, and both ends of the universe.
    revoked = set(rng.sample(range(universe), 5_000)) | set(range(40_000, 41_000)) | {0, universe - 1}
    view = load_filter(make_filter(revoked, universe), PUBLIC)
    assert (view.ca_name, view.version, view.universe) == (CA, 1, universe)
    assert (view.issued_at, view.next_update) == (T0, NEXT)
    answers = [view.check_index(i) for i in range(universe + 50)]
    expected = [FilterAnswer.REVOKED if i in revoked else FilterAnswer.GOOD for i in range(universe)]
    assert answers == expected + [FilterAnswer.NOT_COVERED] * 50
    for i in [*rng.sample(range(universe + 100), 2_000), 40_500]:
        assert view.check_serial(indexed_serial(i)) == view.check_index(i)
    assert view.check_serial(serial_without_index()) is FilterAnswer.NOT_COVERED


def test_a_mostly_revoked_universe_answers_exactly() -> None:
    universe = 20_000
    good = set(random.Random(3).sample(range(universe), 4_000))
    view = load_filter(make_filter(set(range(universe)) - good, universe), PUBLIC)
    assert all(
        view.check_index(i) is (FilterAnswer.GOOD if i in good else FilterAnswer.REVOKED)
        for i in range(universe)
    )
    assert view.check_index(universe) is FilterAnswer.NOT_COVERED


@pytest.mark.parametrize(("revoked", "floor", "target"), [(10_000, 1.01, 1.06), (100_000, 0.59, 0.62)])
def test_size_is_within_five_percent_of_the_floor(revoked: int, floor: float, target: float) -> None:
    universe = 1_000_000
    exact_floor = (
        math.lgamma(universe + 1) - math.lgamma(revoked + 1) - math.lgamma(universe - revoked + 1)
    ) / math.log(2)
    assert exact_floor / 8 / revoked == pytest.approx(floor, abs=0.005)
    blob = make_filter(random.Random(revoked).sample(range(universe), revoked), universe)
    assert len(blob) / revoked <= target


def test_a_delta_of_100_revocations_fits_300_bytes_and_applies() -> None:
    universe = 1_000_000
    rng = random.Random(5)
    before = set(rng.sample(range(universe), 10_000))
    after = before | set(rng.sample(sorted(set(range(universe)) - before), 100))
    old, new = make_filter(before, universe, 1), make_filter(after, universe, 2)
    delta = diff_filters(old, new, sign=KEY)
    assert len(delta) <= 300
    assert load_filter(old, PUBLIC).apply(delta) == load_filter(new, PUBLIC)


@st.composite
def filter_histories(draw: st.DrawFn) -> tuple[set[int], int, set[int], int]:
    old_universe = draw(st.integers(0, 3000))
    new_universe = old_universe + draw(st.integers(0, 500))
    old = draw(st.sets(st.integers(0, max(old_universe - 1, 0)), max_size=200)) if old_universe else set()
    new = draw(st.sets(st.integers(0, max(new_universe - 1, 0)), max_size=200)) if new_universe else set()
    # Keep most of the old revocations: a realistic delta, and both adds and removals.
    kept = {i for i in old if draw(st.integers(0, 9))}
    return old, old_universe, new | kept, new_universe


@FUZZ
@given(filter_histories())
def test_diff_then_apply_equals_the_rebuilt_filter(history: tuple[set[int], int, set[int], int]) -> None:
    old_set, old_universe, new_set, new_universe = history
    old, new = make_filter(old_set, old_universe, 4), make_filter(new_set, new_universe, 9)
    applied = load_filter(old, PUBLIC).apply(diff_filters(old, new, sign=KEY))
    rebuilt = load_filter(new, PUBLIC)
    assert applied == rebuilt
    assert set(applied.revoked) == new_set
    assert applied.version == 9


def test_a_delta_is_refused_unless_it_follows_the_held_version() -> None:
    sets = [{1, 2}, {1, 2, 3}, {2, 3, 50}]
    blobs = [make_filter(s, 100, version) for version, s in enumerate(sets, start=1)]
    v1, v2 = (load_filter(b, PUBLIC) for b in blobs[:2])
    d12 = diff_filters(blobs[0], blobs[1], sign=KEY)
    d23 = diff_filters(v2, blobs[2], sign=KEY)
    for held, delta, code in [
        (v1, d23, "filter-delta-base"),
        (v2, d12, "filter-version-older"),
        (
            v1,
            diff_filters(make_filter({1}, 100, 1, "other"), make_filter({2}, 100, 2, "other"), sign=KEY),
            "filter-scope",
        ),
        (v1, diff_filters(blobs[0], blobs[1], sign=OTHER_KEY, public_key=PUBLIC), "filter-signature"),
        (v1, blobs[1], "filter-kind"),
    ]:
        with pytest.raises(PolicyError) as err:
            held.apply(delta)
        assert err.value.code == code
    # The view refused a delta: it is as it was, and the right delta still takes it forward.
    assert v1 == load_filter(blobs[0], PUBLIC)
    assert set(v1.apply(d12).apply(d23).revoked) == sets[2]
    with pytest.raises(PolicyError) as err:
        load_filter(blobs[0], PUBLIC, held=v2)
    assert err.value.code == "filter-version-older"
    assert load_filter(blobs[2], PUBLIC, held=v2).version == 3


def test_diff_refuses_going_backwards() -> None:
    with pytest.raises(PolicyError) as err:
        diff_filters(make_filter({1}, 10, 2), make_filter({1}, 10, 1), sign=KEY)
    assert err.value.code == "filter-version-older"
    with pytest.raises(PolicyError) as err:
        diff_filters(make_filter({1}, 10, 1), make_filter({1}, 9, 2), sign=KEY)
    assert err.value.code == "filter-index-range"


# -- the envelope: every corruption is refused -----------------------------------------------------


@functools.cache
def small_blobs() -> dict[str, bytes]:
    old_filter, new_filter = make_filter({3, 70, 71}, 500, 1), make_filter({3, 71, 99, 600}, 700, 2)
    old_list, new_list = make_allowlist({CA: {1, 2, 9}}, 1), make_allowlist({CA: {2, 9, 12}, "m": {4}}, 2)
    return {
        "filter": old_filter,
        "filter-delta": diff_filters(old_filter, new_filter, sign=KEY),
        "allowlist": old_list,
        "allowlist-delta": diff_allowlists(old_list, new_list, sign=KEY),
    }


def open_any(kind: str, data: bytes, held_filter: RevocationFilter, held_list: Allowlist) -> object:
    if kind == "filter":
        return load_filter(data, PUBLIC)
    if kind == "filter-delta":
        return held_filter.apply(data)
    if kind == "allowlist":
        return load_allowlist(data, PUBLIC)
    return held_list.apply(data)


def test_every_single_flipped_byte_is_refused() -> None:
    blobs = small_blobs()
    held_filter, held_list = load_filter(blobs["filter"], PUBLIC), load_allowlist(blobs["allowlist"], PUBLIC)
    for kind, blob in blobs.items():
        open_any(kind, blob, held_filter, held_list)  # the intact blob opens
        for at in range(len(blob)):
            for mask in (0x01, 0x80, 0xFF):
                flipped = bytearray(blob)
                flipped[at] ^= mask
                with pytest.raises(PolicyError):
                    open_any(kind, bytes(flipped), held_filter, held_list)
        for cut in (0, 1, len(blob) // 2, len(blob) - 1):
            with pytest.raises(PolicyError):
                open_any(kind, blob[:cut], held_filter, held_list)


@FUZZ
@given(st.sampled_from(["filter", "filter-delta", "allowlist", "allowlist-delta"]), st.binary(max_size=200))
def test_random_bytes_are_refused_with_a_devid_error(kind: str, data: bytes) -> None:
    blobs = small_blobs()
    held_filter, held_list = load_filter(blobs["filter"], PUBLIC), load_allowlist(blobs["allowlist"], PUBLIC)
    for candidate in (data, b"DV\x01" + data, blobs[kind][:30] + data):
        with pytest.raises(DevidError):
            open_any(kind, candidate, held_filter, held_list)


@FUZZ
@given(st.sampled_from(list(Kind)), st.binary(max_size=120))
def test_a_signed_garbage_payload_is_refused_with_a_format_error(kind: Kind, payload: bytes) -> None:
    """The payload parser behind a good signature (a CA bug, not an attacker) still fails cleanly."""
    base = 1 if kind.is_delta else None
    blob = seal(Header(kind, "hub-eu-1" if kind >= Kind.ALLOWLIST else CA, 2, T0, NEXT, base), payload, KEY)
    blobs = small_blobs()
    held_filter, held_list = load_filter(blobs["filter"], PUBLIC), load_allowlist(blobs["allowlist"], PUBLIC)
    try:
        open_any(kind.name.lower().replace("_", "-"), blob, held_filter, held_list)
    except PolicyError as err:
        assert err.code == "filter-format"


def test_a_callable_signer_signs_and_another_key_does_not_verify() -> None:
    def sign(body: bytes) -> bytes:
        return KEY.sign(body, ec.ECDSA(hashes.SHA256()))

    blob = build_filter({1}, 4, version=1, ca_name=CA, issued_at=T0, next_update=NEXT, sign=sign)
    assert load_filter(blob, PUBLIC).check_index(1) is FilterAnswer.REVOKED
    # The signature is raw r || s: the last 64 bytes.
    r, s = int.from_bytes(blob[-64:-32], "big"), int.from_bytes(blob[-32:], "big")
    PUBLIC.verify(encode_dss_signature(r, s), blob[:-64], ec.ECDSA(hashes.SHA256()))
    with pytest.raises(PolicyError) as err:
        load_filter(blob, OTHER_KEY.public_key())
    assert err.value.code == "filter-signature"


# -- allowlists --------------------------------------------------------------------------------------


def test_an_allowlist_admits_exactly_its_certificates() -> None:
    members = {CA: {0, 5, 77, 4_000}, "manufacturing": set(range(10, 3000))}
    view = load_allowlist(make_allowlist(members, devices=2_995), PUBLIC)
    assert (view.scope, view.version, view.devices) == ("hub-eu-1", 1, 2_995)
    for ca_name, indices in members.items():
        for i in range(4_100):
            serial = indexed_serial(i)
            assert view.admits(ca_name, serial) is (i in indices), (ca_name, i)
            assert not view.admits("root", serial)
    assert not view.admits(CA, serial_without_index())


@st.composite
def allowlist_histories(draw: st.DrawFn) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    names = st.sampled_from(["a", "operational", "manufacturing", "zz"])
    sets = st.sets(st.integers(0, 2_000), max_size=60)
    return draw(st.dictionaries(names, sets)), draw(st.dictionaries(names, sets))


@FUZZ
@given(allowlist_histories(), st.integers(0, 10_000))
def test_allowlist_diff_then_apply_equals_the_rebuilt_allowlist(
    history: tuple[dict[str, set[int]], dict[str, set[int]]], devices: int
) -> None:
    before, after = history
    old, new = make_allowlist(before, 1), make_allowlist(after, 5, devices)
    applied = load_allowlist(old, PUBLIC).apply(diff_allowlists(old, new, sign=KEY))
    assert applied == load_allowlist(new, PUBLIC)
    assert {name: set(s) for name, s in applied.members.items()} == {n: s for n, s in after.items() if s}
    assert applied.devices == devices


def test_an_allowlist_delta_is_refused_unless_it_follows_the_held_version() -> None:
    v1, v2, v3 = (make_allowlist({CA: set(range(v))}, v) for v in (1, 2, 3))
    held = load_allowlist(v1, PUBLIC)
    with pytest.raises(PolicyError) as err:
        held.apply(diff_allowlists(v2, v3, sign=KEY))
    assert err.value.code == "filter-delta-base"
    with pytest.raises(PolicyError) as err:
        held.apply(make_filter({1}, 4))
    assert err.value.code == "filter-kind"
    assert held == load_allowlist(v1, PUBLIC)
    assert held.apply(diff_allowlists(v1, v2, sign=KEY)).admits(CA, indexed_serial(1))
