"""Probe liveness for sharding (issue 25): when each probe last sent a batch and
last pulled its assignment.

``probe_accounts.last_batch_at`` decides which probes are live, so that a
silent probe's share of the proxies goes to the next probes in rank within
one round (see :mod:`resistance.registry.shard`); ``last_assignment_at`` tells
a probe that pulls work but never reports from one that is gone.  Both are
null until the first batch or pull.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("probe_accounts") as batch:
        batch.add_column(sa.Column("last_batch_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_assignment_at", sa.BigInteger(), nullable=True))
    # Probes that sent batches before this migration are live from their last one.
    op.execute(
        "UPDATE probe_accounts SET last_batch_at = (SELECT max(received_at) FROM probe_batches"
        " WHERE probe_batches.probe_id = probe_accounts.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("probe_accounts") as batch:
        batch.drop_column("last_assignment_at")
        batch.drop_column("last_batch_at")
