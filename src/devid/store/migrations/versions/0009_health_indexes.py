"""health indexes: expired-unrenewed certificates, shared keys and held approvals without a scan

Revision ID: 0009
Revises: 0008

`devid health` reads only what it finds: the (profile, status, expiry) index reaches the LDevIDs
that expired without being renewed (renewed ones are superseded); the public-key index gains the
device, so keys certified for several devices are counted from the index alone (it replaces the
key-only index, whose lookups it still serves: no more index writes per issuance than before, but
one); pending approvals are found by when they were requested.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_certificates_profile_status_expiry", "certificates", ["profile", "status", "not_after"]
    )
    op.create_index(
        "ix_certificates_public_key_device", "certificates", ["public_key_fingerprint", "device_id"]
    )
    op.drop_index("ix_certificates_public_key", table_name="certificates")
    op.create_index("ix_devices_approval_requested", "devices", ["approval_requested_at"])


def downgrade() -> None:
    op.drop_index("ix_devices_approval_requested", table_name="devices")
    op.create_index("ix_certificates_public_key", "certificates", ["public_key_fingerprint"])
    op.drop_index("ix_certificates_public_key_device", table_name="certificates")
    op.drop_index("ix_certificates_profile_status_expiry", table_name="certificates")
