"""revocation: certificate indices, shards and revocation state; revocations; published status data

Revision ID: 0008
Revises: 0007

Certificates issued before this revision keep a NULL index and shard: they are in no filter and
no shard CRL, but in their CA's full CRL and answered by OCSP like every other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import devid.store.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("selector", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("certificates", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "published",
        sa.Column("id", _BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=160), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("base_number", sa.BigInteger(), nullable=True),
        sa.Column("this_update", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("next_update", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "scope", "number", name="uq_published_kind_scope_number"),
    )
    # Plain ADD COLUMNs: a batch (copy-and-move) of `cas` or `certificates` would drop a table
    # other rows refer to, and copy every certificate of a large store.
    for column in ("next_index", "revocation_gen", "crl_number"):
        op.add_column("cas", sa.Column(column, sa.BigInteger(), server_default="0", nullable=False))
    op.add_column("cas", sa.Column("crl_shards", sa.Integer(), server_default="16", nullable=False))
    op.add_column("certificates", sa.Column("idx", sa.BigInteger(), nullable=True))
    op.add_column("certificates", sa.Column("shard", sa.Integer(), nullable=True))
    op.add_column("certificates", sa.Column("revoked_at", devid.store.models.UTCDateTime(), nullable=True))
    op.add_column("certificates", sa.Column("reason", sa.Integer(), nullable=True))
    op.add_column("certificates", sa.Column("revocation_id", sa.BigInteger(), nullable=True))
    op.add_column("certificates", sa.Column("held_status", sa.String(length=16), nullable=True))
    op.add_column("certificates", sa.Column("status_gen", sa.BigInteger(), nullable=True))
    op.create_index("ix_certificates_issuer_idx", "certificates", ["issuer_id", "idx"], unique=True)
    op.create_index("ix_certificates_issuer_gen", "certificates", ["issuer_id", "status_gen"])
    op.create_index("ix_certificates_revocation", "certificates", ["revocation_id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_revocation", table_name="certificates")
    op.drop_index("ix_certificates_issuer_gen", table_name="certificates")
    op.drop_index("ix_certificates_issuer_idx", table_name="certificates")
    for column in ("status_gen", "held_status", "revocation_id", "reason", "revoked_at", "shard", "idx"):
        op.drop_column("certificates", column)
    for column in ("crl_shards", "crl_number", "revocation_gen", "next_index"):
        op.drop_column("cas", column)
    op.drop_table("published")
    op.drop_table("revocations")
