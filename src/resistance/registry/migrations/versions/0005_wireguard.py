"""WireGuard endpoints registered like SOCKS5 nodes, measured and paid alike.

A WireGuard endpoint is a row of ``proxies`` with protocols ["wireguard"], so
rollups, verdicts and grants treat it as any proxy; it adds the server's
WireGuard public key and the probe keys its operator added as probe peers.
Probe accounts get the WireGuard key their agent announces.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("wg_public_key", sa.String(44), nullable=True))
        batch.add_column(sa.Column("wg_probe_keys", sa.JSON(), nullable=True))
    with op.batch_alter_table("probe_accounts") as batch:
        batch.add_column(sa.Column("wg_public_key", sa.String(44), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("probe_accounts") as batch:
        batch.drop_column("wg_public_key")
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("wg_probe_keys")
        batch.drop_column("wg_public_key")
