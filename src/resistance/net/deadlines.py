"""Timeouts of one fixed length for many objects, on a single loop timer.

Every client of a node starts a handshake timeout and, for CONNECT, a
connect timeout; nearly all of them are cancelled well before they expire.
An event loop timer per timeout costs a handle, a heap (or libuv timer
tree) entry and a cancellation: ~2 µs for the pair on uvloop, a noticeable
share of a whole proxied connection.

All timeouts in one :class:`Deadlines` have the same length, so they expire
in the order they were added: an insertion-ordered dict is the queue, and
adding or cancelling is one dict operation.  One loop timer waits for the
oldest entry; when it fires it expires everything due and re-arms for the
new oldest entry.  Entries expire at their deadline, give or take the loop's
timer resolution (a millisecond on uvloop) and latency.

The loop is used only as a :class:`Clock` (its time and one timer), so tests
drive a :class:`Deadlines` with a fake clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T", bound=Hashable)

RESOLUTION = 0.001


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What :class:`Deadlines` uses of an event loop (asyncio's and uvloop's are one)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object], /) -> Timer: ...


class Deadlines(Generic[T]):
    """Calls ``on_expire(item)`` once ``seconds`` have passed since ``add(item)``,
    unless ``discard(item)`` came first."""

    __slots__ = ("_due", "_firing", "_timer", "loop", "on_expire", "seconds")

    def __init__(self, loop: Clock, seconds: float, on_expire: Callable[[T], object]) -> None:
        if seconds <= 0:
            raise ValueError("a deadline must be in the future")
        self.loop = loop
        self.seconds = seconds
        self.on_expire = on_expire
        self._due: dict[T, float] = {}
        self._timer: Timer | None = None
        self._firing = False

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, item: object) -> bool:
        return item in self._due

    def add(self, item: T) -> None:
        """Start (or restart) ``item``'s timeout."""
        due = self._due
        if item in due:
            del due[item]  # to the back of the queue, where its new deadline belongs
        when = due[item] = self.loop.time() + self.seconds
        if self._timer is None and not self._firing:
            self._timer = self.loop.call_at(when, self._fire)

    def discard(self, item: T) -> None:
        """Cancel ``item``'s timeout, if it has one."""
        self._due.pop(item, None)

    def _fire(self) -> None:
        self._timer = None
        self._firing = True  # on_expire may add entries: they are armed for below
        due = self._due
        now = self.loop.time() + RESOLUTION  # uvloop may fire a timer this much early
        try:
            while due:
                item = next(iter(due))
                if due[item] > now:
                    break
                del due[item]
                self.on_expire(item)
        finally:
            self._firing = False
            if due and self._timer is None:
                self._timer = self.loop.call_at(due[next(iter(due))], self._fire)

    def close(self) -> None:
        """Forget every entry and the timer; nothing expires after this."""
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["Clock", "Deadlines"]
