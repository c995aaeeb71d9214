"""Blocklist history and proxy endpoints by DNS name (issue 25).

* ``blocklist_spans`` replaces ``blocklist_ranges``: each merged range is
  stored once with the import that added it (``first_import``) and the one
  that dropped it (``until_import``, null while current), so every import is
  a version whose ranges and diff stay retrievable.  The current ranges of
  ``blocklist_ranges`` are carried over as added by their import.
* ``blocklist_imports.added`` / ``removed``: the size of each version's diff.
* ``proxy_blocklist_flags.listed_since``: the import that blocked the proxy.
* ``proxies.host`` widens to a DNS name (253 characters) and
  ``proxies.addresses`` holds what the name resolved to when proof of
  control was made (null for an IP literal endpoint).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blocklist_spans",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("start_hex", sa.String(33), nullable=False),
        sa.Column("end_hex", sa.String(33), nullable=False),
        sa.Column("first_import", sa.Integer(), nullable=False),
        sa.Column("until_import", sa.Integer(), nullable=True),
    )
    op.create_index(
        "ix_blocklist_spans_until_start", "blocklist_spans", ["until_import", "start_hex"]
    )
    op.create_index(
        "ix_blocklist_spans_first_start", "blocklist_spans", ["first_import", "start_hex"]
    )
    op.execute(
        "INSERT INTO blocklist_spans (start_hex, end_hex, first_import, until_import) "
        "SELECT start_hex, end_hex, import_id, NULL FROM blocklist_ranges ORDER BY start_hex"
    )
    op.drop_table("blocklist_ranges")
    with op.batch_alter_table("blocklist_imports") as batch:
        batch.add_column(sa.Column("added", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("removed", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("proxy_blocklist_flags") as batch:
        batch.add_column(sa.Column("listed_since", sa.Integer(), nullable=True))
    with op.batch_alter_table("proxies") as batch:
        batch.alter_column("host", type_=sa.String(253), existing_type=sa.String(64))
        batch.add_column(sa.Column("addresses", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("proxies") as batch:
        batch.drop_column("addresses")
        batch.alter_column("host", type_=sa.String(64), existing_type=sa.String(253))
    with op.batch_alter_table("proxy_blocklist_flags") as batch:
        batch.drop_column("listed_since")
    with op.batch_alter_table("blocklist_imports") as batch:
        batch.drop_column("removed")
        batch.drop_column("added")
    op.create_table(
        "blocklist_ranges",
        sa.Column("start_hex", sa.String(33), primary_key=True),
        sa.Column("end_hex", sa.String(33), nullable=False),
        sa.Column(
            "import_id",
            sa.Integer(),
            sa.ForeignKey("blocklist_imports.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    # The old table held the current ranges only, each under the latest import.
    op.execute(
        "INSERT INTO blocklist_ranges (start_hex, end_hex, import_id) "
        "SELECT start_hex, end_hex, (SELECT MAX(id) FROM blocklist_imports) "
        "FROM blocklist_spans WHERE until_import IS NULL "
        "AND EXISTS (SELECT 1 FROM blocklist_imports)"
    )
    op.drop_index("ix_blocklist_spans_first_start", "blocklist_spans")
    op.drop_index("ix_blocklist_spans_until_start", "blocklist_spans")
    op.drop_table("blocklist_spans")
