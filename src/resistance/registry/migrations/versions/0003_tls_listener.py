"""A node's TLS listener: its port and certificate pin, for socks5s:// from the directory.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("tls_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tls_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("tls_sha256")
        batch.drop_column("tls_port")
