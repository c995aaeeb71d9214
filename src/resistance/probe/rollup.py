"""Daily rollups: attempts, successes and fixed-bucket histograms per (proxy, day, country).

Percentiles come from histograms with fixed, roughly logarithmic bucket
bounds, so a rollup is a few integers that merge by addition, whatever the
number of results, and the directory and grants never read raw results.  A
percentile is reported as the upper bound of the bucket it falls in (the
last bucket's lower bound when it is the open-ended one).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

#: Upper bounds, milliseconds, of the latency buckets; one more bucket is open-ended.
LATENCY_BOUNDS_MS: Final = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
    1000, 1500, 2000, 3000, 5000, 7000, 10000,
)  # fmt: skip
#: Upper bounds, kilobits per second, of the throughput buckets.
THROUGHPUT_BOUNDS_KBPS: Final = (
    64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000,
    256000, 512000, 1000000, 2000000, 4000000, 8000000,
)  # fmt: skip


def empty(bounds: Sequence[int]) -> list[int]:
    return [0] * (len(bounds) + 1)


def add(histogram: list[int], bounds: Sequence[int], value: int) -> None:
    """Count ``value`` in ``histogram`` (in place)."""
    histogram[bisect.bisect_left(bounds, value)] += 1


def percentile(histogram: Sequence[int], bounds: Sequence[int], fraction: float) -> int | None:
    """The bucket bound at ``fraction`` (0 < fraction <= 1) of the counts; None when empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1, -(-int(fraction * 1000) * total // 1000))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bounds[index] if index < len(bounds) else bounds[-1]
    return bounds[-1]  # pragma: no cover - unreachable: seen reaches total


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    if len(a) != len(b):
        raise ValueError("histograms of different shapes")
    return [x + y for x, y in zip(a, b, strict=True)]
