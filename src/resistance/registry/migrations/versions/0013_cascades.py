"""Cascades: a bridge on a domestic address and the exit abroad it relays to (issue 24).

``proxies.cascade_role`` is "exit" (never published nor handed out, paid
through its bridges), "bridge" or null (an ordinary proxy);
``proxies.exit_id`` is a bridge's exit.  A grant round splits a bridge's
award between its operator and its exit's (``cascade_exit_bp``).

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.add_column(sa.Column("cascade_role", sa.String(8), nullable=True))
        batch.add_column(sa.Column("exit_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_proxies_exit_id", "proxies", ["exit_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_proxies_exit_id", ["exit_id"])


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_index("ix_proxies_exit_id")
        batch.drop_constraint("fk_proxies_exit_id", type_="foreignkey")
        batch.drop_column("exit_id")
        batch.drop_column("cascade_role")
