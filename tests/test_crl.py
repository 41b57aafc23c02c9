"""CRLs: full, shard and delta, checked by `openssl verify -crl_check` as an independent peer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import Authority
from devid.authority.requests import Issued, IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke, unrevoke
from devid.authority.setup import init_home, open_authority
from devid.clock import FixedClock
from devid.errors import ConfigError, NotFoundError
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.revocation import crl
from devid.revocation.publisher import Publisher

PASSPHRASE = b"correct horse battery staple"
PUBLIC = "http://127.0.0.1:8080"


@pytest.fixture
def pub(tmp_path: Path, clock: FixedClock) -> Iterator[Authority]:
    """An authority whose home has a public URL: certificates name their shard's CRL."""
    home = init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE, public_url=PUBLIC + "/")
    with open_authority(home, PASSPHRASE, clock=clock) as authority:
        yield authority


def _device(auth: Authority, serial: str, *, short: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    auth.issue(IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(serial, lot="L1")))
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return auth.issue(IssueRequest(ProfileName.LDEVID, key, device_serial=serial, short_lived=short))


def _pem(path: Path, *items: x509.Certificate | bytes) -> Path:
    with open(path, "wb") as fh:
        for item in items:
            if isinstance(item, bytes):
                fh.write(x509.load_der_x509_crl(item).public_bytes(serialization.Encoding.PEM))
            else:
                fh.write(item.public_bytes(serialization.Encoding.PEM))
    return path


def _verify(tmp: Path, auth: Authority, leaf: Issued, *crls: bytes, deltas: bool = False) -> str:
    trust = _pem(tmp / "trust.pem", auth.root, auth.cas["operational"].certificate)
    crl_file = _pem(tmp / "crls.pem", *crls)
    cert = _pem(tmp / "leaf.pem", leaf.certificate)
    args = ["openssl", "verify", "-CAfile", str(trust), "-CRLfile", str(crl_file), "-crl_check"]
    run = subprocess.run(
        [*args, *(["-use_deltas"] if deltas else []), str(cert)], capture_output=True, text=True
    )
    return run.stdout + run.stderr


def test_full_crl_lists_revoked_with_reasons_and_openssl_agrees(pub: Authority, tmp_path: Path) -> None:
    good, bad, held = (_device(pub, f"D{i}") for i in range(3))
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(bad.serial), Reason.CESSATION_OF_OPERATION), "t")
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(held.serial), Reason.CERTIFICATE_HOLD), "t")
    built = crl.build(pub, "operational")
    parsed = x509.load_der_x509_crl(built.der)
    assert parsed.is_signature_valid(pub.cas["operational"].certificate.public_key())
    assert parsed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == built.number
    assert parsed.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    freshest = parsed.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name[0].value == f"{PUBLIC}/crl/operational-delta.crl"
    reasons = {
        entry.serial_number: entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        for entry in parsed
    }
    assert reasons == {
        bad.serial: x509.ReasonFlags.cessation_of_operation,
        held.serial: x509.ReasonFlags.certificate_hold,
    }
    assert ": OK" in _verify(tmp_path, pub, good, built.der)
    assert "certificate revoked" in _verify(tmp_path, pub, bad, built.der)
    # Numbers grow across processes: a reopened authority continues the sequence.
    again = crl.build(pub, "operational")
    assert again.number == built.number + 1


def test_shard_crl_covers_its_shard_only(pub: Authority, tmp_path: Path) -> None:
    devices = [_device(pub, f"S{i}") for i in range(20)]
    target = devices[3]
    shard = target.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    number = int(shard[0].full_name[0].value.rsplit("/", 1)[1].removesuffix(".crl"))
    assert shard[0].full_name[0].value == f"{PUBLIC}/crl/operational/{number}.crl"
    aia = target.certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value == f"{PUBLIC}/ocsp"
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(target.serial), Reason.KEY_COMPROMISE), "t")
    built = crl.build(pub, "operational", shard=number)
    parsed = x509.load_der_x509_crl(built.der)
    idp = parsed.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name[0].value == f"{PUBLIC}/crl/operational/{number}.crl"
    assert [e.serial_number for e in parsed] == [target.serial]
    assert "certificate revoked" in _verify(tmp_path, pub, target, built.der)
    neighbour = next(d for d in devices if d is not target and _shard(d) == number)
    other = next(d for d in devices if _shard(d) != number)
    assert ": OK" in _verify(tmp_path, pub, neighbour, built.der)
    # A shard's CRL does not speak for another shard's certificate.
    assert "different CRL scope" in _verify(tmp_path, pub, other, built.der)
    with pytest.raises(NotFoundError):
        crl.build(pub, "operational", shard=16)


def _shard(issued: Issued) -> int:
    dp = issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return int(dp[0].full_name[0].value.rsplit("/", 1)[1].removesuffix(".crl"))


