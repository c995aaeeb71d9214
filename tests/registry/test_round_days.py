"""The column fold of a round's rollups (round_days) against the per-row fold it replaced.

The reference below is the fold the registry used until issue 25 (one Python list per
proxy-day, each histogram decoded from JSON and merged list by list, the median taken
by ``rollup.percentile``), kept here verbatim as the specification: on any rows, in
any batching, the column fold must give exactly its sums and medians.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry.models import Operator, ProbeRollup, Proxy
from resistance.registry.round_days import (
    BINS,
    DayTotals,
    Unparsable,
    day_totals,
    fold_lines,
    fold_rows,
    median_kbps,
)
from tests.registry.conftest import RunningRegistry


def reference_fold(rows: list[tuple[Any, ...]]) -> dict[tuple[int, str], tuple[int, ...]]:
    days: dict[tuple[int, str], list[Any]] = {}
    for proxy_id, day, control, attempts, successes, text in rows:
        hist = json.loads(text) if text is not None else None
        tally = days.get((proxy_id, day))
        if tally is None:
            tally = days[(proxy_id, day)] = [
                0, 0, 0, 0, rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS),
            ]  # fmt: skip
        side = 0 if control else 2
        tally[side] += attempts
        tally[side + 1] += successes
        if hist and len(hist) == len(tally[4]):
            tally[4] = rollup.merge(tally[4], hist)
    return {
        key: (
            *t[:4],
            rollup.percentile(t[4], rollup.THROUGHPUT_BOUNDS_KBPS, 0.5) or 0,
        )
        for key, t in days.items()
    }


def column_fold(batches: list[list[tuple[Any, ...]]]) -> dict[tuple[int, str], tuple[int, ...]]:
    t = fold_rows(batches)
    keys = list(zip(t.proxy.tolist(), t.day, strict=True))
    assert keys == sorted(keys), "proxy-days come out in (proxy, day) order"
    values = zip(
        t.control_attempts.tolist(),
        t.control_successes.tolist(),
        t.target_attempts.tolist(),
        t.target_successes.tolist(),
        t.throughput_kbps.tolist(),
        strict=True,
    )
    return dict(zip(keys, values, strict=True))


def _text(hist: list[int], spaced: bool) -> str:
    return json.dumps(hist) if spaced else json.dumps(hist, separators=(",", ":"))


histograms = st.one_of(
    st.none(),
    st.just("[]"),
    # the usual: a full histogram, written with or without spaces
    st.builds(_text, st.lists(st.integers(0, 5000), min_size=BINS, max_size=BINS), st.booleans()),
    # mostly empty, the shape real days have (one or two busy buckets)
    st.builds(
        lambda i, n: json.dumps([n if k == i else 0 for k in range(BINS)]),
        st.integers(0, BINS - 1),
        st.integers(0, 300),
    ),
    # another shape: ignored by both
    st.builds(json.dumps, st.lists(st.integers(0, 50), min_size=1, max_size=BINS + 2)),
)

row = st.tuples(
    st.integers(1, 6),  # proxy
    st.sampled_from(["2026-10-01", "2026-10-02", "2026-10-03", "2026-09-30"]),  # day
    st.booleans(),  # control
    st.integers(0, 400),  # attempts
    st.integers(0, 400),  # successes
    histograms,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row, max_size=60), st.lists(st.integers(1, 20), max_size=8))
def test_the_column_fold_equals_the_per_row_fold(
    rows: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    # the database hands them over ordered by proxy and day (any order within a day)
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    batches, at = [], 0
    for size in cuts:
        batches.append(rows[at : at + size])
        at += size
    batches.append(rows[at:])
    assert column_fold(batches) == reference_fold(rows)


def test_a_day_split_over_many_batches_is_one_day() -> None:
    hist = json.dumps([0] * 7 + [3] + [0] * (BINS - 8))
    rows = [(7, "2026-10-01", n % 2 == 0, 10, 9, hist) for n in range(5)]
    rows.append((8, "2026-10-01", True, 1, 1, None))
    got = column_fold([rows[:1], [], rows[1:2], rows[2:4], rows[4:]])
    assert got == reference_fold(rows)
    assert got[(7, "2026-10-01")] == (30, 27, 20, 18, rollup.THROUGHPUT_BOUNDS_KBPS[7])


def test_a_histogram_that_is_not_integers_counts_for_nothing() -> None:
    good = json.dumps([0] * 3 + [2] + [0] * (BINS - 4))
    odd = json.dumps(["x"] * BINS)
    got = column_fold([[(1, "2026-10-01", True, 4, 4, good), (1, "2026-10-01", False, 4, 2, odd)]])
    assert got[(1, "2026-10-01")] == (4, 4, 4, 2, rollup.THROUGHPUT_BOUNDS_KBPS[3])


def test_rows_of_one_day_read_apart_are_refused() -> None:
    rows = [
        (1, "2026-10-01", True, 1, 1, None),
        (2, "2026-10-01", True, 1, 1, None),
        (1, "2026-10-01", False, 1, 1, None),
    ]
    with pytest.raises(ValueError, match="not read together"):
        fold_rows([rows])


@given(st.lists(st.lists(st.integers(0, 10**6), min_size=BINS, max_size=BINS), max_size=20))
def test_the_median_is_rollup_percentile(hists: list[list[int]]) -> None:
    matrix = np.asarray(hists, dtype=np.int64).reshape(len(hists), BINS)
    want = [rollup.percentile(h, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5) or 0 for h in hists]
    assert median_kbps(matrix).tolist() == want


CLEAN = [[0] * 7 + [5] + [0] * (BINS - 8), [0] * 2 + [9] + [0] * (BINS - 3), None, [],
         [1, 2, 3], {"a": 1}, [0] * (BINS - 1) + [4]]  # fmt: skip
ODD = [*CLEAN, [[1]] * BINS, ["7"] * BINS]


@pytest.mark.parametrize("shapes", [CLEAN, ODD], ids=["clean", "odd"])
async def test_the_database_read_equals_the_per_row_fold(
    running: RunningRegistry, shapes: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the rollups come as COPY text lines, on SQLite as rows: both give the
    per-row fold's totals, whatever the histograms hold (missing, empty, another
    length, not a list), and only for the days and countries asked.  Histograms of
    lists or strings do not parse as lines: PostgreSQL then reads rows too.  (The
    per-row fold stopped the whole round with a TypeError on those; the column fold
    counts them as missing, so they are given as missing to the reference.)"""
    read_rows: list[str | None] = []
    rollup_rows = repo.rollup_rows

    def spy(session: Any, **kwargs: Any) -> Any:
        read_rows.append(kwargs["since"])
        return rollup_rows(session, **kwargs)

    monkeypatch.setattr(repo, "rollup_rows", spy)
    monkeypatch.setattr(repo, "COPY_SINK_BYTES", 150)  # a few lines a block, and a tail
    await running.operator("alice")
    async with running.registry.sessions.begin() as session:
        operator = (await session.execute(select(Operator.id))).scalar_one()
        await session.execute(
            insert(Proxy),
            [
                dict(
                    id=p,
                    operator_id=operator,
                    host=f"203.0.113.{p}",
                    port=1080,
                    network="203.0.113.0/24",
                    public_key="k",
                    protocols=["socks5"],
                    probe_user="u",
                    probe_password="p",
                    credentials=[],
                    public=True,
                    status="active",
                    registered_at=1,
                    verified_at=1,
                )
                for p in (1, 2, 3)
            ],
        )
        rows = []
        n = 0
        for p in (3, 1, 2):
            for day in ("2026-10-02", "2026-10-01", "2026-09-30"):
                for country, control in (("DE", True), ("NL", True), ("RU", False), ("IR", False)):
                    n += 1
                    rows.append(
                        dict(proxy_id=p, day=day, country=country, control=control,
                             attempts=10 + n, successes=n % 11, latency_hist=[],
                             latency_p50_ms=None, latency_p90_ms=None,
                             throughput_hist=shapes[n % len(shapes)], throughput_p50_kbps=None)
                    )  # fmt: skip
        await session.execute(insert(ProbeRollup), rows)
    wanted = [
        (r["proxy_id"], r["day"], r["control"], r["attempts"], r["successes"],
         _plain(r["throughput_hist"]))
        for r in rows
        if (r["control"] or r["country"] == "RU") and "2026-10-01" <= r["day"] < "2026-10-03"
    ]  # fmt: skip
    async with running.registry.sessions() as session:
        got = await day_totals(session, country="RU", since="2026-10-01", before="2026-10-03")
        everything = await day_totals(session, country="RU", since=None, before="2026-10-03")
    assert len(got) == 6
    assert _as_dict(got) == reference_fold(wanted)
    assert len(everything) == 9
    postgres = running.registry.engine.dialect.name == "postgresql"
    assert read_rows == ([] if postgres and shapes is CLEAN else ["2026-10-01", None])


