"""The replay cache shared by a node's workers (resistance.node.mtproto_shared)."""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.node.mtproto import open_replay_cache
from resistance.node.mtproto_shared import (
    HEADER_LEN,
    SHARED_REPLAY_FILE,
    SHARED_USERS_FILE,
    SharedReplayCache,
    SharedUsers,
    state_lock,
)
from resistance.node.mtproto_users import REPLAY_FILE, ReplayCache

TOKENS = [bytes([i]) * 32 for i in range(1, 13)]

# (token index, seconds its entry lasts, seconds the clock moves first)
operations = st.lists(
    st.tuples(
        st.integers(0, len(TOKENS) - 1),
        st.floats(0, 400, allow_nan=False),
        st.floats(0, 120, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_seen_matches_a_model(ops: list[tuple[int, float, float]]) -> None:
    """Inserted tokens are refused for their whole window and accepted once it is over."""
    with tempfile.TemporaryDirectory() as d:
        # One set of 16 ways and at most 12 tokens: no eviction, so the model is exact.
        cache = SharedReplayCache(Path(d) / "r.map", sets=1, ways=16)
        model: dict[bytes, int] = {}
        now = 1_700_000_000.0
        for index, lasts, step in ops:
            now += step
            token = TOKENS[index]
            live = model.get(token, 0) > now
            assert cache.seen(token, now + lasts, now) is live
            if not live:
                model[token] = math.ceil(now + lasts) + 1
                assert model[token] > now + lasts  # never shorter than asked
        assert cache.live(now) == sum(1 for e in model.values() if e > now)
        assert cache.evicted == 0
        cache.close()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=8, max_size=32), max_size=200))
