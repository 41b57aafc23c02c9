"""counters: certificates by (profile, status, expiry day), devices by state per hub,
enrollment and manufacturer, and public keys shared by devices, kept by triggers

Revision ID: 0010
Revises: 0009

The dashboard read its counts by scanning the certificates (one grouped pass per page view,
seconds at 1M rows) and `devid health` the whole public-key index; these tables are filled from
the existing rows here and kept from then on by triggers (`devid.store.counters`) in the
transaction of every change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from devid.store import counters

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificate_counts",
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expiry", sa.Date(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("profile", "status", "expiry"),
    )
    op.create_table(
        "device_counts",
        sa.Column("dimension", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("dimension", "ref", "state"),
    )
    op.create_table(
        "shared_public_keys",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint"),
    )
    conn = op.get_bind()
    counters.rebuild(conn)
    counters.install(conn)


def downgrade() -> None:
    counters.uninstall(op.get_bind())
    op.drop_table("shared_public_keys")
    op.drop_table("device_counts")
    op.drop_table("certificate_counts")
