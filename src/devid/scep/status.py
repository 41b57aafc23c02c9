"""SCEP's message types, statuses and failInfo values (RFC 8894 3.2.1), and its two ways to fail."""

from __future__ import annotations

from enum import StrEnum


class MessageType(StrEnum):
    CERT_REP = "3"
    RENEWAL_REQ = "17"
    PKCS_REQ = "19"
    CERT_POLL = "20"


class PkiStatus(StrEnum):
    SUCCESS = "0"
    FAILURE = "2"
    PENDING = "3"


class FailInfo(StrEnum):
    """RFC 8894 3.2.1.4."""

    BAD_ALG = "0"
    BAD_MESSAGE_CHECK = "1"
    BAD_REQUEST = "2"
    BAD_TIME = "3"
    BAD_CERT_ID = "4"


class ScepError(Exception):
    """A request answered with a CertRep FAILURE (when it could be read far enough to answer it)."""

    def __init__(self, fail_info: FailInfo, message: str) -> None:
        super().__init__(message)
        self.fail_info = fail_info
        self.message = message


class UnreadableMessage(Exception):
    """Not a SCEP pkiMessage at all (no signer, transaction or nonce to answer to): HTTP 400."""
