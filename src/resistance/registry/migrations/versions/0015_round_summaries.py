"""Grant rounds' inputs summarized for views (issue 25).

``grant_rounds.summary`` holds what a round's views show of its inputs (the
number of rollups, the signing key ids, the carried amounts) so they no longer
parse the whole inputs document (866 MB at 100,000 proxies x 30 days), and
``grant_round_proxies`` the inputs summed per proxy in page order, so the
funder's round page reads one page of them. Rounds computed before keep a null
summary and no rows; their views read the inputs as before.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grant_rounds") as batch:
        batch.add_column(sa.Column("summary", sa.Text(), nullable=True))
    op.create_table(
        "grant_round_proxies",
        sa.Column(
            "round_pk",
            sa.Integer(),
            sa.ForeignKey("grant_rounds.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("proxy_id", sa.String(32), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("control_attempts", sa.BigInteger(), nullable=False),
        sa.Column("control_successes", sa.BigInteger(), nullable=False),
        sa.Column("target_attempts", sa.BigInteger(), nullable=False),
        sa.Column("target_successes", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("grant_round_proxies")
    with op.batch_alter_table("grant_rounds") as batch:
        batch.drop_column("summary")
