"""credential macs

API tokens, enrollment secrets and registration codes are stored as HMAC-SHA256 under the
authority's credential key from now on. A migration has no key, so it cannot compute those MACs:
rows written before stay unusable, and devid refuses them with a message to make new ones. Their
tokens and secrets were stored as SHA-256 hashes; registration codes were stored in clear, so this
migration replaces each by its SHA-256 hash (the same recognisable legacy form): no usable code is
left in the store. Nothing to undo on downgrade (a hash does not give the code back).

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

_codes = sa.table("registration_codes", sa.column("id", sa.Integer), sa.column("code", sa.String))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(_codes.c.id, _codes.c.code)).all():
        digest = hashlib.sha256(row.code.encode()).hexdigest()
        conn.execute(sa.update(_codes).where(_codes.c.id == row.id).values(code=digest))


def downgrade() -> None:
    pass
