"""MTProto proxies registered, measured and paid like SOCKS5 nodes.

An MTProto proxy is a row of ``proxies`` with protocols ["mtproto"]; it adds
the mode users connect with (``classic``, ``dd`` or ``ee``), the fake-TLS
domain of an ``ee`` proxy, and the 16-byte key (hex) the registry proved
control with and probes check with.  That key is never published.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("mtproto_mode", sa.String(8), nullable=True))
        batch.add_column(sa.Column("mtproto_domain", sa.String(253), nullable=True))
        batch.add_column(sa.Column("mtproto_key", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("mtproto_key")
        batch.drop_column("mtproto_domain")
        batch.drop_column("mtproto_mode")
