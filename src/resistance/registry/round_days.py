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

import datetime as dt
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncSession

from resistance.probe import rollup
from resistance.registry import repositories as repo

BOUNDS = np.asarray(rollup.THROUGHPUT_BOUNDS_KBPS, dtype=np.int64)
BINS = len(rollup.THROUGHPUT_BOUNDS_KBPS) + 1

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DayTotals:
    """One entry per proxy-day, sorted by proxy id then day."""

    proxy: Ints
    control_attempts: Ints
    control_successes: Ints
    target_attempts: Ints
    target_successes: Ints
    throughput_kbps: Ints
    #: ``day`` as the integer YYYYMMDD (for arithmetic on the days without their text).
    day_code: Ints

    def __len__(self) -> int:
        return len(self.day_code)

    @property
    def day(self) -> list[str]:
        """``day_code`` as ``YYYY-MM-DD`` texts (made when asked: the round reads the
        codes, and 3,000,000 texts at 100,000 proxies were ~1 s and ~200 MB)."""
        texts = {int(c): _day_text(int(c)) for c in np.unique(self.day_code)}
        return [texts[c] for c in self.day_code.tolist()]


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
            for i in rows.tolist():
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


class Unparsable(ValueError):
    """Text from ``rollup_lines`` that is not integers in rows of the expected width."""


def _day_code(day: str) -> int:
    """``YYYY-MM-DD`` as the integer YYYYMMDD (which sorts as the text does)."""
    try:
        dt.date.fromisoformat(day)
    except (TypeError, ValueError):
        raise ValueError(f"rollup day {day!r} is not an ISO date") from None
    if len(day) != 10:
        raise ValueError(f"rollup day {day!r} is not an ISO date")
    return int(day[:4]) * 10_000 + int(day[5:7]) * 100 + int(day[8:])


def _day_text(code: int) -> str:
    return f"{code // 10_000:04d}-{code // 100 % 100:02d}-{code % 100:02d}"


