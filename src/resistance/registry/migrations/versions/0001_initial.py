"""Operators, API tokens, proxies, statement nonces, publications.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("payout_address", sa.String(100), nullable=True),
        sa.Column("payout_type", sa.String(16), nullable=True),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False, index=True),
        sa.Column(
            "operator_id",
            sa.Integer(),
            sa.ForeignKey("operators.id", ondelete="CASCADE"),
            nullable=True,
            index=True,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "proxies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "operator_id",
            sa.Integer(),
            sa.ForeignKey("operators.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("host", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("network", sa.String(64), nullable=False, index=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("protocols", sa.JSON(), nullable=False),
        sa.Column("probe_user", sa.String(255), nullable=False),
        sa.Column("probe_password", sa.String(255), nullable=False),
        sa.Column("credentials", sa.JSON(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("registered_at", sa.BigInteger(), nullable=False),
        sa.Column("verified_at", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("host", "port", name="uq_proxies_endpoint"),
    )
    op.create_table(
        "statement_nonces",
        sa.Column("nonce", sa.String(32), primary_key=True),
        sa.Column("seen_at", sa.BigInteger(), nullable=False, index=True),
    )
    op.create_table(
        "publications",
        sa.Column("serial", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("published_at", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("publications", "statement_nonces", "proxies", "api_tokens", "operators"):
        op.drop_table(table)
