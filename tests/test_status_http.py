"""Status data over HTTP(S): CRLs, filters and allowlists as relying parties fetch them (curl)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from e2e import devid, ok
from est_helpers import EstServer, running_server
from sqlalchemy import select, update

from devid.authority.core import Authority
from devid.authority.requests import Issued, IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.pki.chain import key_identifier
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.registry import hubs
from devid.revocation.allowlist import load_allowlist
from devid.revocation.filter import FilterAnswer, load_filter
from devid.revocation.publisher import Publisher
from devid.store.engine import writing
from devid.store.models import devices as device_table
from devid.store.models import hubs as hub_table

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def pub(tmp_path: Path, clock: FixedClock) -> Iterator[Authority]:
    home = init_home(
        tmp_path / "home", org="Test Org", passphrase=PASSPHRASE, public_url="http://127.0.0.1:1"
    )
    with open_authority(home, PASSPHRASE, clock=clock) as authority:
        yield authority


@pytest.fixture
def served(pub: Authority, tmp_path: Path) -> Iterator[EstServer]:
    with running_server(pub, tmp_path / "srv") as server:
        yield server


def _device(auth: Authority, serial: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    auth.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(serial, lot="L")))
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return auth.issue(IssueRequest(ProfileName.LDEVID, key, device_serial=serial))


def _curl(server: EstServer, path: str, *headers: str) -> tuple[dict[str, str], bytes, int]:
    args = ["curl", "-sS", "--cacert", str(server.root_pem), "-D", "-", "-o", "-"]
    for header in headers:
        args += ["-H", header]
    run = subprocess.run([*args, server.url + path], capture_output=True, check=True)
    head, _, body = run.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return fields, body, status


def test_crls_over_https_with_caching_headers(pub: Authority, served: EstServer) -> None:
    gone = _device(pub, "H-1")
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(gone.serial), Reason.KEY_COMPROMISE), "t")
    Publisher(pub).publish()
    headers, body, status = _curl(served, "/crl/operational.crl")
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(body)
    assert [e.serial_number for e in crl] == [gone.serial]
    assert "max-age=" in headers["cache-control"] and headers["last-modified"].endswith("GMT")
    _, empty, status = _curl(served, "/crl/operational.crl", f"If-None-Match: {headers['etag']}")
    assert status == 304 and empty == b""
    _, pem, _ = _curl(served, "/crl/operational.crl?format=pem")
    assert pem.startswith(b"-----BEGIN X509 CRL-----")
    _, delta, status = _curl(served, "/crl/operational-delta.crl")
    assert status == 200 and x509.load_der_x509_crl(delta).extensions.get_extension_for_class(
        x509.DeltaCRLIndicator
    )
    shard = gone.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    path = shard[0].full_name[0].value.removeprefix("http://127.0.0.1:1")
    _, shard_crl, status = _curl(served, path)
    assert status == 200 and [e.serial_number for e in x509.load_der_x509_crl(shard_crl)] == [gone.serial]
    for bad in ("/crl/nope.crl", "/crl/operational/99.crl", "/crl/operational-ocsp.crl", "/crl/../x.crl"):
        assert _curl(served, bad)[2] == 404, bad


def test_filter_and_delta_over_https(pub: Authority, served: EstServer) -> None:
    devices = [_device(pub, f"F-{i}") for i in range(4)]
    publisher = Publisher(pub)
    publisher.publish()
    key = pub.cas["operational"].certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    _, body, status = _curl(served, "/filter/operational")
    first = load_filter(body, key)
    assert all(first.check_serial(d.serial) is FilterAnswer.GOOD for d in devices)
    assert _curl(served, f"/filter/operational?since={first.version}")[2] == 304
    revoke(pub, RevokeRequest(Selector.DEVICE, "F-2", Reason.CESSATION_OF_OPERATION), "t")
    publisher.publish()
    time.sleep(0.3)  # the server notices what the publisher recorded within its poll
    _, delta, status = _curl(served, f"/filter/operational?since={first.version}")
    assert status == 200
    second = first.apply(delta)
    assert second.check_serial(devices[2].serial) is FilterAnswer.REVOKED
    assert second.check_serial(devices[1].serial) is FilterAnswer.GOOD
    assert _curl(served, "/filter/operational?since=999")[2] == 404
    assert _curl(served, "/filter/operational?since=x")[2] == 400


def test_allowlist_of_a_hub(pub: Authority, served: EstServer) -> None:
    hubs.create(pub, "hub-a", "mqtts://a.example", "eu", actor="t")
    devices = [_device(pub, f"A-{i}") for i in range(3)]
    with writing(pub.engine) as conn:
        on_hub = device_table.c.serial.in_(["A-0", "A-1"])
        hub_id = conn.execute(select(hub_table.c.id).where(hub_table.c.name == "hub-a")).scalar_one()
        conn.execute(update(device_table).where(on_hub).values(hub_id=hub_id))
    key = pub.cas["operational"].certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    _, body, status = _curl(served, "/allowlist/hub-a")
    assert status == 200
    snapshot = load_allowlist(body, key)
    operational = key_identifier(pub.cas["operational"].certificate)
    assert snapshot.admits(operational, devices[0].serial) and snapshot.admits(operational, devices[1].serial)
    assert not snapshot.admits(operational, devices[2].serial)
    assert _curl(served, "/allowlist/nohub")[2] == 404


def test_filter_cli_build_check_diff(pub: Authority, tmp_path: Path) -> None:
    home = Path(str(pub.engine.url.database)).parent
    good, bad = _device(pub, "C-1"), _device(pub, "C-2")
    first = tmp_path / "f1"
    ok(devid("filter", "build", "--ca", "operational", "--out", first, "--home", home))
    revoke(pub, RevokeRequest(Selector.DEVICE, "C-2", Reason.KEY_COMPROMISE), "t")
    second = tmp_path / "f2"
    ok(devid("filter", "build", "--ca", "operational", "--out", second, "--home", home))
    assert (
        devid("filter", "check", "--filter", second, serial_hex(good.serial), "--home", home).returncode == 0
    )
    revoked = devid("filter", "check", "--filter", second, serial_hex(bad.serial), "--home", home, "--json")
    assert revoked.returncode == 1 and '"revoked"' in revoked.stdout
    delta = tmp_path / "d"
    ok(devid("filter", "diff", first, second, "--out", delta, "--home", home))
    assert 64 < delta.stat().st_size < 300
    broken = tmp_path / "broken"
    broken.write_bytes(second.read_bytes()[:-1] + bytes([second.read_bytes()[-1] ^ 1]))
    refused = devid("filter", "check", "--filter", broken, serial_hex(good.serial), "--home", home)
    assert refused.returncode not in (0, 1) and "signature" in refused.stderr
