"""Grant rounds' /2 inputs stored as chunk rows (issue 25).

A round's inputs in format /2 (``resistance.grants.inputs/2``) are chunks of at
most ``CHUNK_PROXIES`` proxies each; ``grant_round_chunks`` holds each chunk's
exact text in manifest order, and ``grant_rounds.inputs`` the rest (manifest,
carried amounts, prior service, signatures), so no stored value grows with the
number of proxies. Rounds stored before keep their inputs in
``grant_rounds.inputs`` and are read from there. Downgrading puts each round's
chunks back into its ``inputs`` document, so no round loses its inputs.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "grant_round_chunks",
        sa.Column(
            "round_pk",
            sa.Integer(),
            sa.ForeignKey("grant_rounds.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    conn = op.get_bind()
    rounds = conn.execute(
        sa.text("SELECT DISTINCT round_pk FROM grant_round_chunks ORDER BY round_pk")
    ).scalars()
    for round_pk in list(rounds):
        chunks = conn.execute(
            sa.text("SELECT body FROM grant_round_chunks WHERE round_pk = :pk ORDER BY position"),
            {"pk": round_pk},
        ).scalars()
        inputs = json.loads(
            conn.execute(
                sa.text("SELECT inputs FROM grant_rounds WHERE id = :pk"), {"pk": round_pk}
            ).scalar_one()
        )
        inputs["chunks"] = list(chunks)
        conn.execute(
            sa.text("UPDATE grant_rounds SET inputs = :inputs WHERE id = :pk"),
            {"inputs": json.dumps(inputs, sort_keys=True, separators=(",", ":")), "pk": round_pk},
        )
    op.drop_table("grant_round_chunks")
