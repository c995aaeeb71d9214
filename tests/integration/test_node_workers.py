"""`resist node --workers N`: processes sharing one port, supervised.

Every node here listens on loopback; workers are found as the supervisor's
children (psutil) and each test ends with none of them left.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import EchoServer, RunningNode
from tests.integration.socksclient import open_socks, recv_exact

USER = ("--user", "alice:secret", "--allow", "127.0.0.0/8")


def workers_of(node: RunningNode) -> list[psutil.Process]:
    return psutil.Process(node.proc.pid).children()


def wait_for(predicate: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def serving(proc: psutil.Process, port: int) -> int:
    """Established client connections this worker holds on the node's port."""
    return sum(
        1
        for c in proc.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


def echo_through(
    node: RunningNode, echo: EchoServer, user: str = "alice", password: str = "secret"
) -> None:
    with open_socks(
        (node.host, node.port), echo.host, echo.port, user=user, password=password
    ) as s:
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"


def test_workers_share_the_port(node_factory: Any, echo_server: EchoServer) -> None:
    node: RunningNode = node_factory(*USER, "--workers", "2")
    assert "2 workers" in node.banner[0]
    assert wait_for(lambda: len(workers_of(node)) == 2)
    held: list[socket.socket] = []
    try:
        for _ in range(40):
            s = open_socks((node.host, node.port), echo_server.host, echo_server.port)
            held.append(s)
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
        counts = [serving(w, node.port) for w in workers_of(node)]
        # The kernel hashes connections over both: 40 on one worker has odds of 2**-39.
        assert sum(counts) == 40
        assert all(counts), counts
    finally:
        for s in held:
            s.close()
    assert node.stop() == 0
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == node.proc.pid]


def test_a_dead_worker_is_replaced(node_factory: Any, echo_server: EchoServer) -> None:
    node: RunningNode = node_factory(*USER, "--workers", "2")
    assert wait_for(lambda: len(workers_of(node)) == 2)
    victim = workers_of(node)[0]
    victim.kill()
    victim.wait(10)
    assert wait_for(
        lambda: len(workers_of(node)) == 2 and victim.pid not in {w.pid for w in workers_of(node)}
    )
    for _ in range(10):
        echo_through(node, echo_server)
    assert "ended: killed by SIGKILL" in node.stderr()


def test_sighup_reloads_every_worker(
    node_factory: Any, echo_server: EchoServer, tmp_path: Path
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('allow = ["127.0.0.0/8"]\nworkers = 2\n[users]\nalice = "secret"\n')
    node: RunningNode = node_factory("--config", str(config))
    assert wait_for(lambda: len(workers_of(node)) == 2)
    config.write_text(
        'allow = ["127.0.0.0/8"]\nworkers = 2\n[users]\nalice = "secret"\nbob = "hunter22"\n'
    )
    node.proc.send_signal(signal.SIGHUP)
    # Each of bob's connections lands on either worker: all must know him.
    assert wait_for(lambda: node.stderr().count("reloaded users and policy") >= 2)
    for _ in range(20):
        echo_through(node, echo_server, "bob", "hunter22")


def test_workers_end_with_a_killed_supervisor(node_factory: Any) -> None:
    node: RunningNode = node_factory(*USER, "--workers", "2")
    assert wait_for(lambda: len(workers_of(node)) == 2)
    workers = workers_of(node)
    node.proc.kill()
    node.proc.wait(10)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
