"""Grant rounds kept by the registry: draft, approved (frozen), paid.

``grant_rounds`` holds each round's settings, inputs and result (canonical
JSON text), its state (digest once approved, txid and the paying transaction
once paid) and times; ``grant_carries`` the amounts below the minimum payout
that a paid round owes an operator, until a later approved round takes them in.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grant_rounds",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("round_id", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("target_country", sa.String(2), nullable=False, index=True),
        sa.Column("period_start", sa.String(10), nullable=False),
        sa.Column("period_end", sa.String(10), nullable=False),
        sa.Column("budget_sat", sa.BigInteger(), nullable=False),
        sa.Column("paid_sat", sa.BigInteger(), nullable=False),
        sa.Column("payouts", sa.Integer(), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("carry_ids", sa.JSON(), nullable=False),
        sa.Column("skipped_operators", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("txid", sa.String(64), nullable=True, unique=True),
        sa.Column("tx_hex", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("approved_at", sa.BigInteger(), nullable=True),
        sa.Column("paid_at", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "grant_carries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "source_round",
            sa.Integer(),
            sa.ForeignKey("grant_rounds.id", ondelete="RESTRICT"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "operator_id",
            sa.Integer(),
            sa.ForeignKey("operators.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("amount_sat", sa.BigInteger(), nullable=False),
        sa.Column(
            "consumed_by",
            sa.Integer(),
            sa.ForeignKey("grant_rounds.id", ondelete="RESTRICT"),
            nullable=True,
            index=True,
        ),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("grant_carries")
    op.drop_table("grant_rounds")
