"""Failover bounded by time: upstreams tried in order, a slow one raced by the next.

Theory of operation.  An application's connection gets a working upstream
or a clear SOCKS5 error within ``budget`` seconds (``--failover-budget``,
5 s by default), however many upstreams misbehave ahead of the good one:

* the candidates come in the pool's order (best first; of those resting,
  the fastest to fail first), and every one that fits in the budget is
  tried, not a fixed number;
* an attempt that fails starts the next one at once; one that has not
  finished after ``race_after`` seconds is raced by the next (as Happy
  Eyeballs does for addresses), sooner when the candidates left would not
  otherwise fit in what is left of the budget (at most every
  :data:`MIN_INTERVAL`, at most :data:`MAX_RACING` at once);
* each attempt's own timeout is the dial timeout or what is left of the
  budget, whichever is less;
* the first success wins; attempts still running are cancelled and
  reported as failed (slower than another), and so is every attempt
  still running when the budget is spent.

* with ``again``, an upstream it accepts that is still hanging when no other
  candidate is left to start is raced once more by itself (a TLS upstream
  with the next hello variant: a censor's hello rule drops one
  fingerprint's flows, and the last upstream that works must not cost the
  application a dial timeout); its two attempts count as one upstream.
  With ``hopeless`` too, the candidates left that it names (the pool has
  them resting after failures) do not hold that race back: under a
  whitelist the bridge is the one upstream that works and every node abroad
  behind it is resting, so a hello rule on the bridge's flow costs
  ``race_after``, not the budget.

Without ``race_after`` an attempt starts only when the one before failed.
Nothing here knows sockets: ``attempt`` opens one upstream, ``failed`` is
told every failure with the seconds it took.
"""

from __future__ import annotations

import asyncio
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from resistance.client.upstreams import Upstream

#: Attempts running at once, at most.
MAX_RACING = 16
#: The shortest wait before racing the next candidate.
MIN_INTERVAL = 0.05

T = TypeVar("T")


class Abandoned(Exception):
    """An attempt stopped by the failover itself (another won, or the budget ran out)."""


@dataclass(frozen=True, slots=True)
class Won(Generic[T]):
    upstream: Upstream
    value: T


async def race_upstreams(
    candidates: Sequence[Upstream],
    attempt: Callable[[Upstream, float], Coroutine[Any, Any, T]],
    *,
    budget: float,
    race_after: float | None,
    dial_timeout: float,
    failed: Callable[[Upstream, BaseException, float], None],
    discard: Callable[[T], None],
    retryable: tuple[type[BaseException], ...],
    name: str,
    again: Callable[[Upstream], bool] | None = None,
    hopeless: Callable[[Upstream], bool] | None = None,
) -> tuple[Won[T] | None, bool]:
    """The first candidate ``attempt`` opens within ``budget`` seconds, or ``None``;
    the flag says whether the budget ran out (rather than every candidate failing)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + budget
    racing: dict[asyncio.Task[T], tuple[Upstream, float]] = {}
    raced_again: set[Upstream] = set()
    started = 0
    next_at = start

    def once_more() -> Upstream | None:
        """A hanging upstream to race by itself, once none is left to start (none but
        hopeless ones)."""
        if again is None or race_after is None:
            return None
        if any(hopeless is None or not hopeless(u) for u in candidates[started:]):
            return None
        for upstream, _ in racing.values():
            if upstream not in raced_again and again(upstream):
                return upstream
        return None

    try:
        while started < len(candidates) or racing:
            now = loop.time()
            left = deadline - now
            if left <= 0:
                break
            room = started < len(candidates) and len(racing) < MAX_RACING
            alone = once_more()
            if alone is not None and now >= next_at:  # before any hopeless one starts
                raced_again.add(alone)
                task = loop.create_task(
                    attempt(alone, min(dial_timeout, left)), name=f"{name}-again"
                )
                racing[task] = (alone, now)
                if race_after is not None:
                    next_at = now + race_after
                continue
            if room and (not racing or (race_after is not None and now >= next_at)):
                upstream = candidates[started]
                started += 1
                task = loop.create_task(
                    attempt(upstream, min(dial_timeout, left)), name=f"{name}-{started}"
                )
                racing[task] = (upstream, now)
                if race_after is not None:
                    waiting = len(candidates) - started
                    fit = left / (waiting + 1)  # the last one needs time to answer too
                    next_at = now + min(race_after, max(MIN_INTERVAL, fit))
                continue
            until = deadline
            if (room or alone is not None) and race_after is not None:
                until = min(until, next_at)
            done, _ = await asyncio.wait(
                racing, timeout=max(0.0, until - loop.time()), return_when=FIRST_COMPLETED
            )
            for task in done:
                upstream, began = racing.pop(task)
                exc = task.exception()
                if exc is None:
                    value = task.result()
                    for loser, (slow, since) in racing.items():
                        loser.cancel()
                        if slow != upstream:  # not its own attempt with another hello
                            failed(
                                slow, Abandoned("slower than another upstream"),
                                loop.time() - since,
                            )  # fmt: skip
                    racing.clear()
                    for other in done - {task}:
                        if other.exception() is None:
                            discard(other.result())
                    return Won(upstream, value), False
                if not isinstance(exc, retryable):
                    raise exc
                failed(upstream, exc, loop.time() - began)
                next_at = loop.time()  # a failure starts the next at once
        spent = bool(racing) or started < len(candidates)
        end = loop.time()
        for task, (upstream, began) in racing.items():
            task.cancel()
            failed(
                upstream, Abandoned(f"no answer within the {budget:g} s failover budget"),
                end - began,
            )  # fmt: skip
        racing.clear()
        return None, spent
    finally:
        for task in racing:
            task.cancel()
