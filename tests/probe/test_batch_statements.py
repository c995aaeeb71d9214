"""The three statements a batch is stored with (repositories.open_batch, fold_state,
write_batch): the same rows on SQLite (one statement per step) and PostgreSQL (one
statement each, rows passed as JSON), nothing of a refused write kept, and the fold
locks held from the first statement to the end of the transaction (issue 25)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError

from resistance.registry import repositories as repo
from tests.probe.test_ingest_fold import add_probe, add_proxies, table
from tests.registry.conftest import PG_ADMIN, RunningRegistry, start_registry

NOW = 1_700_000_000
DAY = "2023-11-14"
BODY = '{"document":{"detail":"\\u0000 is kept as written"}}'
DETAIL = 'no answer in 5 s \u2014 "quoted"'  # passed through JSON on PostgreSQL


@pytest.fixture
async def reg(tmp_path: Path, db_url: str) -> Any:
    async with start_registry(tmp_path / "reg", db_url) as running:
        yield running


def result_row(batch_id: str, probe_id: int, proxy_id: int, ok: bool) -> dict[str, Any]:
    return {
        "batch_id": batch_id, "probe_id": probe_id, "proxy_id": proxy_id,
        "measured_at": NOW - 10, "country": "RU", "control": False, "ok": ok,
        "step": None if ok else "tcp", "failure": None if ok else "timeout",
        "detail": "" if ok else DETAIL, "connect_us": 41_000 if ok else None,
        "ttfb_us": None, "throughput_kbps": 3_000 if ok else None,
        "mechanism": None if ok else "timeout",
    }  # fmt: skip


def evidence_row(proxy_id: int, probe_id: int, *, country: str = "RU", **more: Any) -> Any:
    return {
        "proxy_id": proxy_id, "probe_id": probe_id, "country": country, "control": False,
        "last_at": NOW - 10, "last_ok": False, "fail_streak": 2, "fail_windows": [3, 4],
        **more,
    }  # fmt: skip


def rollup_row(proxy_id: int, attempts: int) -> dict[str, Any]:
    return {
        "proxy_id": proxy_id, "day": DAY, "country": "RU", "control": False,
        "attempts": attempts, "successes": 1, "latency_hist": [0, 1, 0],
        "latency_p50_ms": 50, "latency_p90_ms": None, "throughput_hist": [1, 0],
        "throughput_p50_kbps": 3_000,
    }  # fmt: skip


def fold(batch_id: str, probe_id: int, now: int, **changes: Any) -> repo.BatchFold:
    results = changes.pop("results", [])
    return repo.BatchFold(
        batch={
            "batch_id": batch_id, "probe_id": probe_id, "digest": "d" * 64,
            "created_at": now - 5, "received_at": now, "result_count": len(results),
            "body": BODY,
        },
        results=results, probe_id=probe_id, now=now, **changes,
    )  # fmt: skip


async def write(reg: RunningRegistry, batch: repo.BatchFold) -> None:
    async with reg.registry.sessions.begin() as session:
        await repo.write_batch(session, fold=batch)


async def state(reg: RunningRegistry, proxies: list[int], probe_id: int) -> Any:
    async with reg.registry.sessions() as session:
        return await repo.fold_state(
            session,
            pairs=[(p, probe_id) for p in proxies],
            proxy_ids=proxies,
            days=[DAY],
            country="RU",
            control=False,
        )


async def test_a_batch_and_its_fold_are_stored_and_read_back(reg: RunningRegistry) -> None:
    p1, p2, p3 = await add_proxies(reg, 3)
    probe_id = (await add_probe(reg, "msk-1", "RU", False))[0]
    await write(
        reg,
        fold(
            "a" * 32, probe_id, NOW,
            results=[result_row("a" * 32, probe_id, p1, True),
                     result_row("a" * 32, probe_id, p2, False)],
            evidence=[evidence_row(p1, probe_id, mechanism="ok", transports={"tls": "ok"}),
                      evidence_row(p2, probe_id, mechanism="timeout", transports=None)],
            rollups=[rollup_row(p1, 1), rollup_row(p2, 1)],
            verdicts=[{"proxy_id": p1, "verdict": "blocked", "blocked_in": ["RU"],
                       "since": NOW, "updated_at": NOW}],
            changes=[{"proxy_id": p1, "at": NOW, "verdict": "blocked", "blocked_in": ["RU"],
                      "previous": "untested"}],
        ),
    )  # fmt: skip
    # A second batch: p1's verdict re-evaluated unchanged, p2's evidence changes only its
    # country (mechanism and transports stay), p1's rollup counted again, p3 new.
    await write(
        reg,
        fold(
            "b" * 32, probe_id, NOW + 60,
            results=[result_row("b" * 32, probe_id, p3, True)],
            evidence=[evidence_row(p3, probe_id, mechanism="ok", transports=None)],
            evidence_kept=[evidence_row(p2, probe_id, country="KZ")],
            rollups=[rollup_row(p1, 2)],
            unchanged=[p1],
        ),
    )  # fmt: skip
    evidence, rollups, verdicts = await state(reg, [p1, p2, p3], probe_id)
    assert sorted(evidence) == [
        (p1, probe_id, "RU", False, NOW - 10, False, 2, (3, 4)),
        (p2, probe_id, "KZ", False, NOW - 10, False, 2, (3, 4)),
        (p3, probe_id, "RU", False, NOW - 10, False, 2, (3, 4)),
    ]
    assert sorted(rollups) == [
        (p1, DAY, 2, 1, [0, 1, 0], [1, 0]),
        (p2, DAY, 1, 1, [0, 1, 0], [1, 0]),
    ]
    assert verdicts == {p1: ("blocked", ["RU"])}
    mechanisms = await table(
        reg, "SELECT proxy_id, mechanism, transports FROM probe_evidence ORDER BY proxy_id"
    )
    assert [(p, m, json.loads(t) if isinstance(t, str) else t) for p, m, t in mechanisms] == [
        (p1, "ok", {"tls": "ok"}),
        (p2, "timeout", None),
        (p3, "ok", None),
    ]
    assert await table(reg, "SELECT proxy_id, since, updated_at FROM proxy_verdicts") == [
        (p1, NOW, NOW + 60)
    ]
    assert await table(
        reg, "SELECT proxy_id, at, verdict, previous FROM proxy_verdict_history"
    ) == [(p1, NOW, "blocked", "untested")]
    assert await table(
        reg,
        "SELECT batch_id, proxy_id, ok, step, failure, detail, connect_us, throughput_kbps,"
        " mechanism, country FROM probe_results ORDER BY batch_id, proxy_id",
    ) == [
        ("a" * 32, p1, True, None, None, "", 41_000, 3_000, None, "RU"),
        ("a" * 32, p2, False, "tcp", "timeout", DETAIL, None, None, "timeout", "RU"),
        ("b" * 32, p3, True, None, None, "", 41_000, 3_000, None, "RU"),
    ]  # fmt: skip
    assert await table(
        reg, "SELECT batch_id, result_count, received_at, body FROM probe_batches"
        " ORDER BY batch_id"
    ) == [("a" * 32, 2, NOW, BODY), ("b" * 32, 1, NOW + 60, BODY)]  # fmt: skip
    assert await table(reg, f"SELECT last_batch_at FROM probe_accounts WHERE id = {probe_id}") == [
        (NOW + 60,)
    ]
    if reg.registry.engine.dialect.name == "postgresql":  # the one statement = the several
        async with reg.registry.sessions() as session:
            pairs = [(p, probe_id) for p in (p1, p2, p3)]
            assert sorted(evidence) == sorted(await repo.evidence_of_pairs(session, pairs=pairs))
            assert sorted(rollups) == sorted(
                await repo.rollup_counts(
                    session, proxy_ids=[p1, p2, p3], days=[DAY], country="RU", control=False
                )
            )
            assert verdicts == await repo.verdict_states(session, proxy_ids=[p1, p2, p3])


async def test_a_batch_id_stored_already_keeps_nothing_of_the_second_fold(
    reg: RunningRegistry,
) -> None:
    p1, p2 = await add_proxies(reg, 2)
    probe_id = (await add_probe(reg, "msk-1", "RU", False))[0]
    first = fold(
        "a" * 32, probe_id, NOW,
        results=[result_row("a" * 32, probe_id, p1, True)],
        evidence=[evidence_row(p1, probe_id, mechanism="ok", transports=None)],
        rollups=[rollup_row(p1, 1)],
        verdicts=[{"proxy_id": p1, "verdict": "ok", "blocked_in": [], "since": NOW,
                   "updated_at": NOW}],
    )  # fmt: skip
    await write(reg, first)
    before = await state(reg, [p1, p2], probe_id)
    again = fold(
        "a" * 32, probe_id, NOW + 60,
        results=[result_row("a" * 32, probe_id, p2, False)],
        evidence=[evidence_row(p2, probe_id, mechanism="timeout", transports=None)],
        evidence_kept=[evidence_row(p1, probe_id, country="KZ")],
        rollups=[rollup_row(p1, 5), rollup_row(p2, 1)],
        unchanged=[p1],
        verdicts=[{"proxy_id": p2, "verdict": "down", "blocked_in": [], "since": NOW,
                   "updated_at": NOW}],
        changes=[{"proxy_id": p2, "at": NOW, "verdict": "down", "blocked_in": [],
                  "previous": "untested"}],
    )  # fmt: skip
    with pytest.raises(IntegrityError):
        await write(reg, again)
    assert await state(reg, [p1, p2], probe_id) == before
    assert await table(reg, "SELECT COUNT(*) FROM probe_results") == [(1,)]
    assert await table(reg, "SELECT COUNT(*) FROM proxy_verdict_history") == [(0,)]
    assert await table(reg, "SELECT updated_at FROM proxy_verdicts") == [(NOW,)]
    assert await table(reg, f"SELECT last_batch_at FROM probe_accounts WHERE id = {probe_id}") == [
        (NOW,)
    ]


async def test_open_batch_reads_the_digest_and_proxies_and_holds_the_fold_locks(
    reg: RunningRegistry,
) -> None:
    p1, p2, p3 = await add_proxies(reg, 3)
    probe_id = (await add_probe(reg, "msk-1", "RU", False))[0]
    await write(reg, fold("a" * 32, probe_id, NOW))
    postgres = reg.registry.engine.dialect.name == "postgresql"
    database = reg.registry.engine.url.database
    other = await asyncpg.connect(f"{PG_ADMIN.rsplit('/', 1)[0]}/{database}") if postgres else None

    async def free(proxy_id: int) -> bool:  # another connection could take its fold lock
        assert other is not None
        async with other.transaction():
            taken: bool = await other.fetchval(
                "SELECT pg_try_advisory_xact_lock($1, $2)", repo.LOCK_PROXY_FOLD, proxy_id
            )
        return taken

    try:
        async with reg.registry.sessions.begin() as session:
            stored, rows = await repo.open_batch(
                session, batch_id="a" * 32, proxy_ids=[p2, p1, 999_999, p1]
            )
            assert stored == ("d" * 64, 0)
            assert sorted((r.id, r.host, list(r.protocols)) for r in rows) == [
                (p1, "192.0.2.1", ["socks5"]),
                (p2, "192.0.2.2", ["socks5"]),
            ]
            if postgres:
                assert [await free(p) for p in (p1, p2, p3)] == [False, False, True]
        if postgres:
            assert [await free(p) for p in (p1, p2)] == [True, True]
        async with reg.registry.sessions() as session:
            assert await repo.open_batch(session, batch_id="b" * 32, proxy_ids=[999_999]) == (
                None,
                [],
            )
    finally:
        if other is not None:
            await other.close()
