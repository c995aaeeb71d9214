"""AmneziaWG endpoints: WireGuard servers whose datagrams DPI does not recognise.

An AmneziaWG endpoint is a row of ``proxies`` with protocols ["amneziawg"]:
registered, probed, rolled up and paid as a WireGuard endpoint, with the
obfuscation parameters its handshake needs (Jc..H4, I1..I5 as
:class:`resistance.vpn.amnezia.AmneziaParams` writes them).  Probes get them
in their assignment; the directory never carries them.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("awg_params", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("awg_params")
