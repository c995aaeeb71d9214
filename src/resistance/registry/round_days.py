"""A round's rollups summed per proxy and day, in column arrays (numpy), not per row.

Why
---
A grant round over 100,000 proxies and 30 days reads 6,000,000 ``probe_rollups``
rows (a control row and a target-country row per proxy and day, more when several
vantage countries measure). Folding them one Python row at a time, decoding each
throughput histogram from JSON and merging it list by list, took most of a round's
time. Here each batch of rows becomes a few arrays, and every sum is one numpy call.

Theory of operation
-------------------
:func:`repositories.rollup_rows` yields batches ordered by proxy and day, so a
proxy-day's rows are consecutive; only the last group of a batch may continue in
the next one, so it is carried over. For each group (one proxy, one day):

* ``control_attempts``/``control_successes`` are the sums over its control rows,
  ``target_attempts``/``target_successes`` over its target-country rows;
* its throughput histograms are summed element by element — only those that are a
  non-empty list of exactly ``len(THROUGHPUT_BOUNDS_KBPS) + 1`` integers, as the
  per-row fold did (a histogram of another shape, an empty one or a missing one adds
  nothing) — and ``throughput_kbps`` is that sum's median as
  :func:`resistance.probe.rollup.percentile` gives it (0 when the sum is empty).

All arithmetic is on int64, exact for any count a registry stores (attempts are
bounded by the measurements it accepted); the result equals the per-row fold's
exactly (``tests/registry/test_round_days.py`` checks it against that fold on random
rows). Memory is one batch's arrays plus seven integers per proxy-day.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from resistance.probe import rollup

BOUNDS = np.asarray(rollup.THROUGHPUT_BOUNDS_KBPS, dtype=np.int64)
BINS = len(rollup.THROUGHPUT_BOUNDS_KBPS) + 1

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DayTotals:
    """One entry per proxy-day, sorted by proxy id then day."""

    proxy: Ints
    day: list[str]
    control_attempts: Ints
    control_successes: Ints
    target_attempts: Ints
    target_successes: Ints
    throughput_kbps: Ints

    def __len__(self) -> int:
        return len(self.day)


def _histograms(texts: Sequence[str | None]) -> tuple[Ints, npt.NDArray[np.bool_]]:
    """The histograms of a batch as an (n, BINS) matrix, and which rows have one that
    counts (a list of BINS integers); rows without one are all zero."""
    n = len(texts)
    matrix = np.zeros((n, BINS), dtype=np.int64)
    valid = np.zeros(n, dtype=np.bool_)
    bodies: list[str] = []
    for i, text in enumerate(texts):
        if not text:
            continue
        body = text.strip()
        if len(body) > 2 and body[0] == "[" and body[-1] == "]" and body.count(",") == BINS - 1:
            valid[i] = True
            bodies.append(body[1:-1])
    rows = np.flatnonzero(valid)
    if len(rows):
        try:
            with warnings.catch_warnings():
                # numpy warns (and stops) at text that is not an integer: made an error
                warnings.simplefilter("error")
                flat = np.fromstring(",".join(bodies), dtype=np.int64, sep=",")
        except (ValueError, OverflowError, DeprecationWarning):
            flat = np.zeros(0, dtype=np.int64)
        if len(flat) == len(rows) * BINS:
            matrix[rows] = flat.reshape(len(rows), BINS)
        else:  # something that is not plain integers: decode those rows one by one
            for i in rows:
                decoded = json.loads(texts[i] or "null")
                if (
                    isinstance(decoded, list)
                    and len(decoded) == BINS
                    and all(type(v) is int for v in decoded)
                ):
                    matrix[i] = decoded
                else:
                    valid[i] = False
    return matrix, valid


def median_kbps(histograms: Ints) -> Ints:
    """``rollup.percentile(h, THROUGHPUT_BOUNDS_KBPS, 0.5) or 0`` for every row."""
    total = histograms.sum(axis=1)
    rank = np.maximum(1, -(-500 * total // 1000))
    reached = histograms.cumsum(axis=1) >= rank[:, None]
    index = np.minimum(reached.argmax(axis=1), len(BOUNDS) - 1)
    return np.where(total > 0, BOUNDS[index], 0)


class _Folder:
    """Folds batches of ordered rows, carrying a batch's last (maybe unfinished) group."""

    def __init__(self) -> None:
        self.parts: list[tuple[Ints, list[str], Ints, Ints, Ints, Ints, Ints]] = []
        self.carry: list[Any] = []

    def add(self, rows: Sequence[Any], *, last: bool = False) -> None:
        if self.carry:
            rows = [*self.carry, *rows]
            self.carry = []
        n = len(rows)
        if n == 0:
            return
        proxy_ids, days, controls, attempts_, successes_, texts = zip(*rows, strict=True)
        proxy = np.fromiter(proxy_ids, dtype=np.int64, count=n)
        lookup: dict[str, int] = {}
        day = np.fromiter(
            (lookup.setdefault(d, len(lookup)) for d in days), dtype=np.int64, count=n
        )
        starts = np.flatnonzero(
            np.concatenate(([True], (proxy[1:] != proxy[:-1]) | (day[1:] != day[:-1])))
        )
        if not last:
            cut = int(starts[-1])
            self.carry = list(rows[cut:])
            if cut == 0:
                return  # one group so far: wait for the rest of it
            starts = starts[:-1]
            n = cut
            proxy, day = proxy[:cut], day[:cut]
        control = np.fromiter(controls[:n], dtype=np.bool_, count=n)
        attempts = np.fromiter(attempts_[:n], dtype=np.int64, count=n)
        successes = np.fromiter(successes_[:n], dtype=np.int64, count=n)
        matrix, _ = _histograms(texts[:n])
        sums = np.add.reduceat(matrix, starts, axis=0)
        names = list(lookup)
        self.parts.append(
            (
                proxy[starts],
                [names[i] for i in day[starts].tolist()],
                np.add.reduceat(np.where(control, attempts, 0), starts),
                np.add.reduceat(np.where(control, successes, 0), starts),
                np.add.reduceat(np.where(control, 0, attempts), starts),
                np.add.reduceat(np.where(control, 0, successes), starts),
                median_kbps(sums),
            )
        )

    def totals(self) -> DayTotals:
        self.add([], last=True)
        if not self.parts:
            empty = np.zeros(0, dtype=np.int64)
            return DayTotals(empty, [], empty, empty, empty, empty, empty)
        proxy = np.concatenate([p[0] for p in self.parts])
        days = [d for p in self.parts for d in p[1]]
        columns = [np.concatenate([p[k] for p in self.parts]) for k in range(2, 7)]
        # In (proxy, day) order as Python sorts them, whatever collation the database used.
        ranks = {d: r for r, d in enumerate(sorted(set(days)))}
        day_rank = np.fromiter((ranks[d] for d in days), dtype=np.int64, count=len(days))
        order = np.lexsort((day_rank, proxy))
        if len(order) > 1:
            keyed = proxy[order] * (len(ranks) + 1) + day_rank[order]
            if bool((keyed[1:] == keyed[:-1]).any()):
                raise ValueError("rollup rows of one proxy-day were not read together")
        return DayTotals(
            proxy[order],
            [days[i] for i in order.tolist()],
            *(c[order] for c in columns),
        )


async def day_totals(batches: AsyncIterator[Sequence[Any]]) -> DayTotals:
    """The rows of :func:`repositories.rollup_rows` summed per proxy and day."""
    folder = _Folder()
    async for rows in batches:
        folder.add(rows)
    return folder.totals()


def fold_rows(batches: Sequence[Sequence[Any]]) -> DayTotals:
    """The same for batches already in memory (tests, tools)."""
    folder = _Folder()
    for rows in batches:
        folder.add(rows)
    return folder.totals()
