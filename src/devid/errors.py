"""devid's error types: each carries a stable `code` and a message naming the problem.

Protocol layers map the class to a status (PolicyError 400/403, NotFound 404, Conflict 409) and
the CLI prints the message and exits non-zero; nobody needs to parse message text.
"""

from __future__ import annotations


class DevidError(Exception):
    """Base of every error devid reports to a person or a peer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class PolicyError(DevidError, ValueError):
    """A request refused by policy (bad CSR, wrong key type, asks for powers it may not have)."""


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
