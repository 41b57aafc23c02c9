"""Compact certificate status over CoAP/DTLS (`FETCH /st`): a good and a revoked certificate,
asked with libcoap's client and devid's own, each answer a COSE_Sign1 that verifies against the
CA's delegated responder and fits the size bound; tampered answers fail; unknown serials are
signed 'unknown'; bad requests get 4.xx; a revocation reaches the cached answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cwt import COSE, COSEKey
from e2e import devid_many

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Coaps, coap_client, running_coaps
from est_helpers import provision

from devid.authority.core import Authority
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.bench.ocsp import MemoryStatusSource
from devid.clock import FixedClock
from devid.coap.client import CoapsClient, CoapsError, client_context
from devid.coap.message import Code, Option
from devid.errors import StatusAnswerInvalid, StoreUnavailable
from devid.pki import c509
from devid.pki.reasons import Reason
from devid.publish.service import status_service
from devid.revocation.cose_responder import CoseStatusResponder
from devid.revocation.cose_status import (
    CONTENT_FORMAT_CBOR,
    CONTENT_FORMAT_COSE_SIGN1,
    StatusQuery,
    encode_request,
    issuer_key_hash,
    signer_kid,
    verify_status,
)
from devid.revocation.ocsp import OcspIssuer
from devid.revocation.records import StoreStatus
from devid.revocation.status import CertStatus, StatusEntry

#: Bounds of the answers (measured: see README, `devid revocation report`): serial of 20 bytes.
GOOD_BOUND = 113
REVOKED_BOUND = 119


@dataclass
class Setup:
    coaps: Coaps
    responder: CoseStatusResponder
    good: x509.Certificate
    revoked: x509.Certificate

    def issuer(self, cert: x509.Certificate) -> OcspIssuer:
        return next(i for i in self.responder.issuers if i.ca_cert.subject == cert.issuer)

    def verify(self, answer: bytes, cert: x509.Certificate, clock: FixedClock) -> CertStatus:
        issuer = self.issuer(cert)
        found = verify_status(answer, issuer.signer_cert, issuer.ca_cert, clock.now(), cert.serial_number)
        return found.status


@pytest.fixture
def setup(auth: Authority, tmp_path: Path) -> Iterator[Setup]:
    good = provision(auth, "SN-ST-GOOD", tmp_path).idevid
    revoked = provision(auth, "SN-ST-BAD", tmp_path).idevid
    revoke(
        auth,
        RevokeRequest(Selector.SERIAL, format(revoked.serial_number, "x"), Reason.CESSATION_OF_OPERATION),
        "test",
    )
    # The server's responder, over a store source that reads the generation at every look (the
    # server's polls it at most every 0.25 s).
    issuers = status_service(auth).compact.issuers
    responder = CoseStatusResponder(issuers, StoreStatus(auth.engine, poll=0), auth.clock)
    with running_coaps(auth, tmp_path / "coaps", status=responder) as srv:
        yield Setup(srv, responder, good, revoked)


def issuer_ca(setup: Setup, cert: x509.Certificate) -> x509.Certificate:
    return setup.issuer(cert).ca_cert


def fetch(setup: Setup, body: bytes, *, content_format: int | None = CONTENT_FORMAT_CBOR) -> bytes:
    """One FETCH /st with devid's CoAP client (no client certificate: status is public)."""
    context = client_context([setup.coaps.authority.root])

    async def ask() -> bytes:
        async with CoapsClient(f"coaps://127.0.0.1:{setup.coaps.port}", context, timeout=10) as client:
            answer = await client.request(
                Code.FETCH, "/st", body, content_format=content_format, accept=CONTENT_FORMAT_COSE_SIGN1
            )
        assert answer.uint(Option.CONTENT_FORMAT) == CONTENT_FORMAT_COSE_SIGN1
        assert (answer.uint(Option.MAX_AGE) or 0) > 3600
        return answer.payload

    return setup.coaps.call(ask())


def test_good_and_revoked_over_libcoap_verify_within_the_bound(
    setup: Setup, clock: FixedClock, tmp_path: Path
) -> None:
    found = coap_client(setup.coaps, "get", "/.well-known/core")
    assert b'</st>;rt="devid.status";ct=18' in found.stdout
    for cert, expected, bound in (
        (setup.good, CertStatus.GOOD, GOOD_BOUND),
        (setup.revoked, CertStatus.REVOKED, REVOKED_BOUND),
    ):
        request = tmp_path / "request.cbor"
        request.write_bytes(encode_request(issuer_ca(setup, cert), cert.serial_number))
        out = tmp_path / f"{expected}.cose"
        got = coap_client(setup.coaps, "fetch", "/st", payload=request, content_format=60, accept=18, out=out)
        assert got.returncode == 0, got.stdout + got.stderr
        answer = out.read_bytes()
        assert setup.verify(answer, cert, clock) is expected
        assert len(answer) <= bound, len(answer)
    issuer = setup.issuer(setup.revoked)
    revoked = verify_status(
        (tmp_path / "revoked.cose").read_bytes(), issuer.signer_cert, issuer.ca_cert, clock.now()
    )
    assert revoked.reason is Reason.CESSATION_OF_OPERATION and revoked.revoked_at is not None


