"""What a publication reads in bulk (issue 25), against the per-row code it replaced:
the rollups' histograms summed in the database, and the import that blocked every
listed proxy found a version at a time (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry.db import make_engine, make_sessions, migrate
from resistance.registry.measurements import (
    LATENCY_BUCKETS,
    THROUGHPUT_BUCKETS,
    reachability,
)
from resistance.registry.models import (
    BlocklistImport,
    BlocklistRange,
    Operator,
    ProbeRollup,
    Proxy,
)

BUCKETS = (LATENCY_BUCKETS, THROUGHPUT_BUCKETS)
DAYS = ["2026-12-05", "2026-12-06", "2026-12-07"]
PROXIES = 4

_settings = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _proxies(session: Any) -> None:
    """Proxies 1..PROXIES of one operator (the rollups' foreign keys), once."""
    if await session.get(Operator, 1) is not None:
        return
    session.add(Operator(id=1, name="op", created_at=0))
    await session.flush()
    for i in range(1, PROXIES + 1):
        session.add(
            Proxy(
                id=i, operator_id=1, host=f"192.0.2.{i}", port=1080, network="192.0.2.0/24",
                public_key="k", protocols=["socks5"], probe_user="u", probe_password="p",
                credentials=[], public=True, status="active", registered_at=0, verified_at=0,
            )
        )  # fmt: skip


def _histogram(size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 10**6), min_size=size, max_size=size)


_ROLLUP = st.fixed_dictionaries(
    {
        "proxy_id": st.integers(1, PROXIES),
        "day": st.sampled_from(DAYS),
        "country": st.sampled_from(["RU", "DE", "NL"]),
        "control": st.booleans(),
        "attempts": st.integers(0, 10**6),
        "successes": st.integers(0, 10**6),
        "latency_hist": _histogram(LATENCY_BUCKETS),
        "throughput_hist": _histogram(THROUGHPUT_BUCKETS),
    }
)


def _merged(rows: list[dict[str, Any]]) -> dict[tuple[int, str], tuple[Any, ...]]:
    """The Python merge the sums replace (rollup.merge), keyed by proxy and country."""
    out: dict[tuple[int, str], tuple[Any, ...]] = {}
    for r in rows:
        key = (r["proxy_id"], r["country"])
        a, s, lat, thr = out.get(
            key,
            (
                0,
                0,
                rollup.empty(rollup.LATENCY_BOUNDS_MS),
                rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS),
            ),
        )
        out[key] = (
            a + r["attempts"],
            s + r["successes"],
            rollup.merge(lat, r["latency_hist"]),
            rollup.merge(thr, r["throughput_hist"]),
        )
    return out


