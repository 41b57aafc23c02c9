"""The device agent.

A device connects rarely and briefly, so every check-in does what is due and nothing else:
enroll an LDevID with the IDevID, renew at the time the server's policy named, fall back to
IDevID re-enrollment when the LDevID expired (or was superseded by a renewal the device never
heard the answer of), fetch a session certificate under the session policy, and back off with
jitter while the server is unreachable. State changes are written atomically, certificate first,
so a crash at any point leaves a certificate the device can still use.

TLS client authentication uses the secure element's key: a software element lends it to the TLS
stack in memory (memfd); a PKCS#11 element keeps it in the token and OpenSSL's pkcs11-provider signs
the handshake there (devid.keys.p11tls), a TPM element keeps it in the TPM and OpenSSL's tpm2
provider signs there (devid.keys.tpmtls). Either way the process must start with OPENSSL_CONF set,
which `devid agent` arranges by re-executing itself.
"""

from __future__ import annotations

import json
import random
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devid.clock import Clock, SystemClock
from devid.config import Pkcs11Settings
from devid.device import decisions
from devid.device.coaps import CoapsEst
from devid.device.decisions import AgentState, Issued
from devid.errors import ConfigError
from devid.est.client import Enrolled, EstClient, tls_context
from devid.fsutil import atomic_write
from devid.keys.base import SecureElement
from devid.keys.p11tls import ProviderKey, TokenTls
from devid.keys.software import SoftwareSecureElement
from devid.keys.tpmtls import TpmTls
from devid.pki.encoding import load_certificates

STATE_FILE = "agent.json"
LDEVID_FILE = "ldevid.pem"
SESSION_FILE = "session.pem"
#: Where `devid agent` finds the PIN file of a PKCS#11 device's token when --se-pin-file is not given.
SE_PIN_FILE_ENV = "DEVID_SE_PIN_FILE"
TlsKey = ec.EllipticCurvePrivateKey | ProviderKey


def device_info(directory: Path) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], json.loads((directory / "device.json").read_text()))
    except FileNotFoundError:
        raise ConfigError("device-folder", f"{directory} is not a device folder (no device.json)") from None


def provider_tls(
    directory: Path, se_pin_file: Path | None, se_tcti: str | None = None
) -> TokenTls | TpmTls | None:
    """For a device whose key is in a PKCS#11 token or a TPM, what TLS with that key needs (None:
    software element). A token's PIN file comes from the device's own configuration, never from the
    factory's record; a TPM is the one the factory used unless `se_tcti` names another."""
    ref = device_info(directory)["secure_element"]
    if ref["backend"] == "software":
        return None
    if ref["backend"] == "tpm":
        return TpmTls(directory.resolve(), se_tcti or ref["tcti"])
    if ref["backend"] != "pkcs11":
        raise ConfigError("se-backend", f"unknown secure element {ref['backend']!r} in {directory}")
    if se_pin_file is None:
        raise ConfigError(
            "se-pin-file",
            f"the key of {directory.name} is in PKCS#11 token {ref['token']!r}: give its PIN file "
            f"(--se-pin-file or ${SE_PIN_FILE_ENV})",
        )
    return TokenTls(directory.resolve(), ref["module"], ref["uri"], se_pin_file)


