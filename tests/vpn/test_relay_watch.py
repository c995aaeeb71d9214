"""``resist vpn serve``'s watch over its translator child (RelayWatch).

Real child processes (``python -c 'exit N'`` and a sleeper), a fake clock:
a child that dies is restarted after a backoff that doubles, one that ran a
minute starts over at a second, and a configuration error (exit 2, as a
taken port gives) is not restarted but ends serve with one line.  A CI run
once hung here: the translator could not bind the port a stale translator
held, and serve restarted it every second, for ever, saying nothing on
stdout.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from resistance.config import Endpoint
from resistance.errors import ConfigError
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.service import FIRST_BACKOFF, MAX_BACKOFF, RelayWatch
from resistance.vpn.translator import Side, Translator


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def exited(code: int) -> subprocess.Popen[bytes]:
    proc = child(f"raise SystemExit({code})")
    proc.wait(30)
    return proc


def test_a_running_child_is_left_alone_and_stopped_at_the_end() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(child("import time; time.sleep(60)"))
        return started[-1]

    watch = RelayWatch(start, clock=Clock())
    try:
        assert watch.check() is None
        assert watch.check() is None
        assert len(started) == 1 and started[0].poll() is None
    finally:
        watch.stop()
    assert started[0].returncode is not None
    assert watch.proc is None


def test_a_dead_child_is_restarted_after_a_doubling_backoff() -> None:
    clock = Clock()
    starts: list[float] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(clock.now)
        return exited(1)

    watch = RelayWatch(start, clock=clock)
    assert watch.check() is None  # seen dead: restart due in 1 s
    assert len(starts) == 1
    clock.now += FIRST_BACKOFF - 0.1
    assert watch.check() is None
    assert len(starts) == 1, "restarted before its backoff"
    clock.now += 0.1
    assert watch.check() is None
    assert len(starts) == 2
    waits = []
    for _ in range(8):  # each quick death doubles the wait, up to a minute
        watch.check()  # sees it dead
        before = len(starts)
        due = watch.restart_at
        assert due is not None
        waits.append(due - clock.now)
        clock.now = due
        watch.check()
        assert len(starts) == before + 1
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_a_child_that_ran_a_minute_starts_over_at_one_second() -> None:
    clock = Clock()
    lives = iter([0.0, 0.0, MAX_BACKOFF, 0.0])

    def start() -> subprocess.Popen[bytes]:
        return exited(1)

    watch = RelayWatch(start, clock=clock)
    waits = []
    for life in lives:
        clock.now += life  # how long it ran before it was seen dead
        watch.check()
        assert watch.restart_at is not None
        waits.append(watch.restart_at - clock.now)
        clock.now = watch.restart_at
        watch.check()
    assert waits == [1.0, 2.0, 1.0, 2.0]


def test_a_configuration_error_is_not_restarted() -> None:
    starts = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(1)
        return exited(2)

    watch = RelayWatch(start, clock=Clock())
    trouble = watch.check()
    assert trouble is not None and "could not start (exit status 2)" in trouble
    assert "\n" not in trouble
    assert starts == [1]


def test_the_translator_says_a_taken_port_in_one_line() -> None:
    """The translator's side of it: a bind failure is a ConfigError (exit 2), not a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        translator = Translator(
            AmneziaParams.generate(),
            side=Side.CLIENT,
            listen=Endpoint("127.0.0.1", port),
            target=Endpoint("127.0.0.1", 9),
            wireguard_public=bytes(32),
            amnezia_publics=lambda: (),
        )
        with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            asyncio.run(translator.start())