async def _migrated(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        await migrate(db_url)


def test_rollup_totals_equal_the_python_merge(db_url: str) -> None:
    asyncio.run(_migrated(db_url))

    @_settings
    @given(
        rows=st.lists(
            _ROLLUP,
            max_size=30,
            unique_by=lambda r: (r["proxy_id"], r["day"], r["country"], r["control"]),
        ),
        days=st.lists(st.sampled_from(DAYS), min_size=1, max_size=3, unique=True),
        ids=st.lists(st.integers(1, PROXIES), min_size=1, max_size=PROXIES, unique=True),
    )
    def example(rows: list[dict[str, Any]], days: list[str], ids: list[int]) -> None:
        asyncio.run(_totals_match(db_url, rows, days, ids))

    example()


async def _totals_match(
    db_url: str, rows: list[dict[str, Any]], days: list[str], ids: list[int]
) -> None:
    engine = make_engine(db_url)
    try:
        async with make_sessions(engine).begin() as s:
            await _proxies(s)
            await s.execute(delete(ProbeRollup))
            if rows:
                await s.execute(insert(ProbeRollup), rows)
        async with make_sessions(engine)() as s:
            totals = await repo.day_rollup_totals(s, proxy_ids=ids, days=days, buckets=BUCKETS)
            raw = await repo.day_rollup_rows(s, proxy_ids=ids, days=days)
    finally:
        await engine.dispose()
    chosen = [r for r in rows if r["proxy_id"] in ids and r["day"] in days]
    got = {
        (t.proxy_id, t.country): (
            t.attempts, t.successes, list(t.latency_hist), list(t.throughput_hist)
        )
        for t in totals
    }  # fmt: skip
    assert len(got) == len(totals)  # one row per proxy and country
    assert got == _merged(chosen)
    # and what the directory shows from them is what it showed from the rows
    for proxy_id in ids:
        assert reachability([t for t in totals if t.proxy_id == proxy_id]) == reachability(
            [r for r in raw if r.proxy_id == proxy_id]
        )


@pytest.mark.parametrize("which", ["latency_hist", "throughput_hist"])
async def test_rollup_totals_refuse_a_histogram_of_another_shape(db_url: str, which: str) -> None:
    await _migrated(db_url)
    engine = make_engine(db_url)
    good = {
        "proxy_id": 1, "day": DAYS[0], "country": "RU", "control": False, "attempts": 1,
        "successes": 1, "latency_hist": [0] * LATENCY_BUCKETS,
        "throughput_hist": [0] * THROUGHPUT_BUCKETS,
    }  # fmt: skip
    try:
        async with make_sessions(engine).begin() as s:
            await _proxies(s)
            await s.execute(
                insert(ProbeRollup),
                [good, {**good, "day": DAYS[1], which: [1, 2, 3]}],
            )
        async with make_sessions(engine)() as s:
            with pytest.raises(ValueError, match="different shapes"):
                await repo.day_rollup_totals(s, proxy_ids=[1], days=DAYS, buckets=BUCKETS)
            # the other day alone is read as it is
            (row,) = await repo.day_rollup_totals(s, proxy_ids=[1], days=[DAYS[0]], buckets=BUCKETS)
            assert (row.attempts, list(row.latency_hist)) == (1, [0] * LATENCY_BUCKETS)
    finally:
        await engine.dispose()


# --- the import that blocked each listed address --------------------------------------

SLOTS = 48


def _hex(slot: int) -> str:
    return f"{(1 << 128) + (10 << 24) + slot:033x}"  # 10.0.0.<slot>, as blocklist stores it


def _runs(slots: frozenset[int]) -> list[tuple[str, str]]:
    """A version's merged, disjoint ranges: the runs of consecutive listed slots."""
    out: list[tuple[str, str]] = []
    start = None
    for slot in range(SLOTS + 1):
        if slot in slots and start is None:
            start = slot
        elif slot not in slots and start is not None:
            out.append((_hex(start), _hex(slot - 1)))
            start = None
    return out


def test_listed_since_many_matches_listed_since_per_address(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random histories (ranges merging, splitting, going and coming back): the bulk
    answer is the per-address function's, and the unbroken run of versions back from
    the current one that list the address."""
    asyncio.run(_migrated(db_url))

    @_settings
    @given(
        versions=st.lists(st.frozensets(st.integers(0, SLOTS - 1)), min_size=1, max_size=6),
        lookups=st.sampled_from([0, 8, 10**6]),
    )
    def example(versions: list[frozenset[int]], lookups: int) -> None:
        monkeypatch.setattr(repo, "_LOOKUPS_AT_MOST", lookups)
        asyncio.run(_listed_since_matches(db_url, versions))

    example()


async def _listed_since_matches(db_url: str, versions: list[frozenset[int]]) -> None:
    engine = make_engine(db_url)
    try:
        ids = []
        async with make_sessions(engine).begin() as s:
            await s.execute(delete(BlocklistRange))
            await s.execute(delete(BlocklistImport))
        for slots in versions:
            async with make_sessions(engine).begin() as s:
                record = BlocklistImport(
                    source="t", kind="prefixes", updated=None, imported_at=0,
                    prefixes=len(slots), ranges=0, skipped=0,
                )  # fmt: skip
                ids.append(await repo.replace_blocklist(s, record=record, ranges=_runs(slots)))
        async with make_sessions(engine)() as s:
            current = {}
            for slot in range(SLOTS):
                span = await repo.range_containing(s, address_hex=_hex(slot))
                if span is not None:
                    current[_hex(slot)] = span.first_import
            bulk = await repo.listed_since_many(s, current=current)
            single = {h: await repo.listed_since(s, address_hex=h) for h in current}
    finally:
        await engine.dispose()
    assert set(current) == {_hex(slot) for slot in versions[-1]}
    assert bulk == single
    for slot in versions[-1]:
        since = None
        for import_id, slots in zip(reversed(ids), reversed(versions), strict=True):
            if slot not in slots:
                break
            since = import_id
        assert bulk[_hex(slot)] == since
