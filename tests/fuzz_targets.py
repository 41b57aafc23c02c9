"""devid's fuzz targets: each feeds bytes to one of devid's real parsing entry points.

The contract every target checks: the entry point returns a result or refuses the input with a
`DevidError` (what the protocol layers map to a 4xx); any other exception, or an answer that
says "internal error" for what is only bad input, is a bug. `tests/fuzz_run.py` drives the
targets with atheris (coverage-guided), `tests/test_fuzz.py` runs each for a few seconds and
replays every crash ever found (`tests/fuzz_crashes/<target>/`), and `tests/test_properties.py`
checks the same entry points with hypothesis' structured inputs.
"""

from __future__ import annotations

import base64
import json
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devid.api import tokens
from devid.api.app import ApiServer, Incoming
from devid.api.endpoints import ROUTES
from devid.api.routes import Route
from devid.api.tokens import MAX_RATE_PER_MINUTE as MAX_RATE
from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, identify
from devid.authority.setup import init_home, open_authority
from devid.bench.ocsp import MemoryStatusSource, make_cert
from devid.clock import SystemClock
from devid.errors import DevidError
from devid.est.server import decode_body
from devid.gateway.formats import AllowlistFormat, FilterFormat
from devid.pki import c509
from devid.pki.csr import load_and_check_csr
from devid.pki.reasons import Reason
from devid.registry import manufacturers
from devid.registry.onboarding import Registry
from devid.revocation.allowlist import build_allowlist, diff_allowlists
from devid.revocation.cose_status import (
    CompactStatus,
    decode_request,
    encode_request,
    sign_payload,
    sign_status,
    verify_status,
)
from devid.revocation.filter import build_filter, diff_filters
from devid.revocation.ocsp import INTERNAL_ERROR, OcspIssuer, OcspResponder
from devid.revocation.signed import SIGNATURE_SIZE
from devid.revocation.status import CertStatus

PASSPHRASE = b"correct horse battery staple"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


class ContractBroken(AssertionError):
    """An entry point answered bad input with something other than a clean refusal."""


@dataclass(frozen=True)
class Target:
    """One fuzzed entry point: `run` takes the fuzzer's bytes and raises only on a bug."""

    name: str
    run: Callable[[bytes], None]
    #: Valid (or nearly valid) inputs the fuzzer starts from, so it mutates structure, not noise.
    seeds: tuple[bytes, ...]


def refused_cleanly(call: Callable[[], object]) -> None:
    """Run `call`; a DevidError is the clean refusal every target allows."""
    with suppress(DevidError):
        call()


def split(data: bytes, parts: int) -> list[bytes]:
    """`data` cut into `parts` pieces by 2-byte big-endian length prefixes (the last takes the rest):
    how one fuzzer input carries several byte strings, and how seeds are packed."""
    out = []
    for _ in range(parts - 1):
        size = int.from_bytes(data[:2], "big")
        out.append(data[2 : 2 + size])
        data = data[2 + size :]
    return [*out, data]


def pack(*pieces: bytes) -> bytes:
    """The inverse of `split` for seeds."""
    return b"".join(struct.pack(">H", len(p)) + p for p in pieces[:-1]) + pieces[-1]


def resign(body: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """`body` as a revocation envelope signed by `key` (what `devid.revocation.signed.seal` makes
    of a header and payload): lets the fuzzer reach the decoder behind the signature check."""
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return body + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _csr(key: ec.EllipticCurvePrivateKey, *extensions: x509.ExtensionType) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "FUZZ-0001")])
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256())


def csr_seeds() -> tuple[bytes, ...]:
    key = ec.generate_private_key(ec.SECP256R1())
    plain = _csr(key)
    rich = _csr(
        key,
        x509.SubjectAlternativeName(
            [x509.DNSName("device.example"), x509.UniformResourceIdentifier("urn:x")]
        ),
        x509.KeyUsage(True, False, False, False, False, False, False, False, False),
        x509.BasicConstraints(ca=False, path_length=None),
    )
    p384 = _csr(ec.generate_private_key(ec.SECP384R1()))
    return (
        plain.public_bytes(DER),
        rich.public_bytes(DER),
        rich.public_bytes(PEM),
        p384.public_bytes(DER),
    )


def csr_target() -> Target:
    return Target("csr", lambda data: refused_cleanly(lambda: load_and_check_csr(data)), csr_seeds())


