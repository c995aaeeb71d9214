"""The client's failover without sockets: the pool's memory of failures and lies, and
the time-bounded race over scripted attempts (each a coroutine that answers, fails
at once, or hangs, as a hostile upstream would)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from resistance.client.dial import DialError
from resistance.client.failover import MAX_RACING, Won, race_upstreams
from resistance.client.upstreams import SIDELINE_FIRST, Upstream, UpstreamPool
from resistance.proto.socks5 import Reply

UPSTREAMS = [Upstream(f"192.0.2.{i}", 1080) for i in range(1, 41)]


def test_a_lie_sidelines_far_longer_than_a_timeout_and_a_success_does_not_wipe_it() -> None:
    liar, slow, good = UPSTREAMS[:3]
    pool = UpstreamPool([liar, slow, good])
    pool.failed(slow, "the upstream did not answer in time", now=0.0, seconds=8.0)
    pool.failed(liar, "the upstream's certificate does not match its pin", now=0.0, lying=True)
    assert pool.health[slow].down_until <= 2.0
    assert pool.health[liar].sidelined_until >= SIDELINE_FIRST >= 100 * 2.0
    pool.succeeded(liar, 0.01, now=1.0)  # it answers correctly when it likes
    assert not pool.health[liar].available(60.0)
    assert pool.health[liar].lies == 1
    assert pool.order(60.0)[-1] == liar
    # Its sentence over, it is tried again, but after every honest upstream.
    later = SIDELINE_FIRST + 1
    assert pool.health[liar].available(later)
    assert pool.order(later)[-1] == liar
    pool.failed(liar, "health check: not the node the directory names", now=later, lying=True)
    assert pool.health[liar].sidelined_until - later >= 2 * SIDELINE_FIRST  # doubles


def test_resting_upstreams_that_failed_fastest_come_first() -> None:
    silent, refusing, reset = UPSTREAMS[:3]
    pool = UpstreamPool([silent, refusing, reset])
    pool.failed(silent, "no answer", now=0.0, seconds=5.0)
    pool.failed(refusing, "refused", now=0.0, seconds=0.001)
    pool.failed(reset, "reset", now=0.0, seconds=0.2)
    assert pool.order(1.0) == [refusing, reset, silent]
    pool.succeeded(silent, 0.05, now=1.0)
    assert pool.order(1.0)[0] == silent and pool.health[silent].fail_seconds is None


Attempt = Callable[[Upstream, float], Coroutine[Any, Any, str]]


def scripted(kinds: dict[Upstream, str]) -> tuple[Attempt, list[tuple[Upstream, float]]]:
    """An attempt per upstream: "good" answers, "refused" fails at once, "silent"
    hangs until its own timeout, "broken" raises what no dial raises."""
    started: list[tuple[Upstream, float]] = []

    async def attempt(upstream: Upstream, seconds: float) -> str:
        started.append((upstream, seconds))
        kind = kinds[upstream]
        if kind == "good":
            await asyncio.sleep(0.01)
            return upstream.host
        if kind == "refused":
            raise DialError("refused", Reply.CONNECTION_REFUSED)
        if kind == "broken":
            raise RuntimeError("a bug")
        await asyncio.sleep(seconds)
        raise DialError("the upstream did not answer in time", Reply.TTL_EXPIRED)

    return attempt, started


async def race(
    kinds: dict[Upstream, str], *, budget: float, race_after: float | None, dial_timeout: float = 60
) -> tuple[Won[str] | None, bool, list[tuple[Upstream, str, float]], float]:
    attempt, _ = scripted(kinds)
    failures: list[tuple[Upstream, str, float]] = []
    started = time.monotonic()
    won, spent = await race_upstreams(
        list(kinds),
        attempt,
        budget=budget,
        race_after=race_after,
        dial_timeout=dial_timeout,
        failed=lambda u, exc, s: failures.append((u, type(exc).__name__, s)),
        discard=lambda value: None,
        retryable=(DialError,),
        name="test",
    )
    return won, spent, failures, time.monotonic() - started


async def test_six_silent_upstreams_ahead_of_the_good_one_fit_in_the_budget() -> None:
    """The issue's case: more hostile upstreams ahead than the old three attempts."""
    kinds = {u: "silent" for u in UPSTREAMS[:6]} | {UPSTREAMS[6]: "good"}
    won, spent, failures, took = await race(kinds, budget=1.0, race_after=0.5)
    assert won is not None and won.upstream == UPSTREAMS[6] and not spent
    assert took < 1.0 + 0.5
    assert {u for u, kind, _ in failures} == set(UPSTREAMS[:6])  # the losers, reported
    assert all(kind == "Abandoned" for _, kind, _ in failures)


async def test_fast_failures_start_the_next_at_once_without_racing() -> None:
    kinds = {u: "refused" for u in UPSTREAMS[:30]} | {UPSTREAMS[30]: "good"}
    won, _, failures, took = await race(kinds, budget=1.0, race_after=None)
    assert won is not None and won.upstream == UPSTREAMS[30]
    assert len(failures) == 30 and took < 1.0 + 0.5


