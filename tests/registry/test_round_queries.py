"""The grant rounds' queries: one bound parameter whatever the number of rows.

Databases cap the parameters of one statement (SQLite 32766, PostgreSQL's
protocol 32767), so ``IN`` with one parameter per carried amount would make
a round with that many unapprovable.  These run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from resistance.registry import repositories as repo
from tests.registry.conftest import RunningRegistry

MANY = 40_000  # above both databases' parameter caps


def _round_fields(round_id: str) -> dict[str, Any]:
    return {
        "round_id": round_id,
        "status": "draft",
        "network": "regtest",
        "target_country": "IR",
        "period_start": "2026-01-01",
        "period_end": "2026-01-31",
        "budget_sat": 0,
        "paid_sat": 0,
        "payouts": 0,
        "settings": "{}",
        "inputs": "{}",
        "result": "{}",
        "carry_ids": [],
        "skipped_operators": [],
        "digest": None,
        "txid": None,
        "tx_hex": None,
        "created_at": 1,
        "updated_at": 1,
        "approved_at": None,
        "paid_at": None,
    }


async def test_claims_and_names_take_any_number_of_rows(running: RunningRegistry) -> None:
    await running.operator("alice")
    await running.operator("bob")
    sessions = running.registry.sessions
    async with sessions.begin() as session:
        source = await repo.add_round(session, fields=_round_fields("r-old"))
        taker = await repo.add_round(session, fields=_round_fields("r-new"))
        ids = await repo.operator_ids(
            session, names=["alice", "bob", *(f"gone-{n}" for n in range(MANY))]
        )
        assert set(ids) == {"alice", "bob"}
        await repo.add_carries(
            session, round_pk=source.id, amounts={ids["alice"]: 100, ids["bob"]: 200}, now=5
        )
    async with sessions.begin() as session:
        carries = await repo.open_carries(session)
        assert sorted(c.amount_sat for c in carries) == [100, 200]
        alice = next(c.id for c in carries if c.operator_id == ids["alice"])
        far = [alice + 1_000_000 + n for n in range(MANY)]  # no such carries
        assert await repo.claim_carries(session, ids=[alice, *far], round_pk=taker.id) == 1
        # claimed once only
        assert await repo.claim_carries(session, ids=[alice], round_pk=taker.id) == 0
        assert [c.operator_id for c in await repo.open_carries(session)] == [ids["bob"]]
    async with sessions.begin() as session:
        assert await repo.operator_ids(session, names=[]) == {}
        assert await repo.claim_carries(session, ids=[], round_pk=taker.id) == 0
        assert await repo.delete_round(session, round_pk=taker.id, status="approved") is False
        assert await repo.move_round(
            session, round_pk=taker.id, from_status="draft", values={"status": "approved"}
        )
        assert [r.round_id for r in await repo.all_rounds(session)] == ["r-new", "r-old"]
