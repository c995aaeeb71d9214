"""Probes that say why: the blocking mechanism a failed check's controls named.

``probe_results.mechanism`` is the mechanism of one result (null for results
without a diagnosis: older probes, successes); ``probe_evidence.mechanism``
is the latest one per (proxy, probe): ``ok``, a mechanism, or null, and
``probe_evidence.transports`` the same for the node's other transports
measured beside it (``{"tls": "ok"}``); the directory's per-network
``reach`` reads both.  The evidence itself stays in the
batch body, kept verbatim and signed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("probe_results") as batch:
        batch.add_column(sa.Column("mechanism", sa.String(24), nullable=True))
    with op.batch_alter_table("probe_evidence") as batch:
        batch.add_column(sa.Column("mechanism", sa.String(24), nullable=True))
        batch.add_column(sa.Column("transports", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("probe_evidence") as batch:
        batch.drop_column("transports")
        batch.drop_column("mechanism")
    with op.batch_alter_table("probe_results") as batch:
        batch.drop_column("mechanism")
