"""EST over secure CoAP (RFC 9148): Debian's libcoap client enrolls and re-enrolls over DTLS 1.2
with its IDevID and LDevID; bad datagrams, cookies, blocks and payloads are refused and the
server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from OpenSSL import SSL
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Coaps, coap_client, libcoap_enroll, running_coaps
from est_helpers import Device, csr_der, provision, save_identity
from manufacturer import Manufacturer

from devid.authority.core import Authority
from devid.authority.devices import set_state
from devid.clock import FixedClock
from devid.coap.client import CoapsClient, client_context
from devid.coap.dtls import MTU, DtlsLimits, advance
from devid.coap.exchange import BlockLimits
from devid.coap.message import Block, Code, Message, Option, Type, encode_uint
from devid.pki.csr import csr_attributes
from devid.pki.profiles import ProfileName
from devid.registry import manufacturers
from devid.registry.onboarding import Registry
from devid.store import repo
from devid.store.models import audit_events as EVENTS
from devid.store.states import DeviceState


def status(auth: Authority, cert: x509.Certificate) -> str:
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, cert.fingerprint(hashes.SHA256()).hex())
    assert row is not None
    return str(row.status)


def issued(auth: Authority) -> int:
    with auth.engine.connect() as conn:
        return repo.count(conn, repo.certificates)


@pytest.fixture
def coaps(auth: Authority, tmp_path: Path) -> Iterator[Coaps]:
    with running_coaps(auth, tmp_path / "coaps") as srv:
        yield srv


def test_discovery_and_ca_certificates_block_wise(coaps: Coaps, tmp_path: Path) -> None:
    found = coap_client(coaps, "get", "/.well-known/core")
    assert found.returncode == 0, found.stderr
    assert b'</est/crts>;rt="ace.est.crts";ct="281 287 65015"' in found.stdout
    out = tmp_path / "crts.p7"
    got = coap_client(coaps, "get", "/est/crts", accept=281, out=out)
    assert got.returncode == 0, got.stderr
    certs = pkcs7.load_der_pkcs7_certificates(out.read_bytes())
    assert coaps.authority.root in certs
    # The same in 64-byte blocks (Block2, as libcoap asks for them): byte for byte.
    blocks = tmp_path / "crts-blocks.p7"
    got = coap_client(coaps, "get", "/est/crts", block_size=64, out=blocks)
    assert got.returncode == 0, got.stderr
    assert blocks.read_bytes() == out.read_bytes() and len(out.read_bytes()) > 64 * 8


def test_libcoap_enrolls_with_its_idevid_and_reenrolls_with_its_ldevid(coaps: Coaps, tmp_path: Path) -> None:
    auth = coaps.authority
    device = provision(auth, "SN-COAP-1", tmp_path)
    out = tmp_path / "ldevid.der"
    libcoap_enroll(coaps, device, tmp_path, 287, out)
    ldevid = x509.load_der_x509_certificate(out.read_bytes())
    assert ldevid.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "SN-COAP-1"
    assert ldevid.issuer == auth.issuer_for(ProfileName.LDEVID).certificate.subject

    # Re-enroll over DTLS with the LDevID and a new key, the CSR sent block-wise (64-byte blocks).
    key = ec.generate_private_key(ec.SECP256R1())
    ldevid_files = save_identity(tmp_path, "ldevid", ldevid, device.key)
    san = ldevid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    csr = tmp_path / "renewal.der"
    csr.write_bytes(csr_der(key, ldevid.subject, san=san))
    renewed = tmp_path / "renewed.p7"
    got = coap_client(
        coaps,
        "post",
        "/est/sren",
        identity=ldevid_files,
        payload=csr,
        content_format=286,
        block_size=64,
        out=renewed,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    new = pkcs7.load_der_pkcs7_certificates(renewed.read_bytes())[0]
    assert new.public_key() == key.public_key() and new.subject == ldevid.subject
    assert status(auth, ldevid) == "superseded" and status(auth, new) == "valid"


def last_event(auth: Authority) -> tuple[str, str, str, str]:
    with auth.engine.connect() as conn:
        row = conn.execute(
            select(EVENTS.c.actor, EVENTS.c.action, EVENTS.c.outcome, EVENTS.c.subject).order_by(
                EVENTS.c.seq.desc()
            )
        ).first()
    assert row is not None
    return row.actor, row.action, row.outcome, row.subject


def test_refusals_are_coap_errors_with_a_diagnostic_and_are_audited(coaps: Coaps, tmp_path: Path) -> None:
    auth = coaps.authority
    device = provision(auth, "SN-COAP-2", tmp_path)
    csr = tmp_path / "csr.der"
    csr.write_bytes(csr_der(device.key, "x"))
    # No client certificate: 4.01, before the body is looked at.
    got = coap_client(coaps, "post", "/est/sen", payload=csr, content_format=286)
    assert b"4.01" in got.stdout + got.stderr
    # Not a CSR content format: 4.15.
    got = coap_client(coaps, "post", "/est/sen", identity=device.idevid_files, payload=csr, content_format=42)
    assert b"4.15" in got.stdout + got.stderr
    # A device that may not be served: 4.03 with the reason and code, audited under the device.
    set_state(auth, "SN-COAP-2", DeviceState.INACTIVE, "test")
    got = coap_client(
        coaps, "post", "/est/sen", identity=device.idevid_files, payload=csr, content_format=286
    )
    assert b"4.03" in got.stdout + got.stderr and b"[device-not-active]" in got.stdout + got.stderr
    assert last_event(auth) == ("coaps:127.0.0.1", "est.simpleenroll", "refused", "SN-COAP-2")
    # Unknown resources and methods.
    assert b"4.04" in (r := coap_client(coaps, "get", "/est/nope")).stdout + r.stderr
    assert b"4.05" in (r := coap_client(coaps, "get", "/est/sen")).stdout + r.stderr
    assert b"4.06" in (r := coap_client(coaps, "get", "/est/crts", accept=286)).stdout + r.stderr


@pytest.fixture
def strict(auth: Authority, tmp_path: Path) -> Iterator[Coaps]:
    """A server with small limits: 256-byte bodies, block-wise transfers of at most 0.3 s."""
    blocks = BlockLimits(max_body=256, block_timeout=0.3)
    with running_coaps(auth, tmp_path / "strict", blocks=blocks) as srv:
        yield srv


def datagrams(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    """Every datagram that arrives within `wait` seconds."""
    out = []
    sock.settimeout(wait)
    with contextlib.suppress(TimeoutError):
        while True:
            out.append(sock.recv(65535))
    return out


def client_hello(context: SSL.Context) -> tuple[SSL.Connection, bytes]:
    connection = SSL.Connection(context)
    connection.set_connect_state()
    connection.set_ciphertext_mtu(MTU)
    sent: list[bytes] = []
    advance(connection, sent.append)
    return connection, b"".join(sent)


def udp(srv: Coaps) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", srv.port))
    return sock


def device_client(srv: Coaps, device: Device) -> CoapsClient:
    context = client_context([srv.authority.root], [device.idevid], device.key)
    return CoapsClient(f"coaps://127.0.0.1:{srv.port}", context, timeout=10)


def test_garbage_and_cookieless_hellos_get_nothing_but_a_hello_verify_request(
    coaps: Coaps, tmp_path: Path
) -> None:
    with udp(coaps) as sock:
        for junk in (b"", b"\x00", os.urandom(40), b"\x17\xfe\xfd" + os.urandom(60), b"\x40\x01\x00\x01"):
            sock.send(junk)
        assert datagrams(sock) == []
        assert coaps.server.dtls.stats["dropped"] >= 4 and not coaps.server.dtls.sessions

        # A ClientHello without a cookie: one HelloVerifyRequest, no larger than the hello, no state.
        context = client_context([coaps.authority.root])
        buffer, hello = client_hello(context)
        sock.send(hello)
        answers = datagrams(sock)
        assert len(answers) == 1 and answers[0][0] == 22 and answers[0][13] == 3  # hello_verify_request
        assert len(answers[0]) <= len(hello)
        assert not coaps.server.dtls.sessions

        # The client's second hello carries the cookie; replayed from another port, or altered, it
        # is only answered with another HelloVerifyRequest.
        buffer.bio_write(answers[0])
        sent: list[bytes] = []
        advance(buffer, sent.append)
        with_cookie = b"".join(sent)
        with udp(coaps) as other:
            other.send(with_cookie)
            assert [a[13] for a in datagrams(other)] == [3]
        altered = bytearray(with_cookie)
        altered[62] ^= 0xFF  # inside the cookie (after version, random, session id and cookie length)
        sock.send(bytes(altered))
        assert [a[13] for a in datagrams(sock)] == [3]
        assert not coaps.server.dtls.sessions

    # And the server keeps serving.
    got = coap_client(coaps, "get", "/.well-known/core")
    assert got.returncode == 0 and b"ace.est.sen" in got.stdout


def test_unfinished_and_oversize_block_wise_transfers_are_refused(strict: Coaps, tmp_path: Path) -> None:
    device = provision(strict.authority, "SN-COAP-3", tmp_path)
    blocks = strict.server.dtls.stats

    async def scenario() -> list[tuple[int, int | None]]:
        seen: list[tuple[int, int | None]] = []
        async with device_client(strict, device) as client:

            async def block(num: int, more: bool, size1: int | None = None, size: int = 64) -> None:
                options = [(int(Option.URI_PATH), b"est"), (int(Option.URI_PATH), b"sen")]
                options += [(int(Option.CONTENT_FORMAT), encode_uint(286))]
                options += [(int(Option.BLOCK1), Block(num, more, 2).encode())]
                if size1 is not None:
                    options.append((int(Option.SIZE1), encode_uint(size1)))
                message = Message(
                    Type.CON, Code.POST, 100 + len(seen), os.urandom(4), tuple(options), b"x" * size
                )
                answer = await client.exchange(message)
                seen.append((answer.code, answer.uint(Option.SIZE1)))

            await block(0, True)  # 2.31 Continue
            await block(2, True)  # 4.08: out of order (block 1 is missing), the transfer dropped
            await block(1, True)  # 4.08: nothing to continue
            await block(0, True)  # 2.31
            await block(1, True, size=40)  # 4.00: a truncated block that is not the last
            await block(0, True)  # 2.31
            await asyncio.sleep(0.5)  # past the transfer's deadline
            await block(1, True)  # 4.08: forgotten
            await block(0, True, size1=100_000)  # 4.13: announced over the limit
            for num in range(5):  # 4.13 once the body passes 256 bytes
                await block(num, True)
            # The same client then enrolls normally (one datagram).
            csr = csr_der(device.key, "x")
            answer = await client.request(Code.POST, "/est/sen", csr, content_format=286, accept=287)
            seen.append((answer.code, None))
        return seen

    before = issued(strict.authority)
    seen = strict.call(scenario())
    assert issued(strict.authority) == before + 1  # the refused transfers changed nothing
    assert seen == [
        (Code.CONTINUE, None),
        (Code.REQUEST_ENTITY_INCOMPLETE, None),
        (Code.REQUEST_ENTITY_INCOMPLETE, None),
        (Code.CONTINUE, None),
        (Code.BAD_REQUEST, None),
        (Code.CONTINUE, None),
        (Code.REQUEST_ENTITY_INCOMPLETE, None),
        (Code.REQUEST_ENTITY_TOO_LARGE, 256),
        (Code.CONTINUE, None),
        (Code.CONTINUE, None),
        (Code.CONTINUE, None),
        (Code.CONTINUE, None),
        (Code.REQUEST_ENTITY_TOO_LARGE, 256),
        (Code.CHANGED, None),
    ]
    assert blocks["handshake-failed"] == 0


def test_half_open_handshakes_are_bounded_in_number_and_time(auth: Authority, tmp_path: Path) -> None:
    limits = DtlsLimits(max_sessions=1, handshake_timeout=1.0)
    with running_coaps(auth, tmp_path / "bounded", limits=limits) as srv, udp(srv) as one, udp(srv) as two:
        dtls = srv.server.dtls
        for sock in (one, two):  # each passes the cookie exchange, then goes silent
            connection, hello = client_hello(client_context([auth.root]))
            sock.send(hello)
            connection.bio_write(datagrams(sock, 0.1)[0])
            sent: list[bytes] = []
            advance(connection, sent.append)
            sock.send(b"".join(sent))
            datagrams(sock, 0.1)
        assert len(dtls.sessions) == 1 and dtls.stats["refused-full"] == 1
        deadline = time.monotonic() + 5
        while dtls.sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not dtls.sessions and dtls.stats["handshake-timeout"] == 1
        # The slot is free again: a real client gets served.
        got = coap_client(srv, "get", "/est/att", accept=285)
        assert got.returncode == 0, got.stdout + got.stderr


def test_server_side_key_generation_and_csr_attributes(coaps: Coaps, tmp_path: Path) -> None:
    device = provision(coaps.authority, "SN-COAP-SKG", tmp_path)

    async def scenario() -> tuple[bytes, bytes]:
        async with device_client(coaps, device) as client:
            att = await client.request(Code.GET, "/est/att")
            skg = await client.request(Code.POST, "/est/skg", csr_der(device.key, "x"), content_format=286)
            return att.payload, skg.payload

    att, skg = coaps.call(scenario())
    assert att == csr_attributes()
    key_format, key_der, cert_format, certs = cbor2.loads(skg)
    assert (key_format, cert_format) == (284, 281)
    key = serialization.load_der_private_key(key_der, None)
    [cert] = pkcs7.load_der_pkcs7_certificates(certs)
    assert cert.public_key() == key.public_key() != device.key.public_key()


def test_a_registered_manufacturers_device_enrolls_just_in_time(
    auth: Authority, clock: FixedClock, tmp_path: Path
) -> None:
    acme = Manufacturer(tmp_path / "acme")
    clock.advance(timedelta(minutes=1))  # openssl's notBefore is "now": step past it
    code = manufacturers.create_registration_code(auth, "test")
    acme.verification(code)
    manufacturers.register(
        auth, "acme", acme.pem("root"), acme.pem("verify-root"), actor="test", auto_register=True,
        auto_activate=True,
    )  # fmt: skip
    _cert, key, _chain = acme.device("ACME-COAP-1")
    # The device sends its chain (leaf and the manufacturer's intermediate) in the DTLS handshake.
    chain = [acme.certificate("dev-ACME-COAP-1"), acme.certificate("signing")]
    device_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(device_key, ec.EllipticCurvePrivateKey)
    csr = csr_der(ec.generate_private_key(ec.SECP256R1()), "x")
    with running_coaps(auth, tmp_path / "srv", onboarding=Registry(auth)) as srv:

        async def enroll() -> bytes:
            context = client_context([auth.root], chain, device_key)
            async with CoapsClient(f"coaps://127.0.0.1:{srv.port}", context) as client:
                answer = await client.request(Code.POST, "/est/sen", csr, content_format=286, accept=287)
                return answer.payload

        ldevid = x509.load_der_x509_certificate(srv.call(enroll()))
    assert ldevid.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value == "ACME-COAP-1"
    with auth.engine.connect() as conn:
        device = repo.device_by_serial(conn, "ACME-COAP-1")
    assert device is not None and device.state == "ACTIVE" and device.manufacturer_id is not None


def test_enrollment_on_each_store(authority: Authority, tmp_path: Path) -> None:
    """SQLite decides on the event loop, PostgreSQL in worker threads: EST-coaps is the same."""
    device = provision(authority, "SN-COAP-DB", tmp_path)
    csr = tmp_path / "csr.der"
    csr.write_bytes(csr_der(device.key, "x"))
    out = tmp_path / "ldevid.der"
    with running_coaps(authority, tmp_path / "srv") as srv:
        got = coap_client(
            srv, "post", "/est/sen", identity=device.idevid_files, payload=csr, content_format=286,
            accept=287, out=out,
        )  # fmt: skip
    assert got.returncode == 0 and out.exists(), got.stdout + got.stderr
    assert status(authority, x509.load_der_x509_certificate(out.read_bytes())) == "valid"