async def test_when_nothing_answers_the_budget_ends_it() -> None:
    kinds = {u: "silent" for u in UPSTREAMS[:40]}
    won, spent, failures, took = await race(kinds, budget=0.5, race_after=0.05)
    assert won is None and spent
    assert took < 0.5 + 0.5
    assert 1 <= len(failures) <= 40
    # Each attempt's own timeout is what is left of the budget, so the last ones end
    # with the budget: cut off by it (Abandoned) or timed out by themselves a moment
    # sooner (DialError), whichever the loop runs first.
    assert {kind for _, kind, _ in failures} <= {"Abandoned", "DialError"}


async def test_every_attempt_gets_at_most_what_is_left_of_the_budget() -> None:
    kinds = {UPSTREAMS[0]: "silent", UPSTREAMS[1]: "silent"}
    attempt, started = scripted(kinds)
    won, spent = await race_upstreams(
        list(kinds), attempt, budget=0.3, race_after=None, dial_timeout=60,
        failed=lambda *a: None, discard=lambda v: None, retryable=(DialError,), name="t",
    )  # fmt: skip
    assert won is None and spent
    assert started[0][1] == pytest.approx(0.3, abs=0.05)
    assert len(started) == 1  # the first used the whole budget


async def test_no_more_than_max_racing_at_once() -> None:
    kinds = {u: "silent" for u in UPSTREAMS[:40]}
    attempt, started = scripted(kinds)
    await race_upstreams(
        list(kinds), attempt, budget=0.6, race_after=0.01, dial_timeout=60,
        failed=lambda *a: None, discard=lambda v: None, retryable=(DialError,), name="t",
    )  # fmt: skip
    assert len(started) == MAX_RACING


async def test_all_failing_fast_is_not_a_spent_budget() -> None:
    kinds = {u: "refused" for u in UPSTREAMS[:3]}
    won, spent, failures, _ = await race(kinds, budget=5.0, race_after=1.0)
    assert won is None and not spent and len(failures) == 3


async def test_an_unexpected_error_is_not_swallowed() -> None:
    with pytest.raises(RuntimeError):
        await race({UPSTREAMS[0]: "broken", UPSTREAMS[1]: "good"}, budget=1.0, race_after=None)


async def test_a_hanging_last_upstream_is_raced_once_more_by_itself() -> None:
    """A hello rule drops the first hello's flow: with nothing left to race, the same
    upstream's second attempt (the next hello) wins, well inside the budget; the
    first attempt is not reported as a failure of the upstream that won."""
    only = UPSTREAMS[0]
    calls: list[float] = []

    async def attempt(upstream: Upstream, seconds: float) -> str:
        calls.append(seconds)
        if len(calls) == 1:
            await asyncio.sleep(seconds)  # the dropped hello: silence
            raise DialError("no answer", Reply.TTL_EXPIRED)
        return upstream.host

    failures: list[tuple[Upstream, str]] = []
    for again, wins in ((lambda u: True, True), (None, False)):
        calls.clear()
        won, _ = await race_upstreams(
            [only], attempt, budget=0.6, race_after=0.05, dial_timeout=60,
            failed=lambda u, exc, s: failures.append((u, type(exc).__name__)),
            discard=lambda value: None, retryable=(DialError,), name="t", again=again,
        )  # fmt: skip
        assert (won is not None) is wins and len(calls) == (2 if wins else 1)
        if wins:
            assert failures == []


async def test_resting_candidates_do_not_hold_back_the_race_with_another_hello() -> None:
    """Under a whitelist the bridge is first and every node abroad behind it rests
    after its failures: the bridge's hanging TLS dial (a dropped hello) is raced by
    itself after race_after, not after every resting node has been started."""
    bridge, *abroad = UPSTREAMS[:4]
    calls: list[Upstream] = []

    async def attempt(upstream: Upstream, seconds: float) -> str:
        calls.append(upstream)
        if upstream != bridge or calls.count(bridge) == 1:
            await asyncio.sleep(seconds)  # the dropped hello, or a node cut off: silence
            raise DialError("no answer", Reply.TTL_EXPIRED)
        return upstream.host

    for hopeless, started_abroad in ((lambda u: u in abroad, 0), (None, len(abroad))):
        calls.clear()
        won, _ = await race_upstreams(
            [bridge, *abroad], attempt, budget=2.0, race_after=0.05, dial_timeout=60,
            failed=lambda *a: None, discard=lambda value: None, retryable=(DialError,),
            name="t", again=lambda u: u == bridge, hopeless=hopeless,
        )  # fmt: skip
        assert won is not None and won.upstream == bridge
        # with hopeless, the bridge's second hello races before any resting node starts
        assert calls[:2] == [bridge, bridge] if started_abroad == 0 else len(calls) == 5, calls
