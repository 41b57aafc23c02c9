"""scale indexes, certified public keys, token-signing keys in the store

Revision ID: 0005
Revises: 0004

(filter, id) indexes for the filtered listings and the hub's device count, which scanned their
table (50-180 ms at 1M certificates, growing linearly); the SHA-256 of each certificate's public
key (backfilled from the stored certificates) so a key certified for one device is refused to
another; and the token-signing keys with their rotation state, shared by every host on the store.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import devid.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BACKFILL_BATCH = 5000


def upgrade() -> None:
    op.create_index("ix_devices_state_id", "devices", ["state", "id"])
    op.create_index("ix_devices_hub_id", "devices", ["hub_id", "id"])
    op.create_index("ix_devices_manufacturer_id", "devices", ["manufacturer_id", "id"])
    op.create_index("ix_certificates_profile_id", "certificates", ["profile", "id"])
    # A device's valid certificates (what a renewal supersedes) without reading every certificate
    # it ever held: a device renewing for years, or a bench client, holds hundreds.
    op.create_index("ix_certificates_device_status", "certificates", ["device_id", "status"])
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_key_fingerprint", sa.String(length=64), nullable=True))
    _backfill_public_keys()
    op.create_index("ix_certificates_public_key", "certificates", ["public_key_fingerprint"])
    op.create_table(
        "token_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("encrypted_key", sa.LargeBinary(), nullable=True),
        sa.Column("is_current", sa.Boolean(), nullable=True),
        sa.Column("created_at", devid.store.models.UTCDateTime(), nullable=False),
        sa.Column("retired_at", devid.store.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("label"),
        sa.UniqueConstraint("kid"),
        sa.UniqueConstraint("is_current"),
    )


def _backfill_public_keys() -> None:
    conn = op.get_bind()
    certs = sa.table(
        "certificates",
        sa.column("id", sa.Integer()),
        sa.column("der", sa.LargeBinary()),
        sa.column("public_key_fingerprint", sa.String()),
    )
    update = (
        sa.update(certs)
        .where(certs.c.id == sa.bindparam("b_id"))
        .values(public_key_fingerprint=sa.bindparam("b_fp"))
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(certs.c.id, certs.c.der)
            .where(certs.c.id > after)
            .order_by(certs.c.id)
            .limit(_BACKFILL_BATCH)
        ).all()
        if not rows:
            return
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        conn.execute(
            update,
            [
                {
                    "b_id": row.id,
                    "b_fp": hashlib.sha256(
                        x509.load_der_x509_certificate(row.der)
                        .public_key()
                        .public_bytes(serialization.Encoding.DER, spki)
                    ).hexdigest(),
                }
                for row in rows
            ],
        )
        after = rows[-1].id


def downgrade() -> None:
    op.drop_table("token_keys")
    op.drop_index("ix_certificates_public_key", table_name="certificates")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_column("public_key_fingerprint")
    op.drop_index("ix_certificates_profile_id", table_name="certificates")
    op.drop_index("ix_certificates_device_status", table_name="certificates")
    op.drop_index("ix_devices_manufacturer_id", table_name="devices")
    op.drop_index("ix_devices_hub_id", table_name="devices")
    op.drop_index("ix_devices_state_id", table_name="devices")
