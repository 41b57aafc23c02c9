"""sightings: certificates seen connected at gateways, for the revoked-still-connected check

Revision ID: 0012
Revises: 0011

Gateways report the certificates of the sessions they carried (`POST /api/v1/gateways/{name}/
sightings`); a row per (gateway, certificate) keeps when it was first and last seen, and when it
was last seen connected although revoked, which `devid health` reads from its own index; a
gateway's report drops its rows unseen for a month, by (gateway, last seen).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import devid.store.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sightings",
        sa.Column("gateway", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("first_seen", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("last_seen", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("revoked_seen_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"]),
        sa.PrimaryKeyConstraint("gateway", "certificate_id"),
    )
    op.create_index("ix_sightings_certificate", "sightings", ["certificate_id"])
    op.create_index("ix_sightings_revoked_seen", "sightings", ["revoked_seen_at"])
    op.create_index("ix_sightings_gateway_last_seen", "sightings", ["gateway", "last_seen"])


def downgrade() -> None:
    op.drop_index("ix_sightings_gateway_last_seen", table_name="sightings")
    op.drop_index("ix_sightings_revoked_seen", table_name="sightings")
    op.drop_index("ix_sightings_certificate", table_name="sightings")
    op.drop_table("sightings")
