"""Deadlines: many same-length timeouts on one loop timer."""

from __future__ import annotations

import asyncio

import pytest

from resistance.net.deadlines import Deadlines


async def test_expires_in_order_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[str] = Deadlines(
        loop, 0.05, lambda item: expired.append((item, loop.time()))
    )
    started = loop.time()
    deadlines.add("a")
    await asyncio.sleep(0.02)
    deadlines.add("b")
    await asyncio.sleep(0.2)
    assert [item for item, _ in expired] == ["a", "b"]
    assert expired[0][1] - started >= 0.05 - 0.002
    assert len(deadlines) == 0


async def test_discarded_items_never_expire() -> None:
    loop = asyncio.get_running_loop()
    expired: list[int] = []
    deadlines: Deadlines[int] = Deadlines(loop, 0.03, expired.append)
    for i in range(100):
        deadlines.add(i)
    for i in range(0, 100, 2):
        deadlines.discard(i)
    deadlines.discard(1000)  # never added: nothing happens
    await asyncio.sleep(0.15)
    assert expired == list(range(1, 100, 2))


async def test_adding_again_restarts_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(loop, 0.08, expired.append)
    deadlines.add("a")
    deadlines.add("b")
    await asyncio.sleep(0.05)
    deadlines.add("a")  # now due after "b"
    await asyncio.sleep(0.05)
    assert expired == ["b"]
    assert "a" in deadlines
    await asyncio.sleep(0.1)
    assert expired == ["b", "a"]


async def test_an_expiry_may_add_and_discard() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines: Deadlines[str]

    def on_expire(item: str) -> None:
        expired.append(item)
        if item == "first":
            deadlines.discard("second")
            deadlines.add("again")

    deadlines = Deadlines(loop, 0.03, on_expire)
    deadlines.add("first")
    deadlines.add("second")
    await asyncio.sleep(0.2)
    assert expired == ["first", "again"]
    assert len(deadlines) == 0


async def test_an_empty_queue_holds_no_timer_and_rearms() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(loop, 0.02, expired.append)
    deadlines.add("a")
    deadlines.discard("a")
    await asyncio.sleep(0.05)
    assert expired == []
    deadlines.add("b")
    await asyncio.sleep(0.08)
    assert expired == ["b"]


async def test_close_cancels_everything() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(loop, 0.02, expired.append)
    deadlines.add("a")
    deadlines.close()
    await asyncio.sleep(0.06)
    assert expired == []


def test_a_timeout_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            Deadlines(loop, 0, print)
    finally:
        loop.close()
