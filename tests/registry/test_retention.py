"""Retention: raw results and batch bodies older than the setting are pruned in chunks,
in the background, by one process at a time; rollups, evidence and verdicts stay
(SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from resistance.config import Endpoint
from resistance.errors import ConfigError
from resistance.registry import repositories as repo
from resistance.registry import retention
from resistance.registry.app import PRUNE_TASK
from resistance.registry.settings import RegistrySettings
from tests.probe.test_batches_api import JSON, bad_result, batch, good_result
from tests.probe.test_ingest_fold import add_probe, add_proxies
from tests.registry.conftest import RunningRegistry, start_registry

DAY = 86400
KEPT = (
    "SELECT * FROM probe_evidence ORDER BY proxy_id, probe_id",
    "SELECT * FROM probe_rollups ORDER BY id",
    "SELECT * FROM proxy_verdicts ORDER BY proxy_id",
    "SELECT * FROM proxy_verdict_history ORDER BY id",
)


async def rows(reg: RunningRegistry, sql: str) -> list[tuple[Any, ...]]:
    async with reg.registry.sessions() as session:
        return [tuple(r) for r in (await session.execute(text(sql))).all()]


async def upload(reg: RunningRegistry, probe: Any, proxies: list[int]) -> str:
    results = [good_result(reg, proxies[0], probe[1]), bad_result(proxies[1])]
    data = batch(probe[1], results, vantage=probe[2], country=probe[3])
    sent = await reg.client(token=probe[5]).post(
        "/api/v1/probe/batches", headers=JSON, content=data
    )
    assert sent.status_code == 201, sent.text
    batch_id: str = sent.json()["batch_id"]
    return batch_id


async def age(reg: RunningRegistry, batch_id: str, seconds: int) -> None:
    async with reg.registry.sessions.begin() as session:
        await session.execute(
            text("UPDATE probe_batches SET received_at = received_at - :s WHERE batch_id = :b"),
            {"s": seconds, "b": batch_id},
        )


async def test_old_batches_and_results_go_and_what_was_folded_from_them_stays(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(
        tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0), prune_chunk=1,
        prune_interval=3600,
    ) as reg:  # fmt: skip
        proxies = await add_proxies(reg, 2)
        probe = await add_probe(reg, "msk-1", "RU", False)
        old = [await upload(reg, probe, proxies) for _ in range(3)]
        young = [await upload(reg, probe, proxies) for _ in range(2)]
        for batch_id in old:
            await age(reg, batch_id, 3 * DAY + 60)
        await age(reg, young[0], 3 * DAY - 60)  # not yet old enough
        kept = [await rows(reg, sql) for sql in KEPT]
        async with reg.registry.sessions() as session:
            paid_from = [
                tuple(row)
                async for part in repo.rollup_rows(session, country="RU", since=None, before="9999")
                for row in part
            ]

        done = await retention.prune(reg.registry)

        assert (done.batches, done.results, done.ran) == (3, 6, True)  # in chunks of one
        assert sorted(await rows(reg, "SELECT batch_id FROM probe_batches")) == sorted(
            (b,) for b in young
        )
        assert sorted(await rows(reg, "SELECT DISTINCT batch_id FROM probe_results")) == sorted(
            (b,) for b in young
        )
        assert await rows(reg, "SELECT COUNT(*) FROM probe_results") == [(4,)]
        assert [await rows(reg, sql) for sql in KEPT] == kept
        async with reg.registry.sessions() as session:
            assert [
                tuple(row)
                async for part in repo.rollup_rows(session, country="RU", since=None, before="9999")
                for row in part
            ] == paid_from
        again = await retention.prune(reg.registry)
        assert (again.batches, again.results) == (0, 0)


async def test_the_background_task_prunes_and_stops_with_the_registry(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(
        tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0), prune_interval=0.2
    ) as reg:
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == PRUNE_TASK]
        assert len(tasks) == 1
        proxies = await add_proxies(reg, 2)
        probe = await add_probe(reg, "msk-1", "RU", False)
        gone, stays = await upload(reg, probe, proxies), await upload(reg, probe, proxies)
        await age(reg, gone, 4 * DAY)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = await rows(reg, "SELECT batch_id FROM probe_batches")
            if left == [(stays,)]:
                break
            await asyncio.sleep(0.1)
        assert left == [(stays,)]
    assert tasks[0].done()


async def test_retention_zero_keeps_everything_and_starts_no_task(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "reg", db_url, retention_days=0):
        assert not [t for t in asyncio.all_tasks() if t.get_name() == PRUNE_TASK]
    assert "for ever" in retention.describe(RegistrySettings(tmp_path, retention_days=0))
    assert "kept 3 days" in retention.describe(RegistrySettings(tmp_path))
    with pytest.raises(ConfigError):
        RegistrySettings(tmp_path, retention_days=-1)


async def test_one_process_prunes_at_a_time(tmp_path: Path, db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("the pruning lock is PostgreSQL's (one SQLite file has one process)")
    async with start_registry(
        tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0), prune_interval=3600
    ) as reg:
        proxies = await add_proxies(reg, 2)
        probe = await add_probe(reg, "msk-1", "RU", False)
        await age(reg, await upload(reg, probe, proxies), 4 * DAY)
        async with reg.registry.engine.connect() as other:  # another process's run
            assert await repo.try_prune_lock(other)
            skipped = await retention.prune(reg.registry)
            assert not skipped.ran and skipped.batches == 0
            await repo.release_prune_lock(other)
            await other.commit()
        done = await retention.prune(reg.registry)
        assert done.ran and done.batches == 1
