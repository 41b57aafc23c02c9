"""registry

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import devid.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("rate_per_minute", sa.Integer(), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("primary_der", sa.LargeBinary(), nullable=True),
        sa.Column("primary_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("secondary_der", sa.LargeBinary(), nullable=True),
        sa.Column("secondary_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("certificate_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("policy", sa.Text(), nullable=True),
        sa.Column("allocation", sa.String(length=32), nullable=False),
        sa.Column("hubs", sa.Text(), nullable=False),
        sa.Column("webhook_url", sa.String(length=512), nullable=True),
        sa.Column("reprovision", sa.String(length=16), nullable=False),
        sa.Column("properties", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "name", name="uq_enrollments_kind_name"),
    )
    op.create_table(
        "event_sinks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("topic", sa.String(length=256), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "hubs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=512), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("latencies", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "manufacturers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("auto_register", sa.Boolean(), nullable=False),
        sa.Column("auto_activate", sa.Boolean(), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "registration_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("used_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.Column("manufacturer_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["manufacturer_id"],
            ["manufacturers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("manufacturer_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("enrollment_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("hub_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("idevid_fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("properties", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("registered_at", devid.store.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))
        batch_op.create_foreign_key("fk_devices_hub", "hubs", ["hub_id"], ["id"])
        batch_op.create_foreign_key("fk_devices_manufacturer", "manufacturers", ["manufacturer_id"], ["id"])
        batch_op.create_foreign_key("fk_devices_enrollment", "enrollments", ["enrollment_id"], ["id"])
        batch_op.create_index("ix_devices_idevid_fingerprint", ["idevid_fingerprint"], unique=False)
    op.execute(sa.text("INSERT INTO registry_state (id, generation) VALUES (1, 0)"))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index("ix_devices_idevid_fingerprint")
        batch_op.drop_constraint("fk_devices_enrollment", type_="foreignkey")
        batch_op.drop_constraint("fk_devices_manufacturer", type_="foreignkey")
        batch_op.drop_constraint("fk_devices_hub", type_="foreignkey")
        batch_op.drop_column("version")
        batch_op.drop_column("registered_at")
        batch_op.drop_column("properties")
        batch_op.drop_column("idevid_fingerprint")
        batch_op.drop_column("hub_id")
        batch_op.drop_column("enrollment_id")
        batch_op.drop_column("manufacturer_id")

    op.drop_table("registration_codes")
    op.drop_table("registry_state")
    op.drop_table("manufacturers")
    op.drop_table("hubs")
    op.drop_table("events")
    op.drop_table("event_sinks")
    op.drop_table("enrollments")
    op.drop_table("api_tokens")
