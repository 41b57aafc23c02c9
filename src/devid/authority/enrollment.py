"""The enrollment service: one enrollment from credential to committed certificate, or to its
audited refusal, whatever protocol carried it (EST today).

A front end parses its request, finds the credential (refusing a request with none before reading
its body: `require_credential`), and awaits `EnrollmentService.enroll`. The service limits failed
authentication (`FailedAuthentications`), authenticates (`credentials.identify` then
`check_standing`, the two steps of `authenticate`; or the enrollment secret), decides with the
label's rules (`enroll`), issues through the authority's group commit, and audits the refusal when
there is one: refusals of the issuance itself are audited by the authority (`certificate.issue`),
failed authentications in aggregate, the others here as `est.<operation>`.

Where the work runs is chosen for throughput: SQLite reads (WAL) never wait for a writer and touch
a local file only, so a certificate enrollment is decided on the event loop, saving two thread hops
per request. HTTP Basic spends the enrollment secret, onboarding may register or allocate a device
(and call an allocation webhook), and a database server is a network round trip away: those are
decided in a worker thread. The issuance is awaited through the committer's future, so no thread
waits on a commit on a request's behalf.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography import x509

from devid.authority.auth_failures import FailedAuthentications
from devid.authority.core import Authority
from devid.authority.credentials import CertificateCredential, check_standing, identify
from devid.authority.enroll import (
    Credential,
    Decision,
    EnrollResult,
    Onboarding,
    Operation,
    SecretCredential,
    check_secret,
    decide_with_certificate,
    decide_with_secret,
)
from devid.authority.group_commit import committer
from devid.authority.policy import LabelPolicy
from devid.errors import AuthenticationRequired, CredentialRefused, DevidError
from devid.store import audit
from devid.store.engine import writing

#: Threads that decide enrollments off the event loop.
WORKERS = 16


@dataclass(frozen=True)
class EnrollRequest:
    """One enrollment as a front end parsed it."""

    label: str
    operation: Operation
    credential: Credential
    csr: bytes
    #: Who the audit names (`est:<address>`).
    actor: str
    #: The client's address for the failure limits; None when unknown (behind a trusted proxy,
    #: whose own address would make every device behind it share one limit).
    peer: str | None = None
    #: The region the device reported (lowest-latency allocation).
    region: str | None = None
    #: The protocol that carried it: refusals are audited as `<protocol>.<operation>`.
    protocol: str = "est"
    #: An RSA-2048/3072 CSR key is accepted too (SCEP on a label opted into RSA).
    allow_rsa: bool = False


def require_credential(credential: Credential | None) -> Credential:
    """The credential, or AuthenticationRequired (401 with a challenge): called before the body is read."""
    if credential is None:
        raise AuthenticationRequired(
            "auth-required",
            "authenticate with a TLS client certificate (IDevID or LDevID) or HTTP Basic "
            "(device serial and enrollment secret)",
        )
    return credential


@dataclass
class _Attempt:
    """What a refusal is audited under, as far as the enrollment got (owned by one `enroll` call)."""

    subject: str
    credential: str


class EnrollmentService:
    """Enrollments for one authority (and its registry, when onboarding is served); `close()` it."""

    def __init__(
        self,
        authority: Authority,
        onboarding: Onboarding | None = None,
        *,
        failures: FailedAuthentications | None = None,
    ) -> None:
        self.authority = authority
        self.onboarding = onboarding
        self.failures = failures or FailedAuthentications()
        self._decide_on_loop = authority.engine.dialect.name == "sqlite"
        self._workers = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="devid-enroll")

    async def enroll(self, request: EnrollRequest) -> EnrollResult:
        """Issue what the rules allow (or a pending result awaiting approval); raise the refusal,
        audited, otherwise. RateLimited (429) once the client failed authentication too often."""
        now = self.authority.clock.now()
        closed = self.failures.closed(now)
        if closed:
            await asyncio.to_thread(self._append, closed)
        credential = request.credential
        if isinstance(credential, SecretCredential):
            attempt = _Attempt(credential.serial[:64], "enrollment-secret")
        else:
            attempt = _Attempt(credential.fingerprint, "certificate")
        claimed = attempt.subject  # the identity claimed, before authentication names the device
        self.failures.check(request.peer, claimed, now)
        try:
            if (
                self._decide_on_loop
                and isinstance(credential, CertificateCredential)
                and not self._registry_writes()
            ):
                decision = self._decide(request, attempt)
            else:
                loop = asyncio.get_running_loop()
                decision = await loop.run_in_executor(self._workers, self._decide, request, attempt)
            if decision.request is None:
                return decision.result(None)
            future = committer(self.authority).submit(decision.request, request.actor)
            issued = await asyncio.wrap_future(future)
            return decision.result(issued)
        except DevidError as exc:
            if not exc.audited and self._audit_alone(exc, request.peer, claimed):
                action, detail = (
                    f"{request.protocol}.{request.operation.value}",
                    {"credential": attempt.credential},
                )
                await asyncio.to_thread(
                    self.authority.record_refusal, exc, action, attempt.subject, request.actor, detail
                )
            raise

    def ca_certificates(self, policy: LabelPolicy) -> list[x509.Certificate]:
        """The CA certificates a device of `policy`'s label needs (EST `cacerts`, EST-coaps `crts`):
        the issuing CA and the root; during a CA rotation's overlap, the issuing CA being retired
        too (after the new one), so a device still holding a certificate of it finds its chain
        (RFC 7030 4.1.3)."""
        authority = self.authority
        issuers = authority.issuers_of(authority.issuer_for(policy.profile).role)
        return [*(c for ca in issuers for c in authority.chain(ca.name)), authority.root]

    def close(self) -> None:
        """Write the failure aggregates still open and stop the worker threads."""
        self._workers.shutdown(wait=True)
        pending = self.failures.drain()
        if pending:
            self._append(pending)

    def _decide(self, request: EnrollRequest, attempt: _Attempt) -> Decision:
        authority, credential = self.authority, request.credential
        policy = authority.label_policy(request.label)
        if isinstance(credential, SecretCredential):
            check_secret(authority, credential)
            return decide_with_secret(
                authority, policy, request.operation, credential, request.csr, allow_rsa=request.allow_rsa
            )
        identity = identify(authority, credential, onboarding=self.onboarding)
        attempt.subject, attempt.credential = identity.device_serial, identity.profile.value
        check_standing(authority, identity)
        return decide_with_certificate(
            authority,
            policy,
            request.operation,
            identity,
            request.csr,
            self.onboarding,
            request.region,
            allow_rsa=request.allow_rsa,
        )

    def _registry_writes(self) -> bool:
        """Whether an enrollment may write to the registry now (a manufacturer or an enrollment
        exists): then it is decided off the event loop."""
        return self.onboarding is not None and self.onboarding.active()

    def _audit_alone(self, error: DevidError, peer: str | None, claimed: str) -> bool:
        """Whether a refusal gets its own audit event: a failed authentication only when it is the
        first of its (peer, identity) pair in the window (the rest go into the aggregate)."""
        if not isinstance(error, (AuthenticationRequired, CredentialRefused)):
            return True
        return self.failures.failed(peer, claimed, error.code, self.authority.clock.now())

    def _append(self, events: list[audit.Event]) -> None:
        engine = self.authority.engine
        with writing(engine) as conn:
            audit.append(conn, events, self.authority.clock.now())