def _plain(hist: Any) -> str | None:
    if isinstance(hist, list) and all(type(v) is int for v in hist):
        return json.dumps(hist)
    return None if isinstance(hist, list) or hist is None else json.dumps(hist)


def _as_dict(t: DayTotals) -> dict[tuple[int, str], tuple[int, ...]]:
    values = zip(
        t.control_attempts.tolist(), t.control_successes.tolist(), t.target_attempts.tolist(),
        t.target_successes.tolist(), t.throughput_kbps.tolist(), strict=True,
    )  # fmt: skip
    return dict(zip(zip(t.proxy.tolist(), t.day, strict=True), values, strict=True))


def test_lines_that_are_not_integers_are_refused_for_the_row_path() -> None:
    width = 5 + BINS
    line = ",".join(["1", "20261001", "1", "3", "2", *(["0"] * BINS)]).encode()
    assert len(fold_lines([line + b"\n", line.replace(b"20261001", b"20261002") + b"\n"])) == 2
    with pytest.raises(Unparsable):
        fold_lines([line.replace(b",0", b",x", 1) + b"\n"])
    with pytest.raises(Unparsable):
        fold_lines([line + b",7\n"])  # one integer too many
    assert width == len(line.split(b","))


async def test_many_random_days_read_from_the_database_equal_the_per_row_fold(
    running: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random days of many rows (the property test's kinds of histogram, counts up to
    10**12), read through COPY lines cut into many blocks on PostgreSQL and as rows on
    SQLite: both give the per-row fold's totals, and PostgreSQL reads no rows."""
    rng = random.Random(25)
    read_rows: list[str | None] = []
    rollup_rows = repo.rollup_rows

    def spy(session: Any, **kwargs: Any) -> Any:
        read_rows.append(kwargs["since"])
        return rollup_rows(session, **kwargs)

    monkeypatch.setattr(repo, "rollup_rows", spy)
    monkeypatch.setattr(repo, "COPY_SINK_BYTES", 1000)  # many blocks and a tail

    def histogram() -> Any:
        kind = rng.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return [rng.randrange(10**12) for _ in range(BINS)]
        if kind == 2:
            return [rng.choice([0, 0, 0, rng.randrange(300)]) for _ in range(BINS)]
        if kind == 3:
            return [0] * (BINS - 1) + [rng.randrange(5)]
        if kind == 4:
            return [rng.randrange(9) for _ in range(rng.randrange(1, BINS + 3))]
        return [rng.randrange(3) if k == rng.randrange(BINS) else 0 for k in range(BINS)]

    await running.operator("alice")
    days = ["2026-10-01", "2026-10-02", "2026-10-03"]
    keys = {
        (p, day, country, country in ("DE", "NL"))
        for p in range(1, 41)
        for day in days
        for country in ("DE", "NL", "RU", "IR")
        if rng.random() < 0.7
    }
    async with running.registry.sessions.begin() as session:
        operator = (await session.execute(select(Operator.id))).scalar_one()
        await session.execute(
            insert(Proxy),
            [
                dict(id=p, operator_id=operator, host=f"203.0.113.{p}", port=1080,
                     network="203.0.113.0/24", public_key="k", protocols=["socks5"],
                     probe_user="u", probe_password="p", credentials=[], public=True,
                     status="active", registered_at=1, verified_at=1)
                for p in range(1, 41)
            ],
        )  # fmt: skip
        rows = [
            dict(proxy_id=p, day=day, country=country, control=control,
                 attempts=rng.randrange(10**9), successes=rng.randrange(10**9),
                 latency_hist=[], latency_p50_ms=None, latency_p90_ms=None,
                 throughput_hist=histogram(), throughput_p50_kbps=None)
            for p, day, country, control in sorted(keys)
        ]  # fmt: skip
        await session.execute(insert(ProbeRollup), rows)
    wanted = [
        (r["proxy_id"], r["day"], r["control"], r["attempts"], r["successes"],
         _plain(r["throughput_hist"]))
        for r in rows
        if r["control"] or r["country"] == "RU"
    ]  # fmt: skip
    async with running.registry.sessions() as session:
        got = await day_totals(session, country="RU", since=None, before="2026-10-04")
        later = await day_totals(session, country="RU", since="2026-10-02", before="2026-10-03")
    assert _as_dict(got) == reference_fold(wanted)
    assert _as_dict(later) == reference_fold([w for w in wanted if w[1] == "2026-10-02"])
    assert len(got) == len({(w[0], w[1]) for w in wanted}) > 60
    postgres = running.registry.engine.dialect.name == "postgresql"
    assert read_rows == ([] if postgres else [None, "2026-10-02"])
