"""SCEP transactions awaiting approval (RFC 8894 3.3.3): a PKCSReq answered PENDING is kept so the
requester's CertPoll, which names only its transactionID and is signed by the same key, completes
it through the enrollment service once an operator approved the device.

Kept in the store (any worker, any restart answers the poll), found by transaction and requester
key together, the CSR sealed under the credential key as it holds the enrollment secret. A
transaction lives as long as an enrollment secret can (`SECRET_TTL`): older ones are dropped
whenever one is added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from devid.authority.core import Authority
from devid.authority.credential_key import Purpose
from devid.authority.devices import SECRET_TTL
from devid.store.engine import reading, writing
from devid.store.models import scep_transactions


@dataclass(frozen=True)
class PendingTransaction:
    """A PKCSReq held until approval: the label it was sent to and its CSR (DER)."""

    label: str
    csr: bytes


def requester(key: x509.Certificate) -> str:
    """The requester of a transaction: SHA-256 of its signing key's SubjectPublicKeyInfo, hex."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _context(transaction_id: str, who: str) -> bytes:
    return f"{who}/{transaction_id}".encode()


def remember(authority: Authority, transaction_id: str, who: str, label: str, csr: bytes) -> None:
    """Keep a PENDING PKCSReq (once: a PKCSReq sent again keeps the first)."""
    now = authority.clock.now()
    sealed = authority.credentials.seal(Purpose.SCEP_TRANSACTION, csr, _context(transaction_id, who))
    with writing(authority.engine) as conn:
        conn.execute(delete(scep_transactions).where(scep_transactions.c.created_at < now - SECRET_TTL))
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(scep_transactions).values(
                        transaction_id=transaction_id, requester=who, label=label, csr=sealed, created_at=now
                    )
                )
        except IntegrityError:
            pass  # kept already: a re-sent PKCSReq, or another worker first (unique requester + id)


def pending(authority: Authority, transaction_id: str, who: str) -> PendingTransaction | None:
    """The transaction `who` started, None when there is none (unknown, completed or expired)."""
    with reading(authority.engine) as conn:
        row = conn.execute(
            select(scep_transactions.c.label, scep_transactions.c.csr, scep_transactions.c.created_at).where(
                scep_transactions.c.requester == who, scep_transactions.c.transaction_id == transaction_id
            )
        ).first()
    if row is None or row.created_at < authority.clock.now() - SECRET_TTL:
        return None
    csr = authority.credentials.open(Purpose.SCEP_TRANSACTION, row.csr, _context(transaction_id, who))
    return PendingTransaction(row.label, csr)


def forget(authority: Authority, transaction_id: str, who: str) -> None:
    """Drop a transaction that completed (issued or refused)."""
    with writing(authority.engine) as conn:
        conn.execute(
            delete(scep_transactions).where(
                scep_transactions.c.requester == who, scep_transactions.c.transaction_id == transaction_id
            )
        )