def test_devid_client_answers_are_cached_and_follow_a_revocation(setup: Setup, clock: FixedClock) -> None:
    body = encode_request(issuer_ca(setup, setup.good), setup.good.serial_number)
    first = fetch(setup, body)
    assert setup.verify(first, setup.good, clock) is CertStatus.GOOD
    assert fetch(setup, body) == first and setup.responder.hits == 1  # pre-signed, not signed again
    # A 4-byte prefix of the issuer key hash names the CA as well.
    assert fetch(setup, cbor2.dumps([cbor2.loads(body)[0][:4], cbor2.loads(body)[1]])) == first
    revoke(
        setup.coaps.authority,
        RevokeRequest(Selector.SERIAL, format(setup.good.serial_number, "x"), Reason.KEY_COMPROMISE),
        "test",
    )
    setup.responder.refresh()
    assert setup.verify(fetch(setup, body), setup.good, clock) is CertStatus.REVOKED


def test_a_device_fetches_the_signers_and_verifies_with_them(
    setup: Setup, clock: FixedClock, tmp_path: Path
) -> None:
    """What a device that holds only its CA certificate does: fetch the signers once (as C509),
    pick the one its answers' kid names, and verify it against the CA."""
    out = tmp_path / "signers.c509"
    got = coap_client(setup.coaps, "get", "/st/signers", accept=c509.CONTENT_FORMAT_COSE_C509, out=out)
    assert got.returncode == 0, got.stdout + got.stderr
    signers = [x509.load_der_x509_certificate(der) for der in c509.decode_chain(out.read_bytes())]
    p7 = tmp_path / "signers.p7"
    assert coap_client(setup.coaps, "get", "/st/signers", out=p7).returncode == 0
    assert sorted(pkcs7.load_der_pkcs7_certificates(p7.read_bytes()), key=str) == sorted(signers, key=str)
    cert = setup.revoked
    ca = issuer_ca(setup, cert)
    answer = fetch(setup, encode_request(ca, cert.serial_number))
    kid = cbor2.loads(answer)[1][4]
    (signer,) = [s for s in signers if signer_kid(s) == kid]
    assert verify_status(answer, signer, ca, clock.now(), cert.serial_number).status is CertStatus.REVOKED
    got = coap_client(setup.coaps, "get", "/st/signers", accept=287)
    assert b"4.06" in got.stdout + got.stderr


def test_cli_writes_the_request_and_checks_the_answer_a_device_gets(setup: Setup, tmp_path: Path) -> None:
    cert = setup.revoked
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(issuer_ca(setup, cert).public_bytes(Encoding.PEM))
    request, answer, signers = tmp_path / "req.cbor", tmp_path / "answer.cose", tmp_path / "signers.p7"
    serial = format(cert.serial_number, "x")
    made = devid_many(
        [
            ["revocation", "status-request", serial, "--ca-cert", ca_pem, "--out", request],
            ["revocation", "status-request", "xyz", "--ca-cert", ca_pem, "--out", tmp_path / "no.cbor"],
        ]
    )
    assert made[0].returncode == 0, made[0].stderr
    assert made[1].returncode == 2 and "serial-syntax" in made[1].stderr
    got = coap_client(setup.coaps, "fetch", "/st", payload=request, content_format=60, out=answer)
    assert got.returncode == 0, got.stdout + got.stderr
    assert coap_client(setup.coaps, "get", "/st/signers", out=signers).returncode == 0
    tampered = tmp_path / "tampered.cose"
    tampered.write_bytes(answer.read_bytes()[:-1] + bytes([answer.read_bytes()[-1] ^ 1]))
    check = ["revocation", "status-check", "--ca-cert", ca_pem, "--signers", signers, "--serial", serial]
    good, bad = devid_many([[*check, answer, "--json"], [*check, tampered]])
    assert good.returncode == 0, good.stderr
    info = json.loads(good.stdout)
    assert info["status"] == "revoked" and info["reason"] == "cessationOfOperation" and info["bytes"] <= 119
    assert bad.returncode == 2 and "bad signature" in bad.stderr and "status-invalid" in bad.stderr


