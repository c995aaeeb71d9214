"""Deadlines: many same-length timeouts on one loop timer, driven by a fake clock.

The clock is the :class:`~resistance.net.deadlines.Clock` a loop provides: its
time and timers.  Here time moves only when a test advances it, so every
expiry is checked at the exact instant it happens, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.net.deadlines import RESOLUTION, Deadlines


class FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A loop's time and timers; time moves only in :meth:`advance`.

    ``early`` fires every timer that much before its time, as uvloop may (its
    timers have a millisecond's resolution)."""

    def __init__(self, *, early: float = 0.0) -> None:
        self.now = 0.0
        self.early = early
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object], /) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when - self.early, next(self._order), timer))
        return timer

    def armed(self) -> int:
        """Timers set and neither fired nor cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing each timer due on the way at its time."""
        until = self.now + seconds
        for _ in range(100_000):
            if not self._timers or self._timers[0][0] > until:
                break
            fires, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, fires)
            timer.callback()
        else:
            raise AssertionError("timers keep re-arming without time moving on")
        self.now = until


def _recording(clock: FakeClock) -> tuple[list[tuple[str, float]], Callable[[str], None]]:
    expired: list[tuple[str, float]] = []
    return expired, lambda item: expired.append((item, clock.time()))


def test_expires_in_order_after_the_timeout() -> None:
    clock = FakeClock()
    expired, record = _recording(clock)
    deadlines: Deadlines[str] = Deadlines(clock, 0.05, record)
    deadlines.add("a")
    clock.advance(0.02)
    deadlines.add("b")
    clock.advance(0.0299)
    assert expired == []
    clock.advance(0.0001)
    assert expired == [("a", pytest.approx(0.05))]
    clock.advance(0.02)
    assert expired == [("a", pytest.approx(0.05)), ("b", pytest.approx(0.07))]
    assert len(deadlines) == 0
    assert clock.armed() == 0


def test_one_timer_serves_every_entry() -> None:
    clock = FakeClock()
    deadlines: Deadlines[int] = Deadlines(clock, 1.0, lambda item: None)
    for i in range(1000):
        deadlines.add(i)
        clock.advance(0.0005)
    assert clock.armed() == 1
    assert len(deadlines) == 1000


def test_discarded_items_never_expire() -> None:
    clock = FakeClock()
    expired: list[int] = []
    deadlines: Deadlines[int] = Deadlines(clock, 0.03, expired.append)
    for i in range(100):
        deadlines.add(i)
    for i in range(0, 100, 2):
        deadlines.discard(i)
    deadlines.discard(1000)  # never added: nothing happens
    clock.advance(1.0)
    assert expired == list(range(1, 100, 2))
    assert clock.armed() == 0


def test_adding_again_restarts_the_timeout() -> None:
    clock = FakeClock()
    expired, record = _recording(clock)
    deadlines: Deadlines[str] = Deadlines(clock, 0.08, record)
    deadlines.add("a")
    deadlines.add("b")
    clock.advance(0.05)
    deadlines.add("a")  # now due at 0.13, after "b"
    clock.advance(0.05)
    assert expired == [("b", pytest.approx(0.08))]
    assert "a" in deadlines
    clock.advance(0.05)
    assert expired == [("b", pytest.approx(0.08)), ("a", pytest.approx(0.13))]


def test_an_expiry_may_add_and_discard() -> None:
    clock = FakeClock()
    expired, record = _recording(clock)
    deadlines: Deadlines[str]

    def on_expire(item: str) -> None:
        record(item)
        if item == "first":
            deadlines.discard("second")
            deadlines.add("again")

    deadlines = Deadlines(clock, 0.03, on_expire)
    deadlines.add("first")
    deadlines.add("second")
    clock.advance(1.0)
    assert expired == [("first", pytest.approx(0.03)), ("again", pytest.approx(0.06))]
    assert len(deadlines) == 0
    assert clock.armed() == 0


def test_an_empty_queue_holds_no_timer_and_rearms() -> None:
    clock = FakeClock()
    expired, record = _recording(clock)
    deadlines: Deadlines[str] = Deadlines(clock, 0.02, record)
    deadlines.add("a")
    deadlines.discard("a")
    clock.advance(0.05)  # the timer fires, finds nothing due and does not re-arm
    assert expired == []
    assert clock.armed() == 0
    deadlines.add("b")
    assert clock.armed() == 1
    clock.advance(0.08)
    assert expired == [("b", pytest.approx(0.07))]


def test_a_timer_fired_early_within_the_resolution_still_expires() -> None:
    """uvloop may run a timer up to a millisecond early: the due entry expires then,
    instead of re-arming a timer for a moment that has, to the loop, already come."""
    clock = FakeClock(early=RESOLUTION / 2)
    expired, record = _recording(clock)
    deadlines: Deadlines[str] = Deadlines(clock, 0.05, record)
    deadlines.add("a")
    clock.advance(0.05)
    assert expired == [("a", pytest.approx(0.05 - RESOLUTION / 2))]
    assert clock.armed() == 0


def test_close_cancels_everything() -> None:
    clock = FakeClock()
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(clock, 0.02, expired.append)
    deadlines.add("a")
    deadlines.close()
    assert clock.armed() == 0
    clock.advance(1.0)
    assert expired == []
    assert len(deadlines) == 0


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "discard", "advance"]),
            st.integers(0, 5),
            st.integers(1, 8),
        ),
        max_size=60,
    )
)
def test_each_item_expires_once_at_its_last_deadline(
    steps: list[tuple[str, int, int]],
) -> None:
    """Against a model: an item expires at (its last add) + seconds unless discarded
    first, at most once per add, and only one timer is ever armed.  Time moves in
    steps of 10 ms, so distinct deadlines lie further apart than the resolution."""
    seconds = 0.050
    clock = FakeClock()
    expired, record = _recording(clock)
    deadlines: Deadlines[str] = Deadlines(clock, seconds, record)
    due: dict[str, float] = {}
    expected: list[tuple[str, float]] = []

    def advance_model(until: float) -> None:
        # Insertion order among equal deadlines (to the float rounding of their sums).
        for item, when in sorted(due.items(), key=lambda entry: round(entry[1], 6)):
            if when <= until:
                expected.append((item, when))
                del due[item]

    for action, number, tens_of_ms in steps:
        item = f"i{number}"
        if action == "add":
            deadlines.add(item)
            due.pop(item, None)  # to the back, as Deadlines does
            due[item] = clock.time() + seconds
        elif action == "discard":
            deadlines.discard(item)
            due.pop(item, None)
        else:
            advance_model(clock.time() + tens_of_ms / 100)
            clock.advance(tens_of_ms / 100)
        assert clock.armed() <= 1
        assert len(deadlines) == len(due)
    advance_model(clock.time() + 1.0)
    clock.advance(1.0)
    assert [item for item, _ in expired] == [item for item, _ in expected]
    for (_, at), (_, when) in zip(expired, expected, strict=True):
        assert at == pytest.approx(when)
    assert clock.armed() == 0


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Deadlines(FakeClock(), 0, print)


def test_an_event_loop_is_a_clock() -> None:
    """The node passes its loop: the same two calls, on the loop's own timers."""
    loop = asyncio.new_event_loop()
    try:
        deadlines: Deadlines[str] = Deadlines(loop, 3600.0, print)
        deadlines.add("a")
        assert deadlines._timer is not None
        assert deadlines._timer.when() == pytest.approx(loop.time() + 3600.0, abs=1.0)  # type: ignore[attr-defined]
        deadlines.close()
        assert deadlines._timer is None
    finally:
        loop.close()
