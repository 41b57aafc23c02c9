"""CA rotation end to end: devices enrolled under the operational CA over real EST, `devid ca rotate`,
renewal at the devices' due check-ins (moved there by one injected clock) under the successor,
the old CA's status still served, `devid ca retire` refused while devices hold its certificates,
and the devices that followed the schedule working after it. Each "restart" of `devid serve` is a
new authority and server on the same home (agents are pointed at its address)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from e2e import devid, flat, ok, openssl
from est_helpers import EstServer, certs_from_b64_pkcs7, running_server
from pkcs11 import ObjectClass
from softhsm import SoftToken
from sqlalchemy import select

from devid.authority.core import Authority, CaState
from devid.authority.rotation import outstanding, retire, rotate
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.config import Home, Pkcs11Settings
from devid.device.agent import DeviceAgent
from devid.errors import ConflictError, PolicyError
from devid.est.client import EstError
from devid.factory.secure_elements import SecureElementMaker, SecureElementSpec
from devid.factory.station import LineInfo, Station
from devid.keys.pkcs11 import open_token
from devid.pki.profiles import ProfileName
from devid.revocation.publisher import Publisher
from devid.store.models import audit_events

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def rhome(tmp_path: Path) -> Home:
    """A home with a public URL: certificates name their CRL shard and the OCSP responder."""
    return init_home(
        tmp_path / "home", org="Test Org", passphrase=PASSPHRASE, public_url="http://127.0.0.1:1"
    )


def _curl(server: EstServer, path: str, *extra: str) -> bytes:
    args = ["curl", "-sS", "--fail", "--cacert", str(server.root_pem), *extra, server.url + path]
    return subprocess.run(args, capture_output=True, check=True).stdout


def _ocsp(
    server: EstServer, cert: x509.Certificate, issuer: x509.Certificate, work: Path
) -> ocsp.OCSPResponse:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
    body = work / "ocsp.der"
    body.write_bytes(request.public_bytes(serialization.Encoding.DER))
    header = "Content-Type: application/ocsp-request"
    return ocsp.load_der_ocsp_response(_curl(server, "/ocsp", "-H", header, "--data-binary", f"@{body}"))


def _pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _ders(certs: list[x509.Certificate]) -> set[bytes]:
    return {c.public_bytes(serialization.Encoding.DER) for c in certs}


def _leaf(agent: DeviceAgent) -> x509.Certificate:
    chain = agent.ldevid()
    assert chain is not None
    return chain[0]


def _renew_due(agents: list[DeviceAgent], clock: FixedClock, server: EstServer) -> list[str]:
    """Move time to the latest due renewal of `agents` and let each check in at `server`."""
    for agent in agents:
        assert agent.state is not None
        agent.state.server = server.url  # the restarted server's address
    clock.set(max(agent.next_due() for agent in agents))
    return [asyncio.run(agent.check_in()) for agent in agents]


def test_operational_ca_rotation_with_overlap_and_retirement(
    rhome: Home, clock: FixedClock, tmp_path: Path
) -> None:
    start = clock.now()
    first = open_authority(rhome, PASSPHRASE, clock=clock)
    station = Station(
        first,
        SecureElementMaker(SecureElementSpec("software")),
        tmp_path / "dev",
        LineInfo("l", "sensor", "1"),
    )
    agents = {}
    with running_server(first, tmp_path / "s1") as server:
        for serial in ("SN-A", "SN-B", "SN-LATE"):
            [made] = station.provision([serial])
            agent = DeviceAgent.open(Path(made.directory), clock=clock, rng=random.Random(serial))
            asyncio.run(agent.enroll(server.url, server.root_pem.read_bytes()))
            agents[serial] = agent
    old = first.cas["operational"].certificate
    first.close()
    a, b, late = agents["SN-A"], agents["SN-B"], agents["SN-LATE"]
    old_leaf = {serial: _leaf(agent) for serial, agent in agents.items()}

    rotated = json.loads(
        ok(
            devid(
                "ca", "rotate", "--ca", "operational", "--overlap-days", "400", "--home", rhome.path, "--json"
            )
        ).stdout
    )
    assert (rotated["previous"], rotated["new"]) == ("operational", "operational-2")
    listed = {
        r["name"]: r
        for r in map(json.loads, ok(devid("ca", "list", "--home", rhome.path, "--json")).stdout.splitlines())
    }
    assert (listed["operational"]["state"], listed["operational-2"]["state"]) == ("retiring", "active")
    assert listed["operational-2"]["role"] == "operational" and listed["root"]["state"] == "active"

    second = open_authority(rhome, PASSPHRASE, clock=clock)
    new = second.cas["operational-2"].certificate
    assert second.issuer_for(ProfileName.LDEVID).name == "operational-2"
    assert new.subject != old.subject and new.issuer == second.root.subject
    # Same key backend as the home: the successor's key is sealed in the keystore beside the others.
    key_file = next((rhome.keys_dir).glob("*operational-2*"))
    assert key_file.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with running_server(second, tmp_path / "s2") as server:
        # /cacerts: the new issuing CA, the one being retired (overlap), the root.
        served = certs_from_b64_pkcs7(_curl(server, "/.well-known/est/cacerts"))
        assert _ders(served) == _ders([new, old, second.root])  # a PKCS#7 SET OF: order is DER's

        # A device renews at its due check-in with the LDevID of the old CA (still trusted) and gets
        # one of the new CA, whose chain it stores; openssl path-validates it with the served bundle.
        assert _renew_due([a], clock, server) == ["renew"]
        renewed = _leaf(a)
        renewed.verify_directly_issued_by(new)
        assert a.ldevid() == [renewed, new]
        bundle = _pem(tmp_path / "cacerts.pem", *served)
        leaf_file = _pem(tmp_path / "a.pem", renewed)
        at = str(int(clock.now().timestamp()))
        verified = openssl(
            "verify",
            "-attime",
            at,
            "-CAfile",
            _pem(tmp_path / "root.pem", second.root),
            "-untrusted",
            bundle,
            leaf_file,
        )
        assert verified.strip() == f"{leaf_file}: OK"

        # Retirement is refused while devices hold unexpired certificates of the old CA.
        refused = devid("ca", "retire", "--ca", "operational", "--home", rhome.path)
        assert refused.returncode == 2
        assert (
            "2 unexpired certificate(s) not renewed (2 ldevid)" in flat(refused.stderr)
            and "[ca-in-use]" in refused.stderr
        )
        assert _renew_due([b], clock, server) == ["renew"]
        assert outstanding(second, "operational").by_profile == {"ldevid": 1}  # SN-LATE missed its check-ins

        # The old CA's status is still served: its CRL (signed by it) and OCSP for its certificates.
        Publisher(second).publish()
        crl = x509.load_der_x509_crl(_curl(server, "/crl/operational.crl"))
        assert crl.issuer == old.subject and crl.is_signature_valid(old.public_key())  # type: ignore[arg-type]
        answer = _ocsp(server, old_leaf["SN-LATE"], old, tmp_path)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert answer.certificates[0].issuer == old.subject

    # Forced past the one stranded device; the audit log records both steps.
    retired = ok(devid("ca", "retire", "--ca", "operational", "--force", "--home", rhome.path))
    assert "1 certificate(s) not renewed (1 ldevid) are no longer accepted" in flat(retired.stdout)
    # Until the last certificate it issued expires: the LDevIDs, and the first server's TLS certificate.
    until = flat(retired.stdout).rpartition("its status is served for certificates valid until ")[2]
    assert until >= f"{max(cert.not_valid_after_utc for cert in old_leaf.values()):%Y-%m-%d}"
    # The trust bundle for relying parties no longer holds it; the successor it does.
    exported = ok(devid("ca", "export", "--home", rhome.path)).stdout.encode()
    bundle = _ders(x509.load_pem_x509_certificates(exported))
    assert _ders([new]) <= bundle and not _ders([old]) & bundle
    second.close()

    # Back to the start for the restart: curl and the agents check the server certificate it
    # issues against the real time (the devices' checks move the clock on again).
    clock.set(start)
    third = open_authority(rhome, PASSPHRASE, clock=clock)
    assert third.ca_state("operational") is CaState.RETIRED
    with running_server(third, tmp_path / "s3") as server:
        assert _ders(certs_from_b64_pkcs7(_curl(server, "/.well-known/est/cacerts"))) == _ders(
            [new, third.root]
        )
        # The devices that followed the schedule keep renewing under the new CA.
        assert _renew_due([a, b], clock, server) == ["renew", "renew"]
        for agent in (a, b):
            _leaf(agent).verify_directly_issued_by(new)
        # The old CA authenticates no one now: the late device's LDevID is refused, and it falls
        # back to its IDevID (as for any LDevID it can no longer use).
        late.state.server = server.url  # type: ignore[union-attr]
        with pytest.raises(EstError) as gone:
            asyncio.run(late.renew_with_ldevid())
        assert gone.value.code == "client-cert-unknown-issuer"
        clock.set(late.next_due())
        assert asyncio.run(late.check_in()) == "fallback"
        _leaf(late).verify_directly_issued_by(new)
        # Its CRL and OCSP go on being served for what it issued, beside the successor's.
        Publisher(third).publish()
        assert x509.load_der_x509_crl(_curl(server, "/crl/operational.crl")).issuer == old.subject
        assert x509.load_der_x509_crl(_curl(server, "/crl/operational-2.crl")).issuer == new.subject
        fresh = _ocsp(server, _leaf(a), new, tmp_path)
        assert fresh.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert fresh.certificates[0].issuer == new.subject
        answer = _ocsp(server, old_leaf["SN-A"], old, tmp_path)
        assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status is not ocsp.OCSPCertStatus.UNKNOWN
    assert third.verify_audit().ok
    with third.engine.connect() as conn:
        actions = conn.execute(select(audit_events.c.action, audit_events.c.subject)).all()
    assert {("ca.rotate", "operational-2"), ("ca.retire", "operational")} <= set(actions)
    third.close()


def test_rotation_refusals(home: Home, authority: Authority) -> None:
    """What rotation and retirement refuse, each naming the problem; nothing changes."""
    with pytest.raises(PolicyError) as bad_role:
        rotate(authority, "root", None, "test")
    assert bad_role.value.code == "ca-role"
    with pytest.raises(PolicyError) as active:
        retire(authority, "operational", force=True, actor="test")
    assert active.value.code == "ca-active"
    with pytest.raises(PolicyError) as not_issuing:
        retire(authority, "operational-ocsp", force=True, actor="test")
    assert not_issuing.value.code == "ca-role"
    before = authority.clock.now().replace(microsecond=0)
    done = rotate(authority, "manufacturing", None, "test")
    assert (done.previous, done.new) == ("manufacturing", "manufacturing-2")
    assert done.retire_after - before >= timedelta(days=365)  # default overlap: the LDevID lifetime
    with open_authority(home, PASSPHRASE) as later:  # a restart: the successor is active
        assert later.ca_state("manufacturing") is CaState.RETIRING
        retire(later, "manufacturing", force=False, actor="test")  # no IDevID issued: none outstanding
        with pytest.raises(ConflictError) as again:  # this authority still sees it retiring
            retire(later, "manufacturing", force=False, actor="test")
        assert again.value.code == "ca-retired"
    with open_authority(home, PASSPHRASE) as reopened:
        assert reopened.ca_state("manufacturing") is CaState.RETIRED
        assert reopened.issuer_for(ProfileName.IDEVID).name == "manufacturing-2"
        with pytest.raises(ConflictError) as retired:
            retire(reopened, "manufacturing", force=True, actor="test")
        assert retired.value.code == "ca-retired"


def test_manufacturing_rotation_in_an_hsm_home(
    tokens: dict[str, SoftToken], tmp_path: Path, clock: FixedClock
) -> None:
    """The successor's key is made in the home's token; the factory then issues IDevIDs under it,
    and devices of both generations enroll over EST during the overlap."""
    token = tokens["ca"]
    settings = Pkcs11Settings(token.module, token.label, str(token.pin_file))
    home = init_home(
        tmp_path / "home", org="HSM Org", passphrase=PASSPHRASE, key_backend="pkcs11", pkcs11=settings
    )
    maker = SecureElementMaker(SecureElementSpec("software"))
    with open_authority(home, PASSPHRASE, clock=clock) as first:
        [older] = Station(first, maker, tmp_path / "dev", LineInfo("l", "sensor", "1")).provision(["SN-OLD"])
        done = rotate(first, "manufacturing", timedelta(days=30), "test")
        old = first.cas["manufacturing"].certificate
    assert done.new == "manufacturing-2"
    key = open_token(token.module, token.label, token.pin).get_key(
        object_class=ObjectClass.PRIVATE_KEY, label=home.config.key_prefix + "manufacturing-2"
    )
    assert key is not None  # generated in the token, never outside it
    with open_authority(home, PASSPHRASE, clock=clock) as second:
        new = second.cas["manufacturing-2"].certificate
        [newer] = Station(second, maker, tmp_path / "dev", LineInfo("l", "sensor", "2")).provision(["SN-NEW"])
        with running_server(second, tmp_path / "s") as server:
            for made, issuer in ((older, old), (newer, new)):
                agent = DeviceAgent.open(Path(made.directory), clock=clock, rng=random.Random(0))
                agent.idevid_chain[0].verify_directly_issued_by(issuer)
                enrolled = asyncio.run(agent.enroll(server.url, server.root_pem.read_bytes()))
                enrolled.certificate.verify_directly_issued_by(second.cas["operational"].certificate)
        assert outstanding(second, "manufacturing").by_profile == {"idevid": 1}