def test_an_independent_cose_library_verifies_the_answer(setup: Setup) -> None:
    """The `cwt` library's COSE_Sign1 verification (not devid's) accepts the answer with the
    signer's public key as an ES256 COSE key."""
    cert = setup.good
    answer = fetch(setup, encode_request(issuer_ca(setup, cert), cert.serial_number))
    signer = setup.issuer(cert).signer_cert
    public = signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key = COSEKey.from_pem(public, alg="ES256", kid=signer_kid(signer))
    payload = cbor2.loads(COSE.new().decode(cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(answer))), key))
    assert payload[:2] == [cert.serial_number.to_bytes(20, "big"), 0]


def test_tampered_stale_or_misattributed_answers_fail_verification(setup: Setup, clock: FixedClock) -> None:
    cert = setup.revoked
    answer = fetch(setup, encode_request(issuer_ca(setup, cert), cert.serial_number))
    issuer = setup.issuer(cert)
    item = cbor2.loads(answer)
    payload = cbor2.loads(item[2])
    payload[1] = 0  # "good"
    forged = cbor2.dumps([item[0], item[1], cbor2.dumps(payload), item[3]])
    flipped = bytearray(answer)
    flipped[-1] ^= 1
    cases = [
        (forged, cert.serial_number, clock.now(), "bad signature"),
        (bytes(flipped), cert.serial_number, clock.now(), "bad signature"),
        (answer, setup.good.serial_number, clock.now(), "is about serial"),
        (answer, cert.serial_number, clock.now() + timedelta(days=2), "not current"),
        (answer, cert.serial_number, clock.now() - timedelta(minutes=6), "not current|outside its validity"),
        (answer[:-3], cert.serial_number, clock.now(), "not CBOR"),
    ]
    for data, serial, now, why in cases:
        with pytest.raises(StatusAnswerInvalid, match=why):
            verify_status(data, issuer.signer_cert, issuer.ca_cert, now, serial)
    # A device whose clock is a few minutes behind still takes it.
    assert verify_status(answer, issuer.signer_cert, issuer.ca_cert, clock.now() - timedelta(minutes=4))
    # The CA certificate is no responder: signed by someone else.
    with pytest.raises(StatusAnswerInvalid):
        verify_status(answer, issuer.ca_cert, issuer.ca_cert, clock.now())


def test_unknown_serials_are_signed_unknown_and_bad_requests_are_4xx(setup: Setup, clock: FixedClock) -> None:
    ca = issuer_ca(setup, setup.good)
    issuer = setup.issuer(setup.good)
    answer = fetch(setup, encode_request(ca, 0x1234))
    assert verify_status(answer, issuer.signer_cert, ca, clock.now(), 0x1234).status is CertStatus.UNKNOWN
    refusals = {
        b"\xff\xfe": "4.00",
        cbor2.dumps([b"\x01\x02", b"\x01"]): "4.00",  # an issuer hash of 2 bytes
        cbor2.dumps([ca.fingerprint(hashes.SHA256())[:8], b"\x01"]): "4.04",  # no such CA
        cbor2.dumps({"serial": 1}): "4.00",
    }
    for body, code in refusals.items():
        with pytest.raises(CoapsError) as raised:
            fetch(setup, body)
        assert f"{raised.value.coap_code >> 5}.{raised.value.coap_code & 31:02d}" == code, raised.value
    with pytest.raises(CoapsError) as raised:
        fetch(setup, encode_request(ca, 1), content_format=286)
    assert raised.value.coap_code == Code.UNSUPPORTED_CONTENT_FORMAT
    got = coap_client(setup.coaps, "get", "/st")
    assert b"4.05" in got.stdout + got.stderr
    got = coap_client(setup.coaps, "fetch", "/st/other", content_format=60)
    assert b"4.04" in got.stdout + got.stderr
    got = coap_client(setup.coaps, "fetch", "/st", content_format=60, accept=287)
    assert b"4.06" in got.stdout + got.stderr


class FailingSource(MemoryStatusSource):
    """A status source whose store goes away when `down` is set."""

    down = False

    def statuses(self, ca_name: str, serials: Iterable[int]) -> dict[int, StatusEntry]:
        if self.down:
            raise StoreUnavailable("test: the store is down")
        return super().statuses(ca_name, serials)


def test_a_failing_store_gets_the_signed_answer_while_it_is_current(setup: Setup, clock: FixedClock) -> None:
    issuer = setup.issuer(setup.good)
    source = FailingSource(issuer.ca_name)
    source.set(StatusEntry(setup.good.serial_number, CertStatus.GOOD))
    responder = CoseStatusResponder([issuer], source, clock)
    query = StatusQuery(issuer_key_hash(issuer.ca_cert), setup.good.serial_number)
    first = responder.answer(query)
    source.down = True
    clock.advance(timedelta(hours=20))  # past the refresh (18 h), before nextUpdate (24 h)
    assert responder.answer(query) == first
    clock.advance(timedelta(hours=5))
    with pytest.raises(StoreUnavailable):
        responder.answer(query)
    source.down = False
    assert responder.answer(query).next_update > first.next_update
