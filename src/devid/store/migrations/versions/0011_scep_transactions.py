"""scep transactions: PKCSReqs answered PENDING, for the requester's CertPoll

Revision ID: 0011
Revises: 0010

A SCEP client whose PKCSReq was answered PENDING polls with CertPoll (RFC 8894 3.3.3), naming only
its transactionID: the request it stands for is kept here, found by transaction and requester key,
in the database so that any worker or a restarted server answers it. The CSR carries the
enrollment secret (its challengePassword) and is stored sealed under the credential key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import devid.store.models

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scep_transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("csr", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("requester", "transaction_id"),
    )


def downgrade() -> None:
    op.drop_table("scep_transactions")
