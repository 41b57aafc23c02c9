"""The device agent.

A device connects rarely and briefly, so every check-in does what is due and nothing else:
enroll an LDevID with the IDevID, renew at the time the server's policy named, fall back to
IDevID re-enrollment when the LDevID expired (or was superseded by a renewal the device never
heard the answer of), fetch a session certificate under the session policy, and back off with
jitter while the server is unreachable. State changes are written atomically, certificate first,
so a crash at any point leaves a certificate the device can still use.

TLS client authentication uses the secure element's key: a software element lends it to the TLS
stack in memory (memfd); a PKCS#11 element keeps it in the token and OpenSSL's pkcs11-provider signs
the handshake there (devid.keys.p11tls: the process must start with OPENSSL_CONF set, which
`devid agent` arranges by re-executing itself).
"""

from __future__ import annotations

import json
import random
import ssl
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.clock import Clock, SystemClock
from devid.config import Pkcs11Settings
from devid.errors import ConfigError, DevidError
from devid.est.client import Enrolled, EstClient, EstError, tls_context
from devid.fsutil import atomic_write
from devid.keys.base import SecureElement
from devid.keys.p11tls import ProviderKey, TokenTls
from devid.keys.software import SoftwareSecureElement
from devid.pki.encoding import load_certificates

STATE_FILE = "agent.json"
LDEVID_FILE = "ldevid.pem"
SESSION_FILE = "session.pem"
BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
#: Statuses after which the current LDevID cannot renew itself and the IDevID must step in.
FALLBACK_STATUSES = {401, 403}
#: Where `devid agent` finds the PIN file of a PKCS#11 device's token when --se-pin-file is not given.
SE_PIN_FILE_ENV = "DEVID_SE_PIN_FILE"
TlsKey = ec.EllipticCurvePrivateKey | ProviderKey


def device_info(directory: Path) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], json.loads((directory / "device.json").read_text()))
    except FileNotFoundError:
        raise ConfigError("device-folder", f"{directory} is not a device folder (no device.json)") from None


def token_tls(directory: Path, se_pin_file: Path | None) -> TokenTls | None:
    """For a device whose key is in a PKCS#11 token, what TLS with that key needs (None: software
    element). The PIN file comes from the device's own configuration, never from the factory's record."""
    ref = device_info(directory)["secure_element"]
    if ref["backend"] == "software":
        return None
    if ref["backend"] != "pkcs11":
        raise ConfigError("se-backend", f"unknown secure element {ref['backend']!r} in {directory}")
    if se_pin_file is None:
        raise ConfigError(
            "se-pin-file",
            f"the key of {directory.name} is in PKCS#11 token {ref['token']!r}: give its PIN file "
            f"(--se-pin-file or ${SE_PIN_FILE_ENV})",
        )
    return TokenTls(directory.resolve(), ref["module"], ref["uri"], se_pin_file)


@dataclass
class AgentState:
    server: str
    label: str
    trust_pem: str
    policy: str | None = None
    ldevid_fingerprint: str | None = None
    ldevid_not_after: str | None = None
    renew_at: str | None = None
    session_not_after: str | None = None
    failures: int = 0
    next_attempt: str | None = None
    last_success: str | None = None
    last_error: str | None = None
    events: list[str] = field(default_factory=list)

    def note(self, now: datetime, text: str) -> None:
        self.events = [*self.events[-19:], f"{now.isoformat()} {text}"]


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