def est_body_target() -> Target:
    """What an EST enrollment does with a request body: decode it, then parse and check the CSR."""
    ders = csr_seeds()

    def run(data: bytes) -> None:
        refused_cleanly(lambda: load_and_check_csr(decode_body(data)))

    b64 = base64.encodebytes(ders[1])
    return Target("est_body", run, (b64, b64.replace(b"\n", b""), ders[2], ders[0]))


@dataclass(frozen=True)
class SigningCa:
    """A P-256 CA key and certificate, and a device certificate under it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    leaf: x509.Certificate

    @classmethod
    def make(cls, name: str = "Fuzz CA") -> SigningCa:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(name, name, key.public_key(), key, ca=True)
        leaf = make_cert("device", name, ec.generate_private_key(ec.SECP256R1()).public_key(), key)
        return cls(key, cert, leaf)


def ocsp_responder() -> tuple[OcspResponder, SigningCa]:
    """A responder for one CA with a delegated signer, over an in-memory status source."""
    ca = SigningCa.make()
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = make_cert("Fuzz OCSP", "Fuzz CA", signer_key.public_key(), ca.key, ocsp_signing=True)
    issuer = OcspIssuer("fuzz", ca.cert, signer, signer_key)
    return OcspResponder([issuer], MemoryStatusSource("fuzz"), SystemClock()), ca


def ocsp_target() -> Target:
    """The OCSP responder's request parsing; it never raises, so the contract is its status: a
    bad request is malformedRequest or unauthorized, never internalError."""
    responder, ca = ocsp_responder()

    def run(data: bytes) -> None:
        answer = responder.respond(data)
        if answer.der == INTERNAL_ERROR:
            raise ContractBroken("OCSP request answered internalError")

    def request(algorithm: hashes.HashAlgorithm, nonce: bool = False) -> bytes:
        builder = ocsp.OCSPRequestBuilder().add_certificate(ca.leaf, ca.cert, algorithm)
        if nonce:
            builder = builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False)
        return builder.build().public_bytes(DER)

    # Three CertIDs in one request (the responder's asn1crypto path): cryptography builds only one.
    several = asn1_ocsp.OCSPRequest.load(request(hashes.SHA1()))
    several["tbs_request"]["request_list"] = [several["tbs_request"]["request_list"][0]] * 3
    seeds = (request(hashes.SHA1()), request(hashes.SHA256(), nonce=True), several.dump(force=True))
    return Target("ocsp", run, seeds)


def _versioned_target(
    name: str,
    fmt: FilterFormat | AllowlistFormat,
    snapshots: Callable[[ec.EllipticCurvePrivateKey], tuple[bytes, bytes, bytes]],
) -> Target:
    """A signed snapshot format as the gateway reads it. The first input byte picks the mode:
    0, the envelope as sent (mostly refused by its signature); 1, the input re-signed, so the
    decoder behind the signature sees it; 2, the input re-signed as a delta to the held version.
    `snapshots` makes a version 1, a version 2 and the delta from 1 to 2."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    old, new, delta = snapshots(key)
    held = fmt.load(old, public)

    def run(data: bytes) -> None:
        mode, body = (data[0] % 3 if data else 0), data[1:]
        if mode == 0:
            refused_cleanly(lambda: fmt.load(body, public))
        elif mode == 1:
            refused_cleanly(lambda: fmt.load(resign(body, key), public))
        else:
            refused_cleanly(lambda: held.apply(resign(body, key), public))

    seeds = (b"\x00" + new, b"\x01" + new[:-SIGNATURE_SIZE], b"\x02" + delta[:-SIGNATURE_SIZE])
    return Target(name, run, seeds)


_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_TIMES = {"issued_at": _T0, "next_update": _T0 + timedelta(days=1)}


def _filters(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes, bytes]:
    old = build_filter([3, 5, 99], 100, version=1, ca_name="fuzz", sign=key, **_TIMES)
    new = build_filter([3, 5, 99, 150], 180, version=2, ca_name="fuzz", sign=key, **_TIMES)
    return old, new, diff_filters(old, new, sign=key)


def _allowlists(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes, bytes]:
    old = build_allowlist({"ab12": [1, 2]}, devices=2, scope="fleet", version=1, sign=key, **_TIMES)
    new = build_allowlist(
        {"ab12": [1, 2, 7], "cd34": [0]}, devices=3, scope="fleet", version=2, sign=key, **_TIMES
    )
    return old, new, diff_allowlists(old, new, sign=key)


