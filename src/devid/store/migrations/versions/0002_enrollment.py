"""enrollment

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import devid.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enrollment_secrets",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("used_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_hash"),
    )
    with op.batch_alter_table("enrollment_secrets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_enrollment_secrets_device_id"), ["device_id"], unique=False)

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_at", devid.store.models.UTCDateTime(), nullable=True))

    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("approval_requested_at", devid.store.models.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("approved_at", devid.store.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("approved_at")
        batch_op.drop_column("approval_requested_at")

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_column("status_at")

    with op.batch_alter_table("enrollment_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_secrets_device_id"))

    op.drop_table("enrollment_secrets")
