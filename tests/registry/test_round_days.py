"""The column fold of a round's rollups (round_days) against the per-row fold it replaced.

The reference below is the fold the registry used until issue 25 (one Python list per
proxy-day, each histogram decoded from JSON and merged list by list, the median taken
by ``rollup.percentile``), kept here verbatim as the specification: on any rows, in
any batching, the column fold must give exactly its sums and medians.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.probe import rollup
from resistance.registry.round_days import BINS, fold_rows, median_kbps


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
