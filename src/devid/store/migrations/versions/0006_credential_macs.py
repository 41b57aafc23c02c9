"""credential macs

Credentials are kept under the authority's credential key from now on: API tokens, enrollment
secrets and registration codes as HMAC-SHA256 values, event sinks' URLs and signing secrets sealed.
A migration has no key, so it can compute neither; what it does is leave nothing usable in clear:

- API tokens and enrollment secrets were stored as SHA-256 hashes: they stay, and devid refuses
  them with a message to make new ones.
- Registration codes were stored in clear: each is replaced by its SHA-256 hash (the same legacy
  form, refused the same way).
- Event sinks kept their URL password and webhook signing key in clear: both are erased (the URL's
  password masked), and the sink is disabled with a note to remove it and add it again.

Nothing to undo on downgrade: a hash does not give a secret back.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_codes = sa.table("registration_codes", sa.column("id", sa.Integer), sa.column("code", sa.String))
_sinks = sa.table(
    "event_sinks",
    sa.column("id", sa.Integer),
    sa.column("url", sa.String),
    sa.column("secret", sa.LargeBinary),
    sa.column("enabled", sa.Boolean),
    sa.column("last_error", sa.Text),
)
RE_ADD = (
    "added by an older devid, which kept its URL password and signing secret in clear: they were "
    "erased; remove this sink and add it again (devid events sink remove/add)"
)


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def upgrade() -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(_codes.c.id, _codes.c.code)).all():
        digest = hashlib.sha256(row.code.encode()).hexdigest()
        conn.execute(sa.update(_codes).where(_codes.c.id == row.id).values(code=digest))
    for row in conn.execute(sa.select(_sinks.c.id, _sinks.c.url)).all():
        conn.execute(
            sa.update(_sinks)
            .where(_sinks.c.id == row.id)
            .values(url=_masked(row.url), secret=None, enabled=False, last_error=RE_ADD)
        )


def downgrade() -> None:
    pass
