"""Tokens that end, probes that speak only for themselves.

``api_tokens.revoked_at`` (set when a token is revoked or rotated away) and
``api_tokens.expires_at`` (a token's end, null for none): a token is
accepted only while neither has passed, checked against the database on
every request, so every registry process on the database refuses it at once.
``probe_accounts.wg_public_key`` becomes unique (a probe can no longer
announce another probe's WireGuard key); where two probes share one today,
all but the first lose it and must announce their own again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE probe_accounts SET wg_public_key = NULL WHERE wg_public_key IS NOT NULL "
        "AND id NOT IN (SELECT MIN(id) FROM probe_accounts WHERE wg_public_key IS NOT NULL "
        "GROUP BY wg_public_key)"
    )
    op.create_index(
        "uq_probe_accounts_wg_public_key", "probe_accounts", ["wg_public_key"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_probe_accounts_wg_public_key", table_name="probe_accounts")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