def test_size_is_bounded_and_full_sets_evict_the_soonest(tokens: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.map"
        cache = SharedReplayCache(path, sets=2, ways=4)
        size = path.stat().st_size
        for i, token in enumerate(tokens):
            cache.seen(token, 1000 + i, 0)
        assert path.stat().st_size == size == HEADER_LEN + 2 * 4 * 16
        assert cache.live(0) <= cache.capacity == 8
        distinct = {t[:8] for t in tokens}
        assert cache.live(0) == min(len(distinct), 8) or cache.evicted
        # The newest entry always stays: it expires last in its set.
        if tokens:
            assert cache.seen(tokens[-1], 5000, 0)
        cache.close()


def test_survives_reopening_and_expires(tmp_path: Path) -> None:
    path = tmp_path / "r.map"
    first = SharedReplayCache(path)
    assert not first.seen(b"a" * 32, until=1300, now=1000)
    first.close()
    again = SharedReplayCache(path)
    assert again.seen(b"a" * 32, until=1300, now=1200)
    assert not again.seen(b"a" * 32, until=1700, now=1302)  # its window is over
    assert not again.seen(b"b" * 32, until=1700, now=1302)
    again.close()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_a_damaged_file_starts_empty(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.map"
        path.write_bytes(data)
        cache = SharedReplayCache(path, sets=2, ways=2)
        assert cache.live(0) == 0
        assert not cache.seen(b"x" * 32, 100, 0) and cache.seen(b"x" * 32, 100, 0)
        cache.close()


def test_another_layout_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "r.map"
    SharedReplayCache(path, sets=2, ways=2).close()
    bigger = SharedReplayCache(path, sets=4, ways=2)
    assert path.stat().st_size == HEADER_LEN + 8 * 16 and bigger.live(0) == 0
    bigger.close()


def test_default_size_holds_a_window_of_handshakes_without_evicting(tmp_path: Path) -> None:
    """660 authenticated handshakes a second for the 5-minute window: 200,000 entries."""
    cache = SharedReplayCache(tmp_path / "r.map")
    for _ in range(200_000):
        cache.seen(os.urandom(32), 300, 0)
    assert cache.evicted == 0
    cache.close()


def _insert_all(path: str, count: int, out: multiprocessing.Queue[list[bool]]) -> None:
    cache = SharedReplayCache(Path(path))
    out.put([cache.seen(i.to_bytes(8, "little") * 4, 100, 0) for i in range(count)])
    cache.close()


def test_processes_agree_on_every_token(tmp_path: Path) -> None:
    """Two processes insert the same tokens at once: each token is new to exactly one."""
    path = str(tmp_path / "r.map")
    SharedReplayCache(Path(path)).close()  # the layout exists before they race
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[bool]] = ctx.Queue()
    count = 5000
    procs = [ctx.Process(target=_insert_all, args=(path, count, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for a, b in zip(*results, strict=True):
        assert a != b  # one saw it first (False), the other found it (True)


def test_an_older_nodes_saved_cache_is_carried_over(tmp_path: Path) -> None:
    old = ReplayCache()
    old.seen(b"r" * 32, until=1290, now=1000)
    old.save(tmp_path / REPLAY_FILE, now=1000)
    cache = open_replay_cache(tmp_path, 1100)
    assert not (tmp_path / REPLAY_FILE).exists()
    assert (tmp_path / SHARED_REPLAY_FILE).exists()
    assert cache.seen(b"r" * 32, until=1400, now=1100)
    cache.close()


def test_state_lock_excludes_another_process(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()

    def hold() -> None:
        with state_lock(tmp_path):
            ready.set()
            (tmp_path / "held").write_text("x")
            time.sleep(0.3)  # give the other side time to try (it must wait, whatever the time)
            (tmp_path / "held").unlink()

    p = ctx.Process(target=hold)
    p.start()
    assert ready.wait(30)
    with state_lock(tmp_path):
        assert not (tmp_path / "held").exists()  # we got it only after the other let go
    p.join(30)
    assert p.exitcode == 0


def test_bad_geometry() -> None:
    with pytest.raises(ValueError):
        SharedReplayCache(Path("/nonexistent/x"), sets=3)


# -- the per-user table of a --workers node ---------------------------------------------


def test_shared_users_count_connections_and_bytes_over_workers(tmp_path: Path) -> None:
    path = tmp_path / SHARED_USERS_FILE
    SharedUsers.create(path, 2, {"alice": 1000, "gone": 5}, slots=64)
    first, second = SharedUsers(path, 2, 0), SharedUsers(path, 2, 1)
    a0, a1 = first.slot("alice"), second.slot("alice")
    assert a0 is not None and a0 == a1
    assert first.add_used(a0, 0) == 1000  # carried from the kept usage
    assert first.add_used(a0, 500) == 1500 and second.add_used(a0, 1) == 1501
    # conns=3 across both workers
    assert first.claim(a0, 3) and second.claim(a0, 3) and second.claim(a0, 3)
    assert not first.claim(a0, 3) and not second.claim(a0, 3)
    first.release(a0)
    assert second.claim(a0, 3) and second.active(a0) == 3
    # A replacement for worker 1 starts with none of its predecessor's connections.
    second.close()
    replaced = SharedUsers(path, 2, 1)
    assert replaced.active(a0) == 0
    assert replaced.claim(a0, None) and first.active(a0) == 1
    bob = first.slot("bob")
    assert bob is not None and bob != a0 and first.add_used(bob, 0) == 0
    first.close()
    replaced.close()


def test_shared_users_made_for_another_node_are_refused(tmp_path: Path) -> None:
    path = tmp_path / SHARED_USERS_FILE
    SharedUsers.create(path, 2, {}, slots=8)
    with pytest.raises(OSError):
        SharedUsers(path, 3, 0)
    path.write_bytes(b"short")
    with pytest.raises(OSError):
        SharedUsers(path, 2, 0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True))
def test_shared_users_slots_are_distinct_and_stable(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / SHARED_USERS_FILE
        SharedUsers.create(path, 1, {}, slots=16)
        table = SharedUsers(path, 1, 0)
        slots = [table.slot(n) for n in names]
        placed = [s for s in slots if s is not None]
        assert len(placed) == len(set(placed)) and len(placed) == min(len(names), 16)
        assert [table.slot(n) for n in names] == slots  # the same slot every time
        table.close()