class DeviceAgent:
    """One device folder, its secure element and its agent state."""

    def __init__(
        self,
        directory: Path,
        se: SecureElement,
        state: AgentState | None,
        *,
        tls_key: TlsKey,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        durable: bool = True,
    ) -> None:
        self.directory = directory
        self.durable = durable
        self._contexts: dict[tuple[int, str], ssl.SSLContext] = {}
        self._ldevid: tuple[tuple[int, int, int], list[x509.Certificate]] | None = None
        self.se = se
        self.tls_key = tls_key
        self.state = state
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        info = device_info(directory)
        self.serial: str = info["serial"]
        self.idevid_chain = (
            load_certificates((directory / info["idevid"]).read_bytes())
            + load_certificates((directory / info["chain"]).read_bytes())[:-1]
        )
        self._adopt_installed()

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        se_pin_file: Path | None = None,
        tls: bool = True,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        durable: bool = True,
    ) -> DeviceAgent:
        """Open a device folder. `durable=False` (simulation only) skips fsync; writes stay atomic.

        A PKCS#11 device needs `se_pin_file` (its token's PIN file, mode 0600) and, unless `tls` is
        False (status only), a process started with the OpenSSL configuration `token_tls()` names."""
        state_file = directory / STATE_FILE
        state = AgentState(**json.loads(state_file.read_text())) if state_file.exists() else None
        p11 = token_tls(directory, se_pin_file)
        if p11 is not None:
            if tls:
                tls_key = p11.prepare()
                p11.require_in_effect()
            else:  # status only: no provider needed, nothing written
                tls_key = ProviderKey(p11.uri, p11.key_file, p11.conf_file)
            from devid.keys.pkcs11 import Pkcs11SecureElement

            ref = device_info(directory)["secure_element"]
            pin = Pkcs11Settings(ref["module"], ref["token"], str(p11.pin_file)).pin()
            # python-pkcs11 logs in here, before any handshake: the provider then finds the token
            # logged in (one login per process), and the CSRs are signed through this session.
            p11se = Pkcs11SecureElement.open(ref["module"], ref["token"], pin, ref["object"])
            return cls(directory, p11se, state, tls_key=tls_key, clock=clock, rng=rng, durable=durable)
        se = SoftwareSecureElement.open(directory, durable=durable)
        return cls(directory, se, state, tls_key=se.tls_private_key(), clock=clock, rng=rng, durable=durable)

    # --- persistence ----------------------------------------------------------------------------

    def _save_state(self) -> None:
        assert self.state is not None
        atomic_write(
            self.directory / STATE_FILE,
            json.dumps(asdict(self.state), indent=1).encode(),
            durable=self.durable,
        )

    def _install(self, enrolled: Enrolled, file: str, slot: str) -> None:
        """Certificate first (slot and file, each atomic), state after: a crash in between leaves
        the new certificate in place and the agent re-reads it on the next start."""
        pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [enrolled.certificate, *enrolled.chain]
        )
        self.se.write_slot(slot, enrolled.certificate.public_bytes(serialization.Encoding.DER))
        atomic_write(self.directory / file, pem, durable=self.durable)

    def _adopt_installed(self) -> None:
        """A crash between installing a certificate and saving the state leaves the certificate file
        newer than agent.json: adopt the installed certificate (in memory; saved with the next state
        change). The stale renew_at stays: at worst the device renews early."""
        s = self.state
        if s is None:
            return
        session = s.policy == "session"
        path = self.directory / (SESSION_FILE if session else LDEVID_FILE)
        if not path.exists():
            return
        cert = load_certificates(path.read_bytes())[0]
        not_after = cert.not_valid_after_utc.isoformat()
        if session:
            if s.session_not_after == not_after:
                return
            s.session_not_after = not_after
        else:
            fingerprint = cert.fingerprint(hashes.SHA256()).hex()
            if s.ldevid_fingerprint == fingerprint:
                return
            s.ldevid_fingerprint, s.ldevid_not_after = fingerprint, not_after
        s.note(self.clock.now(), f"adopted certificate serial {cert.serial_number:x} found installed")

    def ldevid(self) -> list[x509.Certificate] | None:
        """The installed LDevID chain. Every check-in asks, and it changes only at enrollment: parsed
        again only when the file is another (inode, mtime, size), e.g. written by another process."""
        path = self.directory / LDEVID_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        version = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._ldevid is None or self._ldevid[0] != version:
            self._ldevid = (version, load_certificates(path.read_bytes()))
        return list(self._ldevid[1])

    # --- protocol -------------------------------------------------------------------------------

    def _client(self, chain: list[x509.Certificate], label: str | None = None) -> EstClient:
        assert self.state is not None
        # A TLS context costs milliseconds to build (key and chain loading): keep one per identity.
        cache_key = (chain[0].serial_number, self.state.trust_pem)
        ctx = self._contexts.get(cache_key)
        if ctx is None:
            ctx = tls_context(self.state.trust_pem.encode(), chain, self.tls_key)
            self._contexts = {cache_key: ctx} | {
                k: v for k, v in self._contexts.items() if k[0] != cache_key[0]
            }
            self._contexts = dict(list(self._contexts.items())[:2])
        return EstClient(self.state.server, ctx, label=self.state.label if label is None else label)

    def _csr(self, template: x509.Certificate | None) -> x509.CertificateSigningRequest:
        """A CSR signed inside the element; for re-enrollment it repeats the current subject and SAN
        (RFC 7030 4.2.2)."""
        builder = x509.CertificateSigningRequestBuilder()
        if template is not None:
            builder = builder.subject_name(template.subject)
            try:
                san = template.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                builder = builder.add_extension(san.value, san.critical)
            except x509.ExtensionNotFound:
                pass
        else:
            builder = builder.subject_name(self.idevid_chain[0].subject)
        return self.se.sign_csr(builder)

    async def enroll(self, server: str, trust_pem: bytes, label: str = "") -> Enrolled:
        """First enrollment with the IDevID."""
        self.state = AgentState(server=server, label=label, trust_pem=trust_pem.decode())
        return await self._idevid_enroll(self.clock.now(), "enroll")

    async def _idevid_enroll(self, now: datetime, why: str) -> Enrolled:
        assert self.state is not None
        async with self._client(self.idevid_chain) as est:
            enrolled = await est.simpleenroll(self._csr(None))
        self._accept(enrolled, now, f"{why} with IDevID")
        return enrolled

    def _accept(self, enrolled: Enrolled, now: datetime, what: str) -> None:
        assert self.state is not None
        session = enrolled.policy == "session"
        self._install(enrolled, SESSION_FILE if session else LDEVID_FILE, "session" if session else "ldevid")
        cert = enrolled.certificate
        s = self.state
        s.policy = enrolled.policy
        if session:
            s.session_not_after = cert.not_valid_after_utc.isoformat()
        else:
            s.ldevid_fingerprint = cert.fingerprint(hashes.SHA256()).hex()
            s.ldevid_not_after = cert.not_valid_after_utc.isoformat()
        s.renew_at = enrolled.renew_at.isoformat() if enrolled.renew_at else None
        s.failures, s.next_attempt, s.last_error = 0, None, None
        s.last_success = now.isoformat()
        s.note(
            now, f"{what}: serial {cert.serial_number:x}, valid to {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
        )
        self._save_state()

    def due(self, now: datetime) -> str | None:
        """What this check-in must do: enroll, fallback, renew, session, or nothing (None)."""
        s = self.state
        if s is None:
            raise ConfigError(
                "agent-not-enrolled", f"{self.directory} is not enrolled: run `devid agent enroll`"
            )
        if s.next_attempt and now < datetime.fromisoformat(s.next_attempt):
            return None
        if s.policy == "session":
            end = _when(s.session_not_after)
            return "session" if end is None or now >= end - timedelta(minutes=5) else None
        chain = self.ldevid()
        if chain is None:
            return "enroll"
        if now >= chain[0].not_valid_after_utc:
            return "fallback"
        renew = _when(s.renew_at)
        return "renew" if renew is not None and now >= renew else None

    async def check_in(self) -> str:
        """One connection's worth of work; returns what happened (for logs and the simulator)."""
        now = self.clock.now()
        action = self.due(now)
        if action is None:
            return "idle"
        try:
            if action in ("enroll", "fallback", "session"):
                await self._idevid_enroll(now, action)
                return action
            try:
                chain = self.ldevid()
                assert chain is not None
                async with self._client(chain) as est:
                    self._accept(await est.simplereenroll(self._csr(chain[0])), now, "renewed with LDevID")
                return "renew"
            except EstError as exc:
                if exc.status not in FALLBACK_STATUSES:
                    raise
                await self._idevid_enroll(now, f"fallback after {exc.status} {exc.message}")
                return "fallback"
        except DevidError as exc:
            self._back_off(now, exc)
            return f"error: {exc.message} [{exc.code}]"

    def _back_off(self, now: datetime, exc: DevidError) -> None:
        assert self.state is not None
        s = self.state
        s.failures += 1
        if isinstance(exc, EstError) and exc.retry_after:
            delay = timedelta(seconds=exc.retry_after)
        else:
            # Exponential, capped, then jittered within [1/2, 1] of that: never past BACKOFF_CAP, and
            # a fleet that lost the server at the same moment does not come back in one wave.
            ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(s.failures - 1, 20))
            delay = ceiling * (0.5 + 0.5 * self.rng.random())
        s.next_attempt = (now + delay).isoformat()
        s.last_error = exc.message
        s.note(now, f"failed ({exc.message}); next attempt {s.next_attempt}")
        self._save_state()

    def status(self) -> dict[str, Any]:
        chain = self.ldevid()
        return {
            "serial": self.serial,
            "idevid_serial": format(self.idevid_chain[0].serial_number, "x"),
            "ldevid_serial": format(chain[0].serial_number, "x") if chain else None,
            **(asdict(self.state) if self.state else {"enrolled": False}),
        }
