"""The relay on a live node: integrity, half-close, backpressure, idle timeout.

Each test runs with the splice relay and with the copying fallback.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from resistance.net import native
from resistance.proto.socks5 import (
    Address,
    Command,
    client_auth,
    client_greeting,
    client_request,
)
from tests.conftest import RunningNode
from tests.integration.socksclient import open_socks, recv_exact

#: The splice relay in C (resistance.net._splice) and in Python, and the copying one.
RELAYS = ["splice", "splice-python", "copy"]


@pytest.fixture(params=RELAYS)
def relay_node(request: pytest.FixtureRequest, node_factory: Any) -> RunningNode:
    relay, _, python = request.param.partition("-")
    node: RunningNode = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--relay", relay,
        env={native.DISABLE_ENV: "1"} if python else None,
    )  # fmt: skip
    assert f"({relay} relay" in node.banner[0]
    if relay == "splice":
        # The C half is built wherever the tests run (.ci/run compiles it); without
        # it, "splice" would test the Python version twice.
        assert ("splicing from Python" in node.stderr()) == bool(python), node.stderr()
    return node


class HalfCloseServer:
    """Reads until EOF, then answers with the byte count and a digest, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            digest = hashlib.sha256()
            total = 0
            while data := conn.recv(1 << 16):
                digest.update(data)
                total += len(data)
            conn.sendall(f"{total} {digest.hexdigest()}".encode())

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def half_close_server() -> Iterator[HalfCloseServer]:
    server = HalfCloseServer()
    yield server
    server.close()


def proxy(node: RunningNode) -> tuple[str, int]:
    return node.host, node.port


def whole_handshake(port: int, early: bytes) -> bytes:
    """Greeting, credentials, a CONNECT to 127.0.0.1:port and data, as one write."""
    return (
        client_greeting(auth=True)
        + client_auth(b"alice", b"secret")
        + client_request(Command.CONNECT, Address.from_ip("127.0.0.1", port))
        + early
    )


def test_bytes_arrive_intact_both_ways(relay_node: RunningNode, echo_server: Any) -> None:
    payload = os.urandom(8 << 20)
    with open_socks(proxy(relay_node), "127.0.0.1", echo_server.port) as sock:
        received = bytearray()

        def reader() -> None:
            while len(received) < len(payload):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return
                received.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        sock.sendall(payload)
        thread.join(30)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_concurrent_connections_with_stalling_readers_keep_their_bytes(
    relay_node: RunningNode, echo_server: Any
) -> None:
    """Eight echoes at once, their readers pausing now and then: destinations fill up,
    so pumps stop with bytes held back (the copy relay reads every chunk into one
    buffer shared by the loop), and no connection may get another's bytes."""
    payloads = [os.urandom(4 << 20) for _ in range(8)]
    digests: list[bytes | None] = [None] * len(payloads)

    def one(i: int) -> None:
        payload = payloads[i]
        with open_socks(proxy(relay_node), "127.0.0.1", echo_server.port) as sock:
            received = bytearray()

            def reader() -> None:
                chunks = 0
                while len(received) < len(payload):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        return
                    received.extend(chunk)
                    chunks += 1
                    if chunks % 8 == i % 8:
                        time.sleep(0.02)  # a stall: the node's buffers towards us fill

            thread = threading.Thread(target=reader)
            thread.start()
            sock.sendall(payload)
            thread.join(60)
            digests[i] = hashlib.sha256(received).digest()

    workers = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    assert digests == [hashlib.sha256(p).digest() for p in payloads]


def test_half_close_keeps_the_other_direction(
    relay_node: RunningNode, half_close_server: HalfCloseServer
) -> None:
    payload = os.urandom(3 << 20)
    with open_socks(proxy(relay_node), "127.0.0.1", half_close_server.port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # our EOF must reach the server ...
        answer = b""
        while chunk := sock.recv(4096):  # ... and its answer must still reach us
            answer += chunk
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


def test_early_data_sent_with_the_request_is_relayed(
    relay_node: RunningNode, echo_server: Any
) -> None:
    with socket.create_connection(proxy(relay_node), timeout=10) as sock:
        sock.sendall(whole_handshake(echo_server.port, b"early bird"))
        answer = recv_exact(sock, 2 + 2 + 10 + len(b"early bird"))
    assert answer[:4] == b"\x05\x02\x01\x00"
    assert answer[4:6] == b"\x05\x00"
    assert answer[-10:] == b"early bird"


def test_a_slow_reader_does_not_grow_the_node(relay_node: RunningNode) -> None:
    """The destination never reads: the node must stop reading from the client."""
    sink = socket.create_server(("127.0.0.1", 0))
    sink.settimeout(10)
    node_proc = psutil.Process(relay_node.proc.pid)
    with sink, open_socks(proxy(relay_node), "127.0.0.1", sink.getsockname()[1]) as sock:
        conn, _ = sink.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            before = node_proc.memory_info().rss
            sock.setblocking(False)
            chunk = b"x" * (1 << 16)
            sent = 0
            deadline = time.monotonic() + 10
            stalled_since = None
            # Push until the whole path is full (sends stop being accepted).
            while time.monotonic() < deadline and sent < (256 << 20):
                try:
                    sent += sock.send(chunk)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break
                    time.sleep(0.01)
            after = node_proc.memory_info().rss
    # Socket buffers hold what is in flight, in the kernel: the node's own memory
    # may move by allocator noise, never by the megabytes the client pushed.
    assert sent < (256 << 20), "the client was never stopped: no backpressure"
    assert after - before < 8 << 20


def test_idle_connections_are_closed(node_factory: Any, echo_server: Any) -> None:
    node = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", "--idle-timeout", "1")
    with open_socks(proxy(node), "127.0.0.1", echo_server.port) as sock:
        sock.sendall(b"hi")
        assert recv_exact(sock, 2) == b"hi"
        sock.settimeout(20)
        assert sock.recv(1) == b""  # closed by the node, not by us


def test_a_fin_right_behind_the_last_bytes_is_seen(
    relay_node: RunningNode, half_close_server: HalfCloseServer
) -> None:
    """Data and FIN queued together arrive with one edge; the relay must still see the end."""
    for payload in (b"tiny", b"x" * 300, b"y" * 70_000):
        server = HalfCloseServer()
        try:
            with open_socks(proxy(relay_node), "127.0.0.1", server.port) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
        finally:
            server.close()


def test_handshake_early_data_and_fin_in_one_segment(
    relay_node: RunningNode, half_close_server: HalfCloseServer
) -> None:
    with socket.create_connection(proxy(relay_node), timeout=10) as sock:
        sock.sendall(whole_handshake(half_close_server.port, b"all at once"))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data[:6] == b"\x05\x02\x01\x00\x05\x00"
    assert data[14:] == f"11 {hashlib.sha256(b'all at once').hexdigest()}".encode()
