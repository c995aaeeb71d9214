"""The flagged probes are counted again in the background before their count expires.

Counting them reads every fresh evidence row (about 18 s at 100,000 proxies and 100
probes on the shared 2-core machine), and every batch of the process used to wait for
it once per round when the reading expired, and the first batches after a start.  Now a
batch that finds the reading in its last quarter starts one recount in the background and
goes on with the reading it has; only a batch that finds no valid reading waits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from resistance.registry import probes, shard
from resistance.registry import repositories as repo
from tests.probe.test_shards_api import make_probe
from tests.registry.conftest import start_registry


async def test_a_count_near_its_end_is_redone_in_the_background(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with start_registry(tmp_path / "reg", db_url, probe_flag_min=3) as reg:
        registry = reg.registry
        clock = [1_900_000_000]
        registry.clock = lambda: clock[0]
        for n in range(3):
            await make_probe(reg, f"msk-{n}", "RU", False)
        async with registry.sessions() as session:
            accounts = list(await repo.all_probes(session))
        liar = accounts[-1]
        calls: list[int] = []
        release = asyncio.Event()
        says: dict[int, tuple[int, int]] = {}

        async def count(session: Any, *, since: int) -> dict[int, tuple[int, int]]:
            calls.append(since)
            await release.wait()
            return dict(says)

        await registry.shards.counted()  # PostgreSQL's count at start-up (the clock is past it)
        monkeypatch.setattr(repo, "probe_disagreement", count)
        ttl = shard.flag_ttl(registry.settings.probe_round_seconds)
        start = clock[0]

        # No reading yet: the batch waits for the first count.
        first = asyncio.create_task(probes.fleet_now(registry, accounts[0], clock[0]))
        await asyncio.sleep(0.05)
        assert not first.done() and len(calls) == 1
        release.set()
        assert (await first).flagged == frozenset()

        # Within its first three quarters the reading is used as it is: no count.
        clock[0] = start + ttl - shard.recount_ahead(ttl) - 1
        await probes.fleet_now(registry, accounts[0], clock[0])
        assert len(calls) == 1

        # In its last quarter: one recount starts, and no batch waits for it.
        release.clear()
        says[liar.id] = (10, 10)  # the liar disagreed on every proxy compared
        clock[0] = start + ttl - 1
        fleets = await asyncio.wait_for(
            asyncio.gather(*(probes.fleet_now(registry, a, clock[0]) for a in accounts * 3)),
            timeout=10,
        )
        assert len(calls) == 2, "one recount for all the batches"
        assert all(liar.id not in f.flagged for f in fleets), "the old reading, meanwhile"
        release.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if registry.shards.flagged(now=start + ttl) is not None:
                break
        # The recount's reading is valid past the old one's end, and says the new flags.
        clock[0] = start + ttl + 1
        fleet = await probes.fleet_now(registry, accounts[0], clock[0] + shard.live_ttl(600))
        assert liar.id in fleet.flagged
        assert len(calls) == 2


async def test_an_expired_count_is_waited_for(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its end (no batch came in its last quarter) the reading is not used: the batch
    waits for a new count, so a probe flagged since never votes on an old reading."""
    async with start_registry(tmp_path / "reg", db_url, probe_flag_min=3) as reg:
        registry = reg.registry
        clock = [1_900_000_000]
        registry.clock = lambda: clock[0]
        for n in range(2):
            await make_probe(reg, f"msk-{n}", "RU", False)
        async with registry.sessions() as session:
            accounts = list(await repo.all_probes(session))
        release = asyncio.Event()
        release.set()
        says: dict[int, tuple[int, int]] = {}

        async def count(session: Any, *, since: int) -> dict[int, tuple[int, int]]:
            await release.wait()
            return dict(says)

        await registry.shards.counted()  # PostgreSQL's count at start-up (the clock is past it)
        monkeypatch.setattr(repo, "probe_disagreement", count)
        await probes.fleet_now(registry, accounts[0], clock[0])
        release.clear()
        says[accounts[1].id] = (10, 10)
        clock[0] += shard.flag_ttl(registry.settings.probe_round_seconds) + 1
        waiting = asyncio.create_task(probes.fleet_now(registry, accounts[0], clock[0]))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        release.set()
        assert accounts[1].id in (await waiting).flagged


async def test_postgresql_counts_the_flags_at_start(tmp_path: Path, db_url: str) -> None:
    """So the first batches after a start do not wait for the count (SQLite: a batch
    counts them, as before; its databases are small)."""
    async with start_registry(tmp_path / "reg", db_url) as reg:
        registry = reg.registry
        await registry.shards.counted()
        reading = registry.shards.flagged(now=registry.now())
        if registry.engine.dialect.name == "postgresql":
            assert reading == frozenset()
        else:
            assert reading is None
