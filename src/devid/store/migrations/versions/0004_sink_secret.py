"""sink secret

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event_sinks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("event_sinks", schema=None) as batch_op:
        batch_op.drop_column("secret")
