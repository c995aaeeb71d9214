"""Hostile proxies on real loopback sockets, against `resist probe`'s check and
`resist connect`: each must end within its documented bound (generously: the
cap plus 2 s), failed at the right step for the right reason, and never hold a
user's application away from a good upstream.  The same kinds without sockets
are in tests/probe/test_hostile_checks.py and tests/unit/test_failover.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.probe.check import Failure, Step
from resistance.probe.net import SocketNetwork
from resistance.probe.runner import (
    Canary,
    CheckResult,
    CheckSettings,
    Target,
    byte_cap,
    check_cap,
    run_check,
)
from resistance.proto.socks5 import Reply
from tests.conftest import RunningNode
from tests.integration.hostile import Hostile
from tests.integration.socksclient import SocksFailure, open_socks, recv_exact
from tests.integration.test_connect import client_factory, status
from tests.integration.test_node_ops import make_certificate

__all__ = ["client_factory"]  # the fixture, shared

KEY = Ed25519PrivateKey.generate()
CANARY = Canary("127.0.0.1", 9, KEY.public_key())  # the hostile peer plays the canary
SETTINGS = CheckSettings(step_timeout=0.5, transfer_timeout=0.5, upload=1 << 20, download=8192)
CAP = check_cap(SETTINGS)


async def probe(peer: Hostile) -> tuple[CheckResult, float]:
    started = time.monotonic()
    target = Target("127.0.0.1", peer.port, "probe", "pw", 1)
    result = await run_check(target, CANARY, SocketNetwork(), SETTINGS)
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("kind", "step", "failures"),
    [
        ("good-canary", None, {None}),
        ("silent", Step.GREETING, {Failure.TIMEOUT}),
        ("stall-auth", Step.AUTH, {Failure.TIMEOUT}),
        ("stall-connect", Step.CONNECT, {Failure.TIMEOUT}),
        ("stall-canary", Step.CANARY, {Failure.TIMEOUT}),
        ("drip", Step.CONNECT, {Failure.SLOW}),
        ("flood", Step.GREETING, {Failure.WRONG_ANSWER}),
        ("bad-version", Step.GREETING, {Failure.WRONG_ANSWER}),
        ("bad-method", Step.GREETING, {Failure.WRONG_ANSWER}),
        ("huge-bound", Step.CANARY, {Failure.TIMEOUT}),  # a legal reply: on to the canary
        ("truncated-bound", Step.CONNECT, {Failure.CLOSED}),
        ("reset-greeting", Step.GREETING, {Failure.RESET}),
        ("reset-auth", Step.AUTH, {Failure.RESET}),
        ("reset-connect", Step.CONNECT, {Failure.RESET}),
        ("zero-window", Step.CANARY, {Failure.TIMEOUT, Failure.SLOW}),
        ("forged-canary", Step.CANARY, {Failure.WRONG_ANSWER}),
        ("replayed-canary", Step.CANARY, {Failure.WRONG_ANSWER}),
        ("huge-canary", Step.TRANSFER, {Failure.WRONG_ANSWER}),
    ],
)
async def test_a_hostile_proxy_ends_the_check_within_its_cap(
    kind: str, step: Step | None, failures: set[Failure | None]
) -> None:
    with Hostile(kind, canary_key=KEY, drip_every=0.1) as peer:
        result, took = await probe(peer)
    assert result.verdict.failed_step == step, result.outcomes
    assert result.verdict.failure in failures, result.outcomes
    assert took < CAP + 2
    assert result.received <= byte_cap(SETTINGS) + 65536
    assert (result.proof is not None) == (kind == "good-canary")


# --- resist connect ---------------------------------------------------------------------

CLIENT_KINDS = [
    "silent", "stall-auth", "stall-connect", "drip", "flood", "bad-version", "bad-method",
    "truncated-bound", "reset-greeting", "reset-auth", "reset-connect",
]  # fmt: skip
"""The kinds a dial can tell from a good upstream (a zero window after an accepted
CONNECT looks like a destination that has not answered yet: see below)."""


@pytest.fixture
def good_node(node_factory: Any) -> RunningNode:
    node: RunningNode = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8")
    return node


@pytest.fixture
def hostiles(request: pytest.FixtureRequest) -> Iterator[list[Hostile]]:
    kinds: list[str] = request.param
    peers = [Hostile(kind, drip_every=0.5) for kind in kinds]
    yield peers
    for peer in peers:
        peer.close()


def through(
    client: RunningNode, echo_port: int, payload: bytes = b"hello", *, timeout: float = 10.0
) -> None:
    with open_socks(
        (client.host, client.port), "127.0.0.1", echo_port, user=None, timeout=timeout
    ) as s:
        s.sendall(payload)
        assert recv_exact(s, len(payload)) == payload


def url(port: int) -> str:
    return f"socks5://alice:secret@127.0.0.1:{port}"


@pytest.mark.parametrize("hostiles", [CLIENT_KINDS], indirect=True)
def test_the_first_connection_gets_through_many_hostile_upstreams_within_the_budget(
    client_factory: Any, good_node: RunningNode, hostiles: list[Hostile], echo_server: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Eleven hostile upstreams listed ahead of one good node (the old client gave up
    after three): the very first connection gets through within the budget.  The good
    node answers 1.5 s late, so its health check cannot rank it first before the
    application's first connection; the silent kinds are still ahead of it then."""
    with Hostile("late", forward_to=good_node.port, delay=1.5) as good:
        client = client_factory(
            *(url(p.port) for p in hostiles), url(good.port),
            extra=("--failover-budget", "5", "--check-interval", "600", "--race-after", "0.3",
                   "--dial-timeout", "30"),  # no health check gives up on the silent ones
        )  # fmt: skip
        started = time.monotonic()
        through(client, echo_server.port)
        assert time.monotonic() - started < 5 + 2
        silent = f"127.0.0.1:{hostiles[0].port}"
        deadline = time.monotonic() + 6  # the status file is rewritten every 2 s
        while True:  # it was in the way, and raced past
            rows = {r["upstream"]: r for r in status(client, tmp_path / "client0")["upstreams"]}
            if rows[silent]["last_error"] == "slower than another upstream":
                break
            assert time.monotonic() < deadline, rows[silent]
            time.sleep(0.2)
        for _ in range(3):  # and the ones after it
            started = time.monotonic()
            through(client, echo_server.port)
            assert time.monotonic() - started < 5 + 2