def filter_target() -> Target:
    return _versioned_target("filter", FilterFormat(), _filters)


def allowlist_target() -> Target:
    return _versioned_target("allowlist", AllowlistFormat(), _allowlists)


def _body_routes() -> list[Route]:
    return [route for route in ROUTES if route.body is not None]


def api_target(authority: Authority) -> Target:
    """The admin API's request validation and handler for every route with a JSON body, as the
    dispatcher runs them once a caller is authenticated (an admin token). Input: a route index
    byte, a flags byte (If-Match sent or not), then the path parameter and the body (`split`)."""
    server = ApiServer(authority, ROUTES)
    _, token = tokens.create(authority, "fuzz", "admin", authority.clock.now(), rate_per_minute=MAX_RATE)
    routes = _body_routes()

    def run(data: bytes) -> None:
        if len(data) < 2:
            return
        route = routes[data[0] % len(routes)]
        param, body = split(data[2:], 2)
        match = {p.name: param.decode("utf-8", "replace") for p in route.path_params}
        incoming = Incoming(
            route.path, [], match, None, '"1"' if data[1] & 1 else None, "application/json", body
        )
        refused_cleanly(lambda: route.handler(server._parse(route, incoming, token)))

    seeds = [
        bytes([routes.index(route), 0]) + pack(b"fuzz", json.dumps(body).encode())
        for route, body in _api_bodies(routes)
    ]
    return Target("api", run, tuple(seeds))


def _api_bodies(routes: list[Route]) -> Iterator[tuple[Route, object]]:
    """A plausible body for each route with one: every property the schema names, typed."""
    samples = {"string": "fuzz", "integer": 1, "boolean": True, "array": [], "object": {}}
    for route in routes:
        assert route.body is not None
        properties = route.body.get("properties", {})
        body = {}
        for name, schema in properties.items():
            kind = schema.get("type", "string")
            if "enum" in schema:
                body[name] = schema["enum"][0]
            elif isinstance(kind, str):
                body[name] = samples.get(kind, "fuzz")
        yield route, body


