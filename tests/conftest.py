"""Fixtures shared by the integration tests: live nodes and loopback targets.

Every server here listens on loopback only, every wait has a timeout, and
every process a fixture starts is stopped by its PID when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LISTENING = re.compile(r"listening on socks5(s?)://\[?([0-9a-fA-F:.]+)\]?:(\d+)")


@dataclass
class RunningNode:
    proc: subprocess.Popen[str]
    host: str
    port: int
    banner: list[str]
    tls_port: int | None = None
    stderr_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def launch_node(
    args: list[str],
    state_dir: Path,
    *,
    listen: str = "127.0.0.1:0",
    timeout: float = 15.0,
    prefix: tuple[str, ...] = (),
    command: str = "node",
    env: dict[str, str] | None = None,
) -> RunningNode:
    """Start ``resist node`` (after ``prefix``, e.g. ``ip netns exec NS``) and wait
    until it says where it listens."""
    state_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = state_dir / f"node-{time.monotonic_ns()}.err"
    cmd = [*prefix, sys.executable, "-m", "resistance", command, "--state-dir", str(state_dir)]
    if listen:
        cmd += ["--listen", listen]
    cmd += args
    with stderr_path.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
    assert proc.stdout is not None
    banner: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump_lines, args=(proc.stdout, banner, lines), daemon=True).start()
    plain: tuple[str, int] | None = None
    tls: int | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line is None:
            break
        m = LISTENING.search(line)
        if m:
            if m.group(1):
                tls = int(m.group(3))
            elif plain is None:
                plain = (m.group(2), int(m.group(3)))
        if line.startswith(("Telegram:", "links:")):
            break
    if plain is None and tls is None:
        proc.kill()
        proc.wait(5)
        err = stderr_path.read_text() if stderr_path.exists() else ""
        raise AssertionError(f"node did not start: {banner!r} {err}")
    host, port = plain if plain else ("127.0.0.1", -1)
    return RunningNode(proc, host, port, banner, tls, stderr_path)


def _pump_lines(stream: Any, sink: list[str], lines: queue.Queue[str | None]) -> None:
    """Read the node's stdout to its end, so the node never blocks writing to it."""
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink.append(line.rstrip("\n"))
            lines.put(line)
    lines.put(None)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Any]:
    nodes: list[RunningNode] = []

    def start(
        *args: str,
        listen: str = "127.0.0.1:0",
        state_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> RunningNode:
        node = launch_node(list(args), state_dir or tmp_path, listen=listen, env=env)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def node(node_factory: Any) -> RunningNode:
    """A node with one user (alice/secret) that may reach loopback targets."""
    return node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", "--allow", "::1/128")


class EchoServer:
    """A TCP echo server on loopback, one thread per connection, for tests."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def echo_server6() -> Iterator[EchoServer]:
    server = EchoServer("::1")
    yield server
    server.close()


class UdpEcho:
    """A UDP echo server on loopback."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    server = UdpEcho()
    yield server
    server.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
