"""One production-line station: for each device, key in the element, CSR, IDevID (or Matter DAC),
write-back, test.

A station works in batches: the CSRs of a batch are issued in one authority transaction (the
store commit is the expensive part of issuance), then each device gets its certificate and is
tested on its own, so one bad device is reported without stopping the line or losing others.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from devid.authority import device_records
from devid.authority.core import Authority
from devid.authority.requests import Issued, IssueRequest, MatterIds, NewDevice, check_device_serial
from devid.errors import ConflictError, DevidError
from devid.factory.secure_elements import SecureElementMaker
from devid.fsutil import write_new
from devid.keys.base import SecureElement
from devid.keys.software import DEVICE_KEY_FILE, SE_STATE_FILE
from devid.pki.csr import load_and_check_csr
from devid.pki.keypolicy import require_p256
from devid.pki.profiles import ProfileName, device_subject
from devid.pki.serials import serial_hex
from devid.store import audit, repo
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates, devices
from devid.store.states import DeviceState

DEVICE_FILE = "device.json"
IDEVID_FILE = "idevid.pem"
DAC_FILE = "dac.pem"
CHAIN_FILE = "chain.pem"
#: Every file the line writes into a device folder (device.json last).
_LINE_FILES = {SE_STATE_FILE, DEVICE_KEY_FILE, IDEVID_FILE, DAC_FILE, CHAIN_FILE, DEVICE_FILE}
_SIGN = ec.ECDSA(hashes.SHA256())


@dataclass(frozen=True)
class Credential:
    """What the line gives each device: an 802.1AR IDevID, or the Matter DAC of one product (its
    PAI signs it; the device's chain file then holds PAI and PAA)."""

    matter: MatterIds | None = None

    @property
    def profile(self) -> ProfileName:
        return ProfileName.IDEVID if self.matter is None else ProfileName.MATTER_DAC

    @property
    def slot(self) -> str:
        """The secure-element slot and device.json key of the certificate."""
        return "idevid" if self.matter is None else "dac"

    @property
    def file(self) -> str:
        return IDEVID_FILE if self.matter is None else DAC_FILE

    @property
    def label(self) -> str:
        return "IDevID" if self.matter is None else "DAC"


@dataclass(frozen=True)
class LineInfo:
    line: str
    model: str
    lot: str


@dataclass
class DeviceResult:
    """What the manifest records for one device."""

    serial: str
    ok: bool
    directory: str
    seconds: float
    cert_serial: str | None = None
    fingerprint: str | None = None
    error: str | None = None

    def manifest_line(self, info: LineInfo) -> str:
        return json.dumps(
            {
                "device_serial": self.serial,
                "status": "ok" if self.ok else "failed",
                "lot": info.lot,
                "model": info.model,
                "line": info.line,
                "certificate_serial": self.cert_serial,
                "fingerprint": self.fingerprint,
                "directory": self.directory,
                "error": self.error,
            }
        )


@dataclass
class _Pending:
    serial: str
    directory: Path
    se: SecureElement
    request: IssueRequest
    seconds: float


class Station:
    """Provisions devices against one authority and one kind of secure element."""

    def __init__(
        self,
        authority: Authority,
        maker: SecureElementMaker,
        out_dir: Path,
        info: LineInfo,
        actor: str = "factory",
        credential: Credential | None = None,
    ) -> None:
        self.authority = authority
        self.maker = maker
        self.out_dir = out_dir
        self.info = info
        self.actor = actor
        self.credential = credential = credential or Credential()
        issuer = authority.issuer_for(credential.profile, credential.matter)
        self._ca_key = issuer.key  # opened now: a wrong passphrase stops the line before any device
        self._issuer_name = issuer.name
        self._issuer_cert = issuer.certificate
        self._issuer_key = require_p256(issuer.certificate.public_key(), f"{issuer.name} CA key")
        chain = authority.chain(issuer.name, with_root=True)
        for child, parent in itertools.pairwise(chain):
            child.verify_directly_issued_by(parent)
        self._chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)

    def provision(self, serials: Sequence[str]) -> list[DeviceResult]:
        results: list[DeviceResult] = []
        pending: list[_Pending] = []
        known = self._refuse_known(serials, results)
        for serial in serials:
            start = time.perf_counter()
            directory = self.out_dir / serial
            if serial in known:
                continue
            try:
                pending.append(self._prepare(serial, directory, start))
            except Exception as exc:
                results.append(
                    DeviceResult(
                        serial, False, str(directory), time.perf_counter() - start, error=_reason(exc)
                    )
                )
        issued = self._issue(pending, results)
        failed: list[str] = []
        for item, cert in issued:
            start = time.perf_counter()
            try:
                self._install_and_test(item.directory, item.se, item.serial, cert)
                results.append(
                    DeviceResult(
                        item.serial,
                        True,
                        str(item.directory),
                        item.seconds + time.perf_counter() - start,
                        serial_hex(cert.serial),
                        cert.fingerprint,
                    )
                )
            except Exception as exc:
                failed.append(item.serial)
                results.append(
                    DeviceResult(
                        item.serial,
                        False,
                        str(item.directory),
                        item.seconds + time.perf_counter() - start,
                        serial_hex(cert.serial),
                        cert.fingerprint,
                        _reason(exc),
                    )
                )
        if failed:
            self._mark_failed(failed, {r.serial: r.error for r in results if not r.ok})
        return results

    def _refuse_known(self, serials: Sequence[str], results: list[DeviceResult]) -> set[str]:
        """Refuse serials the store already has before a key is made for them in an element (a
        token key made for a refused device would stay there) or their folder is touched."""
        with reading(self.authority.engine) as conn:
            known = set(repo.device_ids(conn, serials))
        interrupted = [
            s
            for s in serials
            if s in known and (self.out_dir / s).is_dir() and not (self.out_dir / s / DEVICE_FILE).exists()
        ]
        self._finish(interrupted, results)
        refused = [s for s in serials if s in known and s not in interrupted]
        if not refused:
            return known
        error = ConflictError("duplicate-device", "device already exists: not issued twice")
        detail = {"code": error.code, "reason": error.message, "profile": self.credential.profile.value}
        for serial in refused:
            results.append(DeviceResult(serial, False, str(self.out_dir / serial), 0.0, error=_reason(error)))
        with writing(self.authority.engine) as conn:
            audit.append(
                conn,
                [audit.Event("certificate.issue", s, self.actor, "refused", detail) for s in refused],
                self.authority.clock.now(),
            )
        return known

    def _finish(self, serials: list[str], results: list[DeviceResult]) -> None:
        """Write back and test the IDevIDs a killed line committed but did not install: the
        element, saved before the issue, still holds the key (a rerun of the line resumes)."""
        if not serials:
            return
        with reading(self.authority.engine) as conn:
            rows = conn.execute(
                select(devices.c.serial, certificates.c.der, certificates.c.fingerprint, cas.c.name)
                .join(certificates, certificates.c.device_id == devices.c.id)
                .join(cas, cas.c.id == certificates.c.issuer_id)
                .where(devices.c.serial.in_(serials), certificates.c.profile == self.credential.profile)
            ).all()
        failed: list[str] = []
        for serial, der, fp, issuer in rows:
            start, directory = time.perf_counter(), self.out_dir / serial
            cert = x509.load_der_x509_certificate(der)
            issued = Issued(cert, der, cert.serial_number, fp, self.credential.profile, issuer, serial)
            error = None
            try:
                for partial in (self.credential.file, CHAIN_FILE):
                    (directory / partial).unlink(missing_ok=True)
                self._install_and_test(directory, self.maker.open(directory, serial), serial, issued)
            except Exception as exc:
                failed.append(serial)
                error = _reason(exc)
            seconds = time.perf_counter() - start
            results.append(
                DeviceResult(
                    serial, error is None, str(directory), seconds, serial_hex(cert.serial_number), fp, error
                )
            )
        if failed:
            self._mark_failed(failed, {r.serial: r.error for r in results if not r.ok})

    def _prepare(self, serial: str, directory: Path, start: float) -> _Pending:
        check_device_serial(serial)
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            # Only what the line writes, for a device the store does not know: a line killed before
            # its IDevID committed left it (nothing was issued to that key). Start it again.
            if not {p.name for p in directory.iterdir()} <= _LINE_FILES - {DEVICE_FILE}:
                raise
            shutil.rmtree(directory)
            directory.mkdir()
        se: SecureElement | None = None
        try:
            se = self.maker.create(directory, serial)
            builder = x509.CertificateSigningRequestBuilder().subject_name(
                device_subject(self.authority.org, serial, self.info.model)
            )
            csr_der = se.sign_csr(builder).public_bytes(serialization.Encoding.DER)
            # The station sees only the CSR bytes from the element, and checks them as any CA would.
            _, key = load_and_check_csr(csr_der)
            device = NewDevice(
                serial, self.info.model, self.info.lot, self.info.line, se.backend, str(directory)
            )
            request = IssueRequest(
                self.credential.profile,
                key,
                new_device=device,
                common_name=self.info.model,
                matter=self.credential.matter,
            )
        except BaseException:
            if se is not None:
                se.discard()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return _Pending(serial, directory, se, request, time.perf_counter() - start)

    def _issue(self, pending: list[_Pending], results: list[DeviceResult]) -> list[tuple[_Pending, Issued]]:
        if not pending:
            return []
        start = time.perf_counter()
        outcomes = self.authority.issue_each([p.request for p in pending], self.actor)
        share = (time.perf_counter() - start) / len(pending)
        issued = []
        for p, outcome in zip(pending, outcomes, strict=True):
            p.seconds += share
            if isinstance(outcome, DevidError):
                p.se.discard()
                shutil.rmtree(p.directory, ignore_errors=True)
                results.append(
                    DeviceResult(p.serial, False, str(p.directory), p.seconds, error=_reason(outcome))
                )
            else:
                issued.append((p, outcome))
        return issued

    def _install_and_test(self, directory: Path, se: SecureElement, serial: str, issued: Issued) -> None:
        slot = self.credential.slot
        se.write_slot(slot, issued.der)
        write_new(directory / self.credential.file, issued.pem)
        write_new(directory / CHAIN_FILE, self._chain_pem)
        write_new(
            directory / DEVICE_FILE,
            json.dumps(
                {
                    "serial": serial,
                    "model": self.info.model,
                    "lot": self.info.lot,
                    "line": self.info.line,
                    "secure_element": se.reference(),
                    slot: self.credential.file,
                    "chain": CHAIN_FILE,
                    f"{slot}_serial": serial_hex(issued.serial),
                }
            ).encode(),
        )
        self._test(se, issued)

    def _test(self, se: SecureElement, issued: Issued) -> None:
        """The end-of-line test: chain, key match, and a fresh challenge signed by the element."""
        cert, label = issued.certificate, self.credential.label
        # The issuing CA's link to its root was verified when the station opened; here each
        # certificate is checked against the CA's key, loaded once (not re-parsed per device).
        try:
            if cert.issuer != self._issuer_cert.subject:
                raise InvalidSignature
            self._issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, _SIGN)
        except (ValueError, TypeError, InvalidSignature):
            raise DeviceTestError(
                "chain", f"{label} does not verify against CA {self._issuer_name}"
            ) from None
        if se.read_slot(self.credential.slot) != issued.der:
            raise DeviceTestError("slot", f"the element's {label} slot does not hold the issued certificate")
        cert_key = cert.public_key()
        if not isinstance(cert_key, ec.EllipticCurvePublicKey) or cert_key != se.public_key():
            raise DeviceTestError("key-mismatch", f"{label} public key differs from the element's key")
        challenge = os.urandom(32)
        try:
            cert_key.verify(se.sign(challenge), challenge, _SIGN)
        except InvalidSignature:
            raise DeviceTestError(
                "challenge", "the element's signature over a fresh challenge does not verify"
            ) from None

    def _mark_failed(self, serials: list[str], errors: dict[str, str | None]) -> None:
        now = self.authority.clock.now()
        with writing(self.authority.engine) as conn:
            device_records.change_state(
                conn, serials, DeviceState.FAILED_TEST, now, self.actor, reason="end-of-line test failed"
            )
            audit.append(
                conn,
                [
                    audit.Event("factory.test", s, self.actor, "refused", {"reason": errors.get(s)})
                    for s in serials
                ],
                now,
            )


class DeviceTestError(DevidError):
    """A device failed its end-of-line test."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DevidError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, FileExistsError):
        return f"device-folder-exists: {exc.filename}"
    return f"{type(exc).__name__}: {exc}"