def _issue(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def _name(cn: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Maker:
    """A manufacturer's root, its signing CA and one device IDevID under it."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    signing: x509.Certificate
    device: x509.Certificate

    @classmethod
    def make(cls, name: str) -> Maker:
        root_key, signing_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        root = _issue(_name(f"{name} root"), _name(f"{name} root"), root_key.public_key(), root_key, ca=True)
        signing = _issue(_name(f"{name} signing"), root.subject, signing_key.public_key(), root_key, ca=True)
        device_key = ec.generate_private_key(ec.SECP256R1())
        device = _issue(
            _name("dev", "FUZZ-DEV-1"), signing.subject, device_key.public_key(), signing_key, ca=False
        )
        return cls(root_key, root, signing, device)

    def verification(self, code: str) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        return _issue(_name(code), self.root.subject, key.public_key(), self.root_key, ca=False)


def manufacturer_target(authority: Authority) -> Target:
    """Registering a manufacturer CA: its certificate and the verification certificate (two
    pieces, `split`), as `devid manufacturer register` and POST /manufacturers hand them over."""
    maker = Maker.make("Fuzz Maker")
    code = manufacturers.create_registration_code(authority, "fuzz")
    counter = iter(range(1 << 62))

    def run(data: bytes) -> None:
        ca, verification = split(data, 2)
        name = f"maker-{next(counter)}"
        refused_cleanly(lambda: manufacturers.register(authority, name, ca, verification))

    seeds = (
        pack(maker.root.public_bytes(PEM), maker.verification(code).public_bytes(PEM)),
        pack(maker.root.public_bytes(DER), maker.verification(code).public_bytes(DER)),
    )
    return Target("manufacturer", run, seeds)


def manufacturer_chain_target(authority: Authority) -> Target:
    """Who a client certificate names when it is not devid's own: the chain builder from a device
    IDevID through the certificates it sent up to a registered manufacturer CA. Input: the leaf
    and up to two chain certificates (`split`)."""
    maker = Maker.make("Chain Maker")
    code = manufacturers.create_registration_code(authority, "fuzz")
    manufacturers.register(
        authority,
        "chain-maker",
        maker.root.public_bytes(PEM),
        maker.verification(code).public_bytes(PEM),
        auto_register=True,
    )
    onboarding = Registry(authority)

    def run(data: bytes) -> None:
        leaf, *chain = split(data, 3)
        credential = CertificateCredential(leaf, (leaf, *(c for c in chain if c)))
        refused_cleanly(lambda: identify(authority, credential, onboarding=onboarding))

    device, signing = maker.device.public_bytes(DER), maker.signing.public_bytes(DER)
    seeds = (pack(device, signing, b""), pack(device, signing, maker.root.public_bytes(DER)))
    return Target("manufacturer_chain", run, seeds)


def c509_target() -> Target:
    """C509 both ways: any bytes decode to DER or a C509 error; any bytes encode to C509 or a C509
    error; and DER that decoded re-encodes to C509 that decodes to the same DER (or is refused)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issued = [
        _issue(_name("C509", sn), _name("Fuzz CA"), key.public_key(), key, ca=False)
        for sn in ("SN-1", "0a1b")
    ]
    vectors = Path(__file__).parent / "vectors" / "c509"
    ders = [
        *(c.public_bytes(serialization.Encoding.DER) for c in issued),
        *(bytes.fromhex("".join(f.read_text().split())) for f in sorted(vectors.glob("*.der.hex"))),
    ]

    def run(data: bytes) -> None:
        refused_cleanly(lambda: c509.encode_certificate(data))
        try:
            der = c509.decode_certificate(data)
        except DevidError:
            return
        with suppress(DevidError):
            assert c509.decode_certificate(c509.encode_certificate(der)) == der

    return Target("c509", run, (*(c509.encode_certificate(d) for d in ders), *ders))


def cose_status_target() -> Target:
    """Compact status: any FETCH body decodes to a query or a clean refusal, and any answer
    verifies or is refused; with first byte 1 the rest is signed as the payload, so the fuzzer
    reaches the payload decoder behind a valid signature."""
    ca = SigningCa.make()
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = make_cert("Fuzz OCSP", "Fuzz CA", signer_key.public_key(), ca.key, ocsp_signing=True)
    now = datetime.now(UTC).replace(microsecond=0)

    def run(data: bytes) -> None:
        refused_cleanly(lambda: decode_request(data))
        answer = sign_payload(data[1:], signer, signer_key) if data[:1] == b"\x01" else data
        refused_cleanly(lambda: verify_status(answer, signer, ca.cert, now))

    statuses = [
        CompactStatus(ca.leaf.serial_number, CertStatus.GOOD, now, now + timedelta(days=1)),
        CompactStatus(
            ca.leaf.serial_number,
            CertStatus.REVOKED,
            now,
            now + timedelta(days=1),
            now,
            Reason.KEY_COMPROMISE,
        ),
    ]
    answers = [sign_status(status, signer, signer_key) for status in statuses]
    payloads = [b"\x01" + cbor2.loads(answer)[2] for answer in answers]
    return Target("cose_status", run, (encode_request(ca.cert, ca.leaf.serial_number), *answers, *payloads))


#: Targets that need no store, by name (each builds its own keys and certificates).
PURE: dict[str, Callable[[], Target]] = {
    "csr": csr_target,
    "est_body": est_body_target,
    "ocsp": ocsp_target,
    "filter": filter_target,
    "allowlist": allowlist_target,
    "c509": c509_target,
    "cose_status": cose_status_target,
}
#: Targets that run against a real authority on a fresh embedded store.
WITH_AUTHORITY: dict[str, Callable[[Authority], Target]] = {
    "api": api_target,
    "manufacturer": manufacturer_target,
    "manufacturer_chain": manufacturer_chain_target,
}
NAMES = (*PURE, *WITH_AUTHORITY)


@contextmanager
def targets(names: Iterable[str]) -> Iterator[dict[str, Target]]:
    """The named targets, set up; an authority on a temporary home when any needs one."""
    names = list(names)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise KeyError(f"unknown fuzz target(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    built = {name: PURE[name]() for name in names if name in PURE}
    if not any(name in WITH_AUTHORITY for name in names):
        yield built
        return
    with tempfile.TemporaryDirectory(prefix="devid-fuzz-") as tmp:
        home = init_home(Path(tmp) / "home", org="Fuzz", passphrase=PASSPHRASE)
        with open_authority(home, PASSPHRASE) as authority:
            built |= {name: WITH_AUTHORITY[name](authority) for name in names if name in WITH_AUTHORITY}
            yield {name: built[name] for name in names}