def _held_element(directory: Path, files: TokenTls | TpmTls) -> SecureElement:
    """Open the element whose key is held in a token or a TPM (the libraries load only here)."""
    if isinstance(files, TpmTls):
        from devid.keys.tpm import TpmSecureElement

        return TpmSecureElement.open(directory, files.tcti)
    from devid.keys.pkcs11 import Pkcs11SecureElement

    ref = device_info(directory)["secure_element"]
    pin = Pkcs11Settings(ref["module"], ref["token"], str(files.pin_file)).pin()
    # python-pkcs11 logs in here, before any handshake: the provider then finds the token logged
    # in (one login per process), and the CSRs are signed through this session.
    return Pkcs11SecureElement.open(ref["module"], ref["token"], pin, ref["object"])


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
        se_tcti: str | None = None,
        tls: bool = True,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        durable: bool = True,
    ) -> DeviceAgent:
        """Open a device folder. `durable=False` (simulation only) skips fsync; writes stay atomic.

        A PKCS#11 device needs `se_pin_file` (its token's PIN file, mode 0600); a TPM device may name
        its TPM (`se_tcti`). Unless `tls` is False (status only), either needs a process started with
        the OpenSSL configuration `provider_tls()` names."""
        state_file = directory / STATE_FILE
        state = AgentState.from_json(json.loads(state_file.read_text())) if state_file.exists() else None
        files = provider_tls(directory, se_pin_file, se_tcti)
        if files is not None:
            tls_key = files.prepare() if tls else files.provider_key()  # status: nothing written
            # The element first: an absent token or TPM is reported as such, not as a provider that
            # could not start.
            held = _held_element(directory, files)
            if tls:
                files.require_in_effect()
            return cls(directory, held, state, tls_key=tls_key, clock=clock, rng=rng, durable=durable)
        se = SoftwareSecureElement.open(directory, durable=durable)
        return cls(directory, se, state, tls_key=se.tls_private_key(), clock=clock, rng=rng, durable=durable)

    # --- persistence ----------------------------------------------------------------------------

    def _save_state(self) -> None:
        assert self.state is not None
        atomic_write(
            self.directory / STATE_FILE,
            json.dumps(self.state.to_json(), indent=1).encode(),
            durable=self.durable,
        )

    def _install(self, enrolled: Enrolled) -> Issued:
        """Certificate first (slot and file, each atomic), state after (the caller saves it): a crash
        in between leaves the new certificate in place and the agent re-reads it on the next start."""
        session = enrolled.policy == decisions.SESSION_POLICY
        cert = enrolled.certificate
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *enrolled.chain])
        self.se.write_slot("session" if session else "ldevid", cert.public_bytes(serialization.Encoding.DER))
        atomic_write(self.directory / (SESSION_FILE if session else LDEVID_FILE), pem, durable=self.durable)
        return Issued(
            cert.serial_number,
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            enrolled.policy,
            enrolled.renew_at,
        )

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
        not_after = cert.not_valid_after_utc
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

    def _client(self, chain: list[x509.Certificate], label: str | None = None) -> EstClient | CoapsEst:
        """EST over HTTPS, or EST-coaps when the server's URL is coaps:// (`--transport coaps`)."""
        assert self.state is not None
        if self.state.server.startswith("coaps://"):
            return CoapsEst(
                self.state.server,
                self.state.trust_pem.encode(),
                chain,
                self.tls_key,
                label=self.state.label if label is None else label,
            )
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
        now = self.clock.now()
        enrolled = await self._idevid_enrollment()
        decisions.accept(self.state, self._install(enrolled), now, "enroll with IDevID")
        self._save_state()
        return enrolled

    async def _idevid_enrollment(self) -> Enrolled:
        async with self._client(self.idevid_chain) as est:
            return await est.simpleenroll(self._csr(None))

    # The agent is its own transport (decisions.Transport): EST over mTLS with the element's key.

    async def enroll_with_idevid(self) -> Issued:
        return self._install(await self._idevid_enrollment())

    async def renew_with_ldevid(self) -> Issued:
        chain = self.ldevid()
        assert chain is not None
        async with self._client(chain) as est:
            return self._install(await est.simplereenroll(self._csr(chain[0])))

    def _ldevid_end(self) -> datetime | None:
        chain = self.ldevid()
        return None if chain is None else chain[0].not_valid_after_utc

    def _enrolled_state(self) -> AgentState:
        if self.state is None:
            raise ConfigError(
                "agent-not-enrolled", f"{self.directory} is not enrolled: run `devid agent enroll`"
            )
        return self.state

    def due(self, now: datetime) -> str | None:
        """What this check-in must do: enroll, fallback, renew, session, or nothing (None)."""
        action = decisions.due(self._enrolled_state(), self._ldevid_end(), now)
        return None if action is None else action.value

    def next_due(self) -> datetime:
        """When a check-in next has something to do (now, if it has)."""
        return decisions.next_due(self._enrolled_state(), self._ldevid_end(), self.clock.now())

    async def check_in(self) -> str:
        """One connection's worth of work; returns what happened (for logs and the simulator)."""
        state = self._enrolled_state()
        outcome = await decisions.check_in(state, self._ldevid_end(), self, self.clock.now(), self.rng)
        if outcome != "idle":
            self._save_state()
        return outcome

    def status(self) -> dict[str, Any]:
        chain = self.ldevid()
        return {
            "serial": self.serial,
            "idevid_serial": format(self.idevid_chain[0].serial_number, "x"),
            "ldevid_serial": format(chain[0].serial_number, "x") if chain else None,
            **(self.state.to_json() if self.state else {"enrolled": False}),
        }