def day_offsets(codes: Ints, first: dt.date) -> Ints:
    """Days after ``first`` of each YYYYMMDD code (one date made per distinct day)."""
    distinct, inverse = np.unique(codes, return_inverse=True)
    base = first.toordinal()
    days = [
        dt.date(c // 10_000, c // 100 % 100, c % 100).toordinal() - base for c in distinct.tolist()
    ]
    return np.asarray(days, dtype=np.int64)[inverse.reshape(-1)]


#: proxy, day code, control, attempts, successes, histogram
_Arrays = tuple[Ints, Ints, npt.NDArray[np.bool_], Ints, Ints, Ints]


class _Folder:
    """Folds batches of rows ordered by proxy and day, carrying a batch's last (maybe
    unfinished) proxy-day into the next batch."""

    def __init__(self) -> None:
        self.parts: list[tuple[Ints, ...]] = []
        self.carry: _Arrays | None = None
        self.codes: dict[str, int] = {}

    def add_rows(self, rows: Sequence[Any]) -> None:
        """Rows of :func:`repositories.rollup_rows`."""
        n = len(rows)
        if n == 0:
            return
        proxy_ids, days, controls, attempts, successes, texts = zip(*rows, strict=True)
        codes = self.codes
        for d in set(days):
            if d not in codes:
                codes[d] = _day_code(d)
        self.add(
            (
                np.fromiter(proxy_ids, dtype=np.int64, count=n),
                np.fromiter((codes[d] for d in days), dtype=np.int64, count=n),
                np.fromiter(controls, dtype=np.bool_, count=n),
                np.fromiter(attempts, dtype=np.int64, count=n),
                np.fromiter(successes, dtype=np.int64, count=n),
                _histograms(texts)[0],
            )
        )

    def add_lines(self, block: bytes) -> None:
        """Whole lines of :func:`repositories.rollup_lines`."""
        text = block.translate(_TO_COMMAS).strip(b", ")
        if not text:
            return
        width = 5 + BINS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                flat = np.fromstring(text, dtype=np.int64, sep=",")
        except (ValueError, OverflowError, DeprecationWarning):
            raise Unparsable("rollup lines that are not integers") from None
        if len(flat) % width or len(flat) // width != block.count(b"\n") + (
            not block.endswith(b"\n")
        ):
            raise Unparsable("rollup lines of another width")
        table = flat.reshape(-1, width)
        self.add(
            (
                table[:, 0].copy(),
                table[:, 1].copy(),
                table[:, 2] != 0,
                table[:, 3].copy(),
                table[:, 4].copy(),
                table[:, 5:],
            )
        )

    def add(self, arrays: _Arrays, *, last: bool = False) -> None:
        if self.carry is not None:
            arrays = tuple(  # type: ignore[assignment]
                np.concatenate((c, a)) for c, a in zip(self.carry, arrays, strict=True)
            )
            self.carry = None
        proxy, day, control, attempts, successes, matrix = arrays
        n = len(proxy)
        if n == 0:
            return
        starts = np.flatnonzero(
            np.concatenate(([True], (proxy[1:] != proxy[:-1]) | (day[1:] != day[:-1])))
        )
        if not last:
            cut = int(starts[-1])
            self.carry = tuple(a[cut:] for a in arrays)  # type: ignore[assignment]
            if cut == 0:
                return  # one proxy-day so far: wait for the rest of it
            starts = starts[:-1]
            proxy, day, control = proxy[:cut], day[:cut], control[:cut]
            attempts, successes, matrix = attempts[:cut], successes[:cut], matrix[:cut]
        self.parts.append(
            (
                proxy[starts],
                day[starts],
                np.add.reduceat(np.where(control, attempts, 0), starts),
                np.add.reduceat(np.where(control, successes, 0), starts),
                np.add.reduceat(np.where(control, 0, attempts), starts),
                np.add.reduceat(np.where(control, 0, successes), starts),
                median_kbps(np.add.reduceat(matrix, starts, axis=0)),
            )
        )

    def totals(self) -> DayTotals:
        if self.carry is not None:
            carry, self.carry = self.carry, None
            self.add(carry, last=True)
        if not self.parts:
            empty = np.zeros(0, dtype=np.int64)
            return DayTotals(empty, empty, empty, empty, empty, empty, empty)
        proxy, day, *columns = (np.concatenate([p[k] for p in self.parts]) for k in range(7))
        same = proxy[1:] == proxy[:-1]
        if bool(((proxy[1:] > proxy[:-1]) | (same & (day[1:] > day[:-1]))).all()):
            ca, cs, ta, ts, tp = columns
            return DayTotals(proxy, ca, cs, ta, ts, tp, day)  # read in order (as queried)
        order = np.lexsort((day, proxy))
        proxy, day = proxy[order], day[order]
        if len(order) > 1 and bool(((proxy[1:] == proxy[:-1]) & (day[1:] == day[:-1])).any()):
            raise ValueError("rollup rows of one proxy-day were not read together")
        ca, cs, ta, ts, tp = (c[order] for c in columns)
        return DayTotals(proxy, ca, cs, ta, ts, tp, day)


_TO_COMMAS = bytes.maketrans(b"\t\n", b",,")


async def day_totals(
    session: AsyncSession, *, country: str, since: str | None, before: str
) -> DayTotals:
    """The control and target-country rollups of the days ``since`` (included; None: from
    the first) up to ``before`` (excluded), summed per proxy and day: read as text lines
    through COPY on PostgreSQL, as plain rows elsewhere (or if the lines do not parse)."""
    folder = _Folder()
    try:
        if await repo.rollup_lines(
            session, country=country, since=since, before=before, sink=folder.add_lines
        ):
            return folder.totals()
    except Unparsable:
        folder = _Folder()
    async for rows in repo.rollup_rows(session, country=country, since=since, before=before):
        folder.add_rows(rows)
    return folder.totals()


def fold_rows(batches: Sequence[Sequence[Any]]) -> DayTotals:
    """Batches of :func:`repositories.rollup_rows`' rows, in memory, summed per proxy-day."""
    folder = _Folder()
    for rows in batches:
        folder.add_rows(rows)
    return folder.totals()


def fold_lines(blocks: Sequence[bytes]) -> DayTotals:
    """Blocks of :func:`repositories.rollup_lines`' lines, in memory, summed per proxy-day."""
    folder = _Folder()
    for block in blocks:
        folder.add_lines(block)
    return folder.totals()
