"""Property-based tests (hypothesis) of the parsers the fuzz targets drive, with structured inputs:
CSRs with random extensions and their DER mutated, EST bodies in every base64 layout, OCSP
requests with random CertIDs, signed filters and allowlists round-tripped and bit-flipped, and
admin API bodies of random JSON. The contract is the fuzzers' (tests/fuzz_targets.py): a result
or a DevidError, plus what each parser promises on top."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fuzz_targets import DER, Target, ocsp_responder, resign, targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devid.errors import PolicyError
from devid.est.server import decode_body
from devid.pki.csr import load_and_check_csr
from devid.pki.serials import indexed_serial
from devid.revocation.allowlist import build_allowlist, load_allowlist
from devid.revocation.filter import FilterAnswer, build_filter, load_filter
from devid.revocation.ocsp import INTERNAL_ERROR, MALFORMED_REQUEST, UNAUTHORIZED
from devid.revocation.signed import SIGNATURE_SIZE

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMES = {"issued_at": T0, "next_update": T0 + timedelta(days=1)}


def _usage(flags: list[bool]) -> x509.KeyUsage:
    # encipher_only/decipher_only are only meaningful (and only allowed) with key_agreement.
    return x509.KeyUsage(*flags[:7], flags[4] and flags[7], flags[4] and flags[8])


DNS_NAMES = st.from_regex(r"[a-z]{1,12}(\.[a-z]{1,8}){0,2}", fullmatch=True)
extensions = st.lists(
    st.one_of(
        st.lists(
            st.from_regex(r"[a-z]{1,12}(\.[a-z]{1,8}){0,2}", fullmatch=True), min_size=1, max_size=3
        ).map(lambda names: x509.SubjectAlternativeName([x509.DNSName(n) for n in names])),
        st.booleans().map(lambda ca: x509.BasicConstraints(ca=ca, path_length=None)),
        st.lists(st.booleans(), min_size=9, max_size=9).map(_usage),
        st.sampled_from(
            [
                ExtendedKeyUsageOID.CLIENT_AUTH,
                ExtendedKeyUsageOID.SERVER_AUTH,
                ExtendedKeyUsageOID.CODE_SIGNING,
            ]
        ).map(lambda oid: x509.ExtendedKeyUsage([oid])),
    ),
    max_size=4,
    unique_by=lambda ext: type(ext),
)


def _csr(exts: list[x509.ExtensionType], key: ec.EllipticCurvePrivateKey = P256) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "PROP-1")])
    )
    for ext in exts:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(DER)


def _asks_for_ca(exts: list[x509.ExtensionType]) -> bool:
    return any(
        (isinstance(e, x509.BasicConstraints) and e.ca)
        or (isinstance(e, x509.KeyUsage) and (e.key_cert_sign or e.crl_sign))
        for e in exts
    )


@FAST
@given(extensions, st.booleans())
def test_csr_with_random_extensions(exts: list[x509.ExtensionType], p384: bool) -> None:
    """A well-formed CSR passes unless it asks for CA powers or has the wrong curve."""
    der = _csr(exts, P384 if p384 else P256)
    if p384 or _asks_for_ca(exts):
        with pytest.raises(PolicyError) as refused:
            load_and_check_csr(der)
        assert refused.value.code == ("key-curve" if p384 else "csr-ca-request")
    else:
        _, key = load_and_check_csr(der)
        assert key.public_numbers() == P256.public_key().public_numbers()


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, at, value in edits:
        at %= max(len(out), 1)
        if kind == 0 and out:
            out[at] ^= 1 << (value % 8)
        elif kind == 1:
            out[at:at] = bytes([value])
        elif kind == 2:
            del out[at : at + 1 + value % 8]
        else:
            del out[at:]
    return bytes(out)


mutations = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1)


@FAST
@given(extensions, mutations)
def test_mutated_csr_der_is_refused_cleanly(exts: list[x509.ExtensionType], edits: list[Any]) -> None:
    with suppress(PolicyError):
        load_and_check_csr(_mutate(_csr(exts), edits))


@FAST
@given(st.integers(1, 120), st.sampled_from([b"\n", b"\r\n", b" ", b"\t"]), st.booleans())
def test_est_body_in_any_base64_layout(width: int, newline: bytes, padded: bool) -> None:
    """RFC 8951: base64 with or without line breaks, padding optional, around whitespace."""
    der = _csr([])
    text = base64.b64encode(der)
    if not padded:
        text = text.rstrip(b"=")
    body = newline.join(text[i : i + width] for i in range(0, len(text), width)) + newline
    assert decode_body(b"  " + body) == der


@FAST
@given(st.binary(max_size=600))
def test_est_body_random_bytes(body: bytes) -> None:
    with suppress(PolicyError):
        load_and_check_csr(decode_body(body))


@pytest.fixture(scope="module")
def responder() -> Any:
    return ocsp_responder()


#: Issuer name and key hashes of no CA the responder answers for.
FOREIGN = (b"\x01" * 20, b"\x02" * 20)
cert_ids = st.lists(
    st.tuples(
        st.sampled_from(["sha1", "sha256", "md5", "sha512"]),
        st.booleans(),  # the responder's own issuer hashes, or random ones
        st.integers(-(2**70), 2**170),
    ),
    min_size=0,
    max_size=70,
)


@FAST
@given(cert_ids, st.one_of(st.none(), st.binary(max_size=40)))
def test_ocsp_request_with_random_cert_ids(responder: Any, ids: list[Any], nonce: bytes | None) -> None:
    """Never internalError; malformed or unauthorized exactly when the request says so, else a
    signed answer for every CertID."""
    server, ca = responder
    own = {}
    for name, algorithm in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256())):
        der = ocsp.OCSPRequestBuilder().add_certificate(ca.leaf, ca.cert, algorithm).build().public_bytes(DER)
        cert_id = asn1_ocsp.OCSPRequest.load(der)["tbs_request"]["request_list"][0]["req_cert"]
        own[name] = (cert_id["issuer_name_hash"].native, cert_id["issuer_key_hash"].native)
    items = []
    for algorithm, ours, serial in ids:
        name_hash, key_hash = (
            own.get(algorithm, (b"\x01" * 20, b"\x02" * 20)) if ours else (b"\x03" * 20,) * 2
        )
        cert_id = asn1_ocsp.CertId(
            {
                "hash_algorithm": {"algorithm": algorithm},
                "issuer_name_hash": name_hash,
                "issuer_key_hash": key_hash,
                "serial_number": serial,
            }
        )
        items.append({"req_cert": cert_id})
    tbs: dict[str, Any] = {"request_list": items}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
    answer = server.respond(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()).der
    assert answer != INTERNAL_ERROR
    if not 1 <= len(ids) <= 64:
        assert answer == MALFORMED_REQUEST
    elif all(ours and algorithm in own and serial >= 0 for algorithm, ours, serial in ids):
        assert asn1_ocsp.OCSPResponse.load(answer)["response_status"].native == "successful"
    else:  # refused at the first CertID that is malformed (negative serial) or not ours
        assert answer in (UNAUTHORIZED, MALFORMED_REQUEST)


revoked_sets = st.integers(1, 5000).flatmap(
    lambda universe: st.tuples(st.just(universe), st.sets(st.integers(0, universe - 1), max_size=200))
)


@FAST
@given(revoked_sets, st.integers(0, 10**6))
def test_filter_round_trip_and_bit_flips(universe_revoked: tuple[int, set[int]], flip: int) -> None:
    """A filter says revoked exactly for the revoked indices; any one flipped bit is refused."""
    universe, revoked = universe_revoked
    blob = build_filter(revoked, universe, version=1, ca_name="prop", sign=P256, **TIMES)
    view = load_filter(blob, P256.public_key())
    for index in (*sorted(revoked)[:20], 0, universe - 1, universe):
        expected = (
            FilterAnswer.NOT_COVERED
            if index >= universe
            else FilterAnswer.REVOKED
            if index in revoked
            else FilterAnswer.GOOD
        )
        assert view.check_serial(indexed_serial(index)) is expected
    bit = flip % (len(blob) * 8)
    flipped = bytearray(blob)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(PolicyError):
        load_filter(bytes(flipped), P256.public_key())


@FAST
@given(
    st.dictionaries(
        st.from_regex(r"[0-9a-f]{4,12}", fullmatch=True),
        st.sets(st.integers(0, 3000), min_size=1),
        max_size=4,
    ),
    st.binary(max_size=80),
)
def test_allowlist_round_trip_and_resigned_junk(members: dict[str, set[int]], junk: bytes) -> None:
    """An allowlist admits exactly its members; a payload of junk under a valid signature is
    decoded to a refusal, never an exception of another kind."""
    blob = build_allowlist(members, devices=len(members), scope="prop", version=3, sign=P256, **TIMES)
    view = load_allowlist(blob, P256.public_key())
    for name, indices in members.items():
        assert all(view.admits(name, indexed_serial(i)) for i in sorted(indices)[:20])
        assert not view.admits(name, indexed_serial(max(indices) + 1))
    body = blob[:-SIGNATURE_SIZE]
    with suppress(PolicyError):
        load_allowlist(resign(body[: len(body) // 2] + junk, P256), P256.public_key())


@pytest.fixture(scope="module")
def api() -> Iterator[Target]:
    with targets(["api"]) as made:
        yield made["api"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 255), st.booleans(), st.text(max_size=20), json_values)
def test_api_bodies_of_random_json(api: Target, route: int, if_match: bool, param: str, body: Any) -> None:
    """Every route with a JSON body, any JSON value: validated and handled, or refused as a
    DevidError (the dispatcher's 4xx), never another exception (its 500)."""
    raw = param.encode()
    api.run(bytes([route, int(if_match)]) + len(raw).to_bytes(2, "big") + raw + json.dumps(body).encode())
