"""devid's error types: each carries a stable `code` and a message naming the problem.

Protocol layers map the class to a status (`devid.web.errors.status_for`: PolicyError 400/403,
AuthenticationRequired 401, NotFound 404, Conflict 409, RateLimited 429) and the CLI prints the
message and exits non-zero; nobody needs to parse message text.
"""

from __future__ import annotations


class DevidError(Exception):
    """Base of every error devid reports to a person or a peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self._audited = False

    def __str__(self) -> str:
        return self.message

    @property
    def audited(self) -> bool:
        """Whether this refusal is already in the audit log (`Authority.record_refusal` marks it),
        so that a caller further up does not record it a second time."""
        return self._audited

    def mark_audited(self) -> None:
        self._audited = True


class PolicyError(DevidError, ValueError):
    """A request refused by policy (bad CSR, wrong key type, asks for powers it may not have)."""


class RequestInvalid(PolicyError):
    """The request itself is malformed or asks for something never offered (HTTP 400)."""


class BodyTooLarge(RequestInvalid):
    """The request body is over the endpoint's limit (HTTP 413)."""


class AuthenticationRequired(DevidError):
    """No usable credential was presented, or a password-like one was wrong (HTTP 401 with a
    challenge)."""


class CredentialRefused(PolicyError):
    """A presented credential does not authenticate a device: unknown, not issued by a trusted CA,
    outside its validity, revoked or superseded, or not the identity it names (HTTP 403)."""


class RateLimited(DevidError):
    """Too many calls or failed attempts: HTTP 429 with Retry-After (whole seconds)."""

    def __init__(self, who: str, retry_after: int) -> None:
        super().__init__("rate-limited", f"{who} is over its rate limit; retry in {retry_after} s")
        self.retry_after = retry_after


class StoreUnavailable(DevidError):
    """The database cannot be reached now (stopped, restarting, failing over, every pooled
    connection busy): HTTP 503 with Retry-After. The transaction did not commit, so the request may
    be sent again as it is."""

    def __init__(self, detail: str, retry_after: int = 2) -> None:
        super().__init__(
            "store-unavailable", f"the store is unavailable ({detail}); retry in {retry_after} s"
        )
        self.retry_after = retry_after


class ConfigError(DevidError):
    """The devid home or its configuration is missing, incomplete or inconsistent."""


class KeyAccessError(DevidError):
    """A key cannot be opened: wrong or missing passphrase, missing token, wrong PIN."""


class KeyExportRefused(DevidError):
    """A private key held by a secure element or token was asked to leave it."""


class NotFoundError(DevidError):
    """A named object (certificate, device, CA) does not exist."""


class ConflictError(DevidError):
    """The request conflicts with existing state (duplicate device serial, existing home)."""


class C509Error(PolicyError):
    """A C509 certificate that cannot be read, or an X.509 certificate C509 cannot carry byte for
    byte. `part` names the field at fault (e.g. `extensions`, `issuer`, `signatureValue`)."""

    def __init__(self, code: str, part: str, message: str) -> None:
        super().__init__(code, f"C509 {part}: {message}")
        self.part = part


class C509Malformed(C509Error):
    """The bytes are not a well-formed C509 certificate (bad CBOR, wrong types, truncated)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__("c509-malformed", part, message)


class C509Unsupported(C509Error):
    """The X.509 certificate has something C509 type 3 cannot re-encode so that the DER comes back
    byte-exact (e.g. a multi-valued RDN, a teletexString issuer, a time before 1970)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__("c509-unsupported", part, message)


class StatusAnswerInvalid(PolicyError):
    """A compact status answer (COSE_Sign1) that does not verify: bad CBOR, another algorithm or
    signer, a bad signature, another serial, or outside its thisUpdate..nextUpdate window."""

    def __init__(self, message: str) -> None:
        super().__init__("status-invalid", message)