def test_delta_against_the_latest_base(pub: Authority, clock: FixedClock, tmp_path: Path) -> None:
    first, second, held = (_device(pub, f"X{i}") for i in range(3))
    with pytest.raises(NotFoundError) as missing:
        crl.build(pub, "operational", delta=True)
    assert missing.value.code == "no-base-crl"
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(first.serial), Reason.SUPERSEDED), "t")
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(held.serial), Reason.CERTIFICATE_HOLD), "t")
    base = crl.build(pub, "operational")
    clock.advance(timedelta(minutes=1))
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(second.serial), Reason.KEY_COMPROMISE), "t")
    unrevoke(pub, Selector.SERIAL, serial_hex(held.serial), "t")
    delta = crl.build(pub, "operational", delta=True)
    parsed = x509.load_der_x509_crl(delta.der)
    indicator = parsed.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number == base.number and delta.number > base.number
    reasons = {
        e.serial_number: e.extensions.get_extension_for_class(x509.CRLReason).value.reason for e in parsed
    }
    assert reasons == {
        second.serial: x509.ReasonFlags.key_compromise,
        held.serial: x509.ReasonFlags.remove_from_crl,
    }
    # The base alone is stale about `second`; with the delta, openssl sees the truth.
    assert ": OK" in _verify(tmp_path, pub, second, base.der)
    assert "certificate revoked" in _verify(tmp_path, pub, second, base.der, delta.der, deltas=True)
    assert "certificate revoked" in _verify(tmp_path, pub, first, base.der, delta.der, deltas=True)


def test_short_lived_certificates_never_enter_a_crl(pub: Authority) -> None:
    short = _device(pub, "SHORT-1", short=True)
    with pytest.raises(x509.ExtensionNotFound):
        short.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    revoke(pub, RevokeRequest(Selector.DEVICE, "SHORT-1", Reason.CESSATION_OF_OPERATION), "t")
    listed = [e.serial_number for e in x509.load_der_x509_crl(crl.build(pub, "operational").der)]
    assert short.serial not in listed
    idevid_listed = [e.serial_number for e in x509.load_der_x509_crl(crl.build(pub, "manufacturing").der)]
    assert len(idevid_listed) == 1  # the device's IDevID is not short-lived


def test_shards_need_a_public_url(auth: Authority) -> None:
    with pytest.raises(ConfigError) as refused:
        crl.build(auth, "operational", shard=0)
    assert refused.value.code == "public-url-required"
    with pytest.raises(NotFoundError):
        crl.build(auth, "nope")


def test_publisher_rebuilds_what_changed_once(pub: Authority, clock: FixedClock) -> None:
    devices = [_device(pub, f"P{i}") for i in range(8)]
    publisher = Publisher(pub)
    first = publisher.publish()
    assert {"crl operational", "delta-crl operational", "filter operational", "crl root"} <= set(first)
    assert sum(b.startswith("crl operational/") for b in first) == 16
    assert not any(b.startswith("crl root/") or "ocsp" in b for b in first)
    assert publisher.publish() == []
    revoke(pub, RevokeRequest(Selector.LOT, "L1", Reason.KEY_COMPROMISE), "t")
    after = publisher.publish()
    shards = {f"crl operational/{_shard(d)}" for d in devices}
    assert set(after) == {
        "delta-crl operational",
        "delta-crl manufacturing",
        "filter operational",
        "filter manufacturing",
    } | shards | {b for b in after if b.startswith("crl manufacturing/")}
    assert publisher.publish() == []
    # Half-way to nextUpdate, everything is rebuilt even with no change.
    clock.advance(crl.CRL_LIFETIME / 2)
    assert "crl operational" in publisher.publish()


def test_crl_build_cli(pub: Authority, tmp_path: Path) -> None:
    """`devid crl build` writes a signed CRL for publishing elsewhere; bad requests are clear errors."""
    from e2e import devid, ok

    home = tmp_path / "home"
    gone = _device(pub, "CLI-1")
    revoke(pub, RevokeRequest(Selector.SERIAL, serial_hex(gone.serial), Reason.KEY_COMPROMISE), "t")
    out = tmp_path / "op.crl"
    done = ok(devid("crl", "build", "--ca", "operational", "--out", out, "--home", home))
    assert "1 entries" in done.stdout
    assert [e.serial_number for e in x509.load_der_x509_crl(out.read_bytes())] == [gone.serial]
    unknown = devid("crl", "build", "--ca", "nope", "--home", home)
    assert unknown.returncode == 2 and "[unknown-ca]" in unknown.stderr
    no_base = devid("crl", "build", "--ca", "manufacturing", "--delta", "--home", home)
    assert no_base.returncode == 2 and "[no-base-crl]" in no_base.stderr
    shard = devid("crl", "build", "--ca", "operational", "--shard", "99", "--home", home)
    assert shard.returncode == 2 and "[unknown-shard]" in shard.stderr
