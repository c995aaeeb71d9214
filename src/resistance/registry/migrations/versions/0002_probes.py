"""Probe accounts, signed result batches, raw results, evidence, rollups, verdicts, blocklists.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _proxy_fk(*, index: bool = False, primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "proxy_id",
        sa.Integer(),
        sa.ForeignKey("proxies.id", ondelete="CASCADE"),
        nullable=False,
        index=index,
        primary_key=primary_key,
    )


def _probe_fk(*, index: bool = False, primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "probe_id",
        sa.Integer(),
        sa.ForeignKey("probe_accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=index,
        primary_key=primary_key,
    )


def upgrade() -> None:
    op.create_table(
        "probe_accounts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("country", sa.String(2), nullable=False, index=True),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("probe_id", sa.Integer(), nullable=True))
        batch.create_index("ix_api_tokens_probe_id", ["probe_id"])
        batch.create_foreign_key(
            "fk_api_tokens_probe_id", "probe_accounts", ["probe_id"], ["id"], ondelete="CASCADE"
        )
    op.create_table(
        "probe_batches",
        sa.Column("batch_id", sa.String(32), primary_key=True),
        _probe_fk(index=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False, index=True),
        sa.Column("result_count", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    op.create_table(
        "probe_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "batch_id",
            sa.String(32),
            sa.ForeignKey("probe_batches.batch_id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _probe_fk(),
        _proxy_fk(),
        sa.Column("measured_at", sa.BigInteger(), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("failure", sa.String(16), nullable=True),
        sa.Column("detail", sa.String(128), nullable=False),
        sa.Column("connect_us", sa.BigInteger(), nullable=True),
        sa.Column("ttfb_us", sa.BigInteger(), nullable=True),
        sa.Column("throughput_kbps", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_probe_results_proxy_at", "probe_results", ["proxy_id", "measured_at"])
    op.create_table(
        "probe_evidence",
        _proxy_fk(primary_key=True),
        _probe_fk(primary_key=True),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("last_at", sa.BigInteger(), nullable=False),
        sa.Column("last_ok", sa.Boolean(), nullable=False),
        sa.Column("fail_streak", sa.Integer(), nullable=False),
        sa.Column("fail_windows", sa.JSON(), nullable=False),
    )
    op.create_table(
        "probe_rollups",
        sa.Column("id", sa.Integer(), primary_key=True),
        _proxy_fk(index=True),
        sa.Column("day", sa.String(10), nullable=False, index=True),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.Column("latency_p50_ms", sa.Integer(), nullable=True),
        sa.Column("latency_p90_ms", sa.Integer(), nullable=True),
        sa.Column("throughput_hist", sa.JSON(), nullable=False),
        sa.Column("throughput_p50_kbps", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("proxy_id", "day", "country", "control", name="uq_probe_rollups_key"),
    )
    op.create_table(
        "proxy_verdicts",
        _proxy_fk(primary_key=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("blocked_in", sa.JSON(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "proxy_verdict_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        _proxy_fk(index=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("blocked_in", sa.JSON(), nullable=False),
        sa.Column("previous", sa.String(16), nullable=False),
    )
    op.create_table(
        "blocklist_imports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("updated", sa.String(64), nullable=True),
        sa.Column("imported_at", sa.BigInteger(), nullable=False),
        sa.Column("prefixes", sa.Integer(), nullable=False),
        sa.Column("ranges", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
    )
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
    op.create_table(
        "proxy_blocklist_flags",
        _proxy_fk(primary_key=True),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("checked_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "proxy_blocklist_flags",
        "blocklist_ranges",
        "blocklist_imports",
        "proxy_verdict_history",
        "proxy_verdicts",
        "probe_rollups",
        "probe_evidence",
        "probe_results",
        "probe_batches",
    ):
        op.drop_table(table)
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_probe_id", type_="foreignkey")
        batch.drop_index("ix_api_tokens_probe_id")
        batch.drop_column("probe_id")
    op.drop_table("probe_accounts")
