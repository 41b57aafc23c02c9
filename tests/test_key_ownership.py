"""One identity per device and one device per key: an enrollment with the IDevID replaces the
device's LDevIDs, and a public key certified for one device is refused to another."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from est_helpers import EstServer, csr_b64, https, path, provision, renewal_csr_b64, save_identity
from sqlalchemy import select

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.errors import DevidError, PolicyError
from devid.pki.profiles import ProfileName
from devid.store import repo
from devid.store.states import CertificateStatus


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _statuses(auth: Authority, serial: str, profile: ProfileName) -> list[str]:
    certs, devices = repo.certificates, repo.devices
    with auth.engine.connect() as conn:
        rows = conn.execute(
            select(certs.c.status)
            .join(devices, devices.c.id == certs.c.device_id)
            .where(devices.c.serial == serial, certs.c.profile == profile.value)
            .order_by(certs.c.id)
        )
        return [row.status for row in rows]


def _status(auth: Authority, cert: x509.Certificate) -> str:
    with auth.engine.connect() as conn:
        row = repo.certificate_by_fingerprint(conn, cert.fingerprint(hashes.SHA256()).hex())
    assert row is not None
    return str(row.status)


def _issued(resp: object) -> x509.Certificate:
    assert resp.status == 200, resp.text  # type: ignore[attr-defined]
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(resp.body.split())))[0]  # type: ignore[attr-defined]


def _table_rows(auth: Authority) -> tuple[list[object], list[object]]:
    with auth.engine.connect() as conn:
        certs = conn.execute(select(repo.certificates.c.fingerprint, repo.certificates.c.status)).all()
        devices = conn.execute(
            select(repo.devices.c.serial, repo.devices.c.state, repo.devices.c.version)
        ).all()
    return list(certs), list(devices)


# --- through the authority -------------------------------------------------------------------------


def test_idevid_enrollment_supersedes_the_devices_ldevids(auth: Authority, tmp_path: Path) -> None:
    provision(auth, "SN-A", tmp_path)
    provision(auth, "SN-B", tmp_path)

    def ldevid(serial: str, held: bool) -> None:
        auth.issue(IssueRequest(ProfileName.LDEVID, _key().public_key(), serial, supersedes_held=held))

    ldevid("SN-B", True)
    for _ in range(3):
        ldevid("SN-A", True)
    auth.issue(IssueRequest(ProfileName.SESSION, _key().public_key(), "SN-A"))
    ldevid("SN-A", True)

    assert _statuses(auth, "SN-A", ProfileName.LDEVID) == [CertificateStatus.SUPERSEDED] * 3 + ["valid"]
    # Other profiles of the device, and other devices, keep theirs.
    assert _statuses(auth, "SN-A", ProfileName.SESSION) == ["valid"]
    assert _statuses(auth, "SN-A", ProfileName.IDEVID) == ["valid"]
    assert _statuses(auth, "SN-B", ProfileName.LDEVID) == ["valid"]


def test_a_key_certified_for_one_device_is_refused_to_another(auth: Authority, tmp_path: Path) -> None:
    a = provision(auth, "SN-A", tmp_path)
    provision(auth, "SN-B", tmp_path)
    before = _table_rows(auth)
    for request in (
        IssueRequest(ProfileName.LDEVID, a.key.public_key(), "SN-B"),
        IssueRequest(ProfileName.IDEVID, a.key.public_key(), new_device=NewDevice("SN-C")),
    ):
        with pytest.raises(PolicyError) as refused:
            auth.issue(request)
        assert refused.value.code == "public-key-in-use"
    assert _table_rows(auth) == before

    # The same device may certify its own key again (an LDevID for its IDevID key, a renewal).
    auth.issue(IssueRequest(ProfileName.LDEVID, a.key.public_key(), "SN-A"))


def test_a_batch_refuses_only_the_device_that_reuses_a_key(auth: Authority) -> None:
    shared, own = _key().public_key(), _key().public_key()
    outcomes = auth.issue_each(
        [
            IssueRequest(ProfileName.IDEVID, shared, new_device=NewDevice("SN-1")),
            IssueRequest(ProfileName.IDEVID, shared, new_device=NewDevice("SN-2")),
            IssueRequest(ProfileName.IDEVID, own, new_device=NewDevice("SN-3")),
        ]
    )
    assert not isinstance(outcomes[0], DevidError) and not isinstance(outcomes[2], DevidError)
    assert isinstance(outcomes[1], PolicyError) and outcomes[1].code == "public-key-in-use"
    with auth.engine.connect() as conn:
        assert set(repo.device_ids(conn, ["SN-1", "SN-2", "SN-3"])) == {"SN-1", "SN-3"}


# --- through a real EST request --------------------------------------------------------------------


def test_est_idevid_reenrollment_leaves_one_valid_ldevid(server: EstServer, tmp_path: Path) -> None:
    auth = server.authority
    dev = provision(auth, "SN-0001", tmp_path)
    keys = [_key() for _ in range(3)]
    issued = [
        _issued(https(server, "POST", path("simpleenroll"), csr_b64(key), cert=dev.idevid_files))
        for key in keys
    ]
    assert [_status(auth, c) for c in issued] == ["superseded", "superseded", "valid"]
    assert _statuses(auth, dev.serial, ProfileName.LDEVID).count(CertificateStatus.VALID) == 1

    # A renewal with the LDevID supersedes the one it renews, as before: still one valid.
    files = save_identity(tmp_path, "ldevid", issued[-1], keys[-1])
    renewed = _issued(
        https(server, "POST", path("simplereenroll"), renewal_csr_b64(_key(), issued[-1]), cert=files)
    )
    assert (_status(auth, issued[-1]), _status(auth, renewed)) == ("superseded", "valid")
    assert _statuses(auth, dev.serial, ProfileName.LDEVID).count(CertificateStatus.VALID) == 1


def test_est_refuses_a_key_certified_for_another_device(server: EstServer, tmp_path: Path) -> None:
    auth = server.authority
    first = provision(auth, "SN-0001", tmp_path)
    second = provision(auth, "SN-0002", tmp_path)
    key = _key()
    _issued(https(server, "POST", path("simpleenroll"), csr_b64(key), cert=first.idevid_files))
    before = _table_rows(auth)

    resp = https(server, "POST", path("simpleenroll"), csr_b64(key), cert=second.idevid_files)
    assert resp.status == 403, resp.text
    assert resp.headers["Devid-Error"] == "public-key-in-use"
    # Another device's IDevID key is refused the same way.
    resp = https(server, "POST", path("simpleenroll"), csr_b64(first.key), cert=second.idevid_files)
    assert (resp.status, resp.headers["Devid-Error"]) == (403, "public-key-in-use")
    assert _table_rows(auth) == before