@pytest.mark.parametrize("hostiles", [["silent"] * 8], indirect=True)
def test_with_no_good_upstream_the_app_gets_a_clear_error_within_the_budget(
    client_factory: Any, hostiles: list[Hostile]
) -> None:
    client = client_factory(
        *(url(p.port) for p in hostiles), extra=("--failover-budget", "2", "--dial-timeout", "30")
    )
    started = time.monotonic()
    with pytest.raises(SocksFailure) as failure:
        open_socks((client.host, client.port), "127.0.0.1", 9, user=None)
    assert time.monotonic() - started < 2 + 2
    assert failure.value.reply is Reply.TTL_EXPIRED


@pytest.mark.parametrize("hostiles", [["reset-after-connect"], ["zero-window"]], indirect=True)
def test_an_upstream_that_breaks_connections_after_connect_stops_being_chosen(
    client_factory: Any, good_node: RunningNode, hostiles: list[Hostile], echo_server: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """One accepts CONNECT and resets on the first data (answering health checks, so
    only the broken connection can tell); the other accepts CONNECT and never reads
    again.  At most one application connection is lost to either: the next go
    elsewhere."""
    (breaker,) = hostiles
    with Hostile("late", forward_to=good_node.port, delay=0.3) as good:
        # The good node is slower, so the breaker is ranked first once both are checked.
        client = client_factory(
            url(breaker.port), url(good.port),
            extra=("--check-interval", "600", "--dial-timeout", "2"),
        )  # fmt: skip
        state = tmp_path / "client0"
        deadline = time.monotonic() + 15
        while not any(r["successes"] for r in status(client, state)["upstreams"]):
            assert time.monotonic() < deadline, "the health check passes the good node"
            time.sleep(0.2)
        lost = 0
        for _ in range(10):
            try:
                through(client, echo_server.port, timeout=3.0)
            except (OSError, AssertionError):
                lost += 1
        if breaker.kind == "reset-after-connect":
            assert lost == 1  # it passed its health check: only the lost connection told
        assert lost <= 1


def test_wrong_pin_stalled_handshake_and_plain_tcp_on_a_tls_port(
    client_factory: Any, good_node: RunningNode, echo_server: Any, tmp_path: Path
) -> None:
    """Three TLS upstreams that cannot be used, ahead of a good plain one: traffic goes
    through within the budget, and only the wrong certificate counts as a lie."""
    cert = make_certificate(tmp_path)
    pin = "ab" * 32
    with (
        Hostile("tls-wrong-cert", certificate=cert) as wrong,
        Hostile("tls-stall") as stall,
        Hostile("plain-on-tls") as plain,
    ):
        client = client_factory(
            *(f"socks5s://alice:secret@127.0.0.1:{p.port}#sha256={pin}"
              for p in (wrong, stall, plain)),
            good_node,
            extra=("--failover-budget", "5", "--check-interval", "600", "--transport", "auto"),
        )  # fmt: skip
        for _ in range(3):
            started = time.monotonic()
            through(client, echo_server.port)
            assert time.monotonic() - started < 5 + 2
        state = tmp_path / "client0"
        deadline = time.monotonic() + 15
        while True:
            rows = {r["upstream"]: r for r in status(client, state)["upstreams"]}
            liar = rows[f"127.0.0.1:{wrong.port} (TLS)"]
            if "does not match its pin" in liar["last_error"]:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        assert liar["resting_seconds"] > 1000  # sidelined, not the 2 s backoff
        others = [rows[f"127.0.0.1:{p.port} (TLS)"] for p in (stall, plain)]
        assert all(r["resting_seconds"] < 1000 for r in others), others
        shown = subprocess.run(
            [sys.executable, "-m", "resistance", "connect", "status", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=30, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert "(failed its identity check)" in shown.stdout, shown.stdout


async def test_an_mtproto_proxy_that_drips_its_fake_tls_answer_is_cut_off_as_slow() -> None:
    """The MTProto check has the same two clocks per step (net/mtproto.py)."""
    import asyncio

    from resistance.links import MODES_BY_NAME
    from resistance.net.mtproto import ask_res_pq
    from resistance.proto.faketls import ProxySecret

    async def drip(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(65536)  # the ClientHello
        try:
            for byte in b"\x16\x03\x03\x10\x00" + bytes(4096):  # a ServerHello record, slowly
                w.write(bytes([byte]))
                await w.drain()
                await asyncio.sleep(0.05)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    secret = ProxySecret(bytes(16), MODES_BY_NAME["ee"], "example.com")
    try:
        started = time.monotonic()
        answer = await ask_res_pq("127.0.0.1", port, secret, within=0.2)
        took = time.monotonic() - started
    finally:
        server.close()
    assert (answer.step, answer.failure) == ("handshake", "slow"), answer
    assert took < 5 * 0.2 + 2
