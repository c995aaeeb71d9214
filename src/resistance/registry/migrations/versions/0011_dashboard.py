"""The dashboard's indexes and its per-day reachability totals kept by triggers.

``dashboard_daily_reach`` holds, per UTC day and vantage side (control or
inside), the sums of ``probe_rollups.attempts`` and ``successes``.  Summing
30 days of rollups for 100,000 proxies on every view of the reachability page
reads six million rows; this table holds sixty.  Triggers on
``probe_rollups`` keep it equal to that sum on every insert, update and
delete (also deletes cascaded from a proxy), in SQLite and PostgreSQL, so
no code path that writes rollups has to remember it; the migration fills it
from the rollups already stored.

Indexes: raw results by proxy and time (an operator's evidence page), verdict
changes by verdict and proxy (time to block), and the probes' evidence by
vantage and outcome (the network page), each of them an index-only read.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE FUNCTION dashboard_reach_apply() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE dashboard_daily_reach
       SET attempts = attempts - OLD.attempts, successes = successes - OLD.successes
     WHERE day = OLD.day AND control = OLD.control;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO dashboard_daily_reach (day, control, attempts, successes)
    VALUES (NEW.day, NEW.control, NEW.attempts, NEW.successes)
    ON CONFLICT (day, control) DO UPDATE
       SET attempts = dashboard_daily_reach.attempts + EXCLUDED.attempts,
           successes = dashboard_daily_reach.successes + EXCLUDED.successes;
  END IF;
  RETURN NULL;
END
$$ LANGUAGE plpgsql
"""
_PG_TRIGGER = """
CREATE TRIGGER dashboard_reach AFTER INSERT OR UPDATE OR DELETE ON probe_rollups
FOR EACH ROW EXECUTE FUNCTION dashboard_reach_apply()
"""
_SQLITE_ADD = """
  INSERT INTO dashboard_daily_reach (day, control, attempts, successes)
  VALUES (NEW.day, NEW.control, NEW.attempts, NEW.successes)
  ON CONFLICT (day, control) DO UPDATE
     SET attempts = attempts + excluded.attempts, successes = successes + excluded.successes;
"""
_SQLITE_SUBTRACT = """
  UPDATE dashboard_daily_reach
     SET attempts = attempts - OLD.attempts, successes = successes - OLD.successes
   WHERE day = OLD.day AND control = OLD.control;
"""
_SQLITE_TRIGGERS = (
    f"CREATE TRIGGER dashboard_reach_insert AFTER INSERT ON probe_rollups BEGIN {_SQLITE_ADD} END",
    "CREATE TRIGGER dashboard_reach_update AFTER UPDATE ON probe_rollups "
    f"BEGIN {_SQLITE_SUBTRACT} {_SQLITE_ADD} END",
    "CREATE TRIGGER dashboard_reach_delete AFTER DELETE ON probe_rollups "
    f"BEGIN {_SQLITE_SUBTRACT} END",
)
BACKFILL = """
INSERT INTO dashboard_daily_reach (day, control, attempts, successes)
SELECT day, control, sum(attempts), sum(successes) FROM probe_rollups GROUP BY day, control
"""


def upgrade() -> None:
    op.create_table(
        "dashboard_daily_reach",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("control", sa.Boolean(), primary_key=True),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
    )
    op.execute(BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)
    op.create_index("ix_probe_results_proxy_time", "probe_results", ["proxy_id", "measured_at"])
    op.create_index(
        "ix_verdict_history_verdict_proxy", "proxy_verdict_history", ["verdict", "proxy_id", "at"]
    )
    op.create_index(
        "ix_probe_evidence_vantage", "probe_evidence", ["country", "control", "last_ok"]
    )


def downgrade() -> None:
    op.drop_index("ix_probe_evidence_vantage", "probe_evidence")
    op.drop_index("ix_verdict_history_verdict_proxy", "proxy_verdict_history")
    op.drop_index("ix_probe_results_proxy_time", "probe_results")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER dashboard_reach ON probe_rollups")
        op.execute("DROP FUNCTION dashboard_reach_apply()")
    else:
        for name in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER dashboard_reach_{name}")
    op.drop_table("dashboard_daily_reach")
