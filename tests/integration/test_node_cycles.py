"""A finished connection leaves no reference cycle behind in the node.

Objects caught in a cycle wait for the cyclic garbage collector, which then
walks every young object on the node's hot path; an acyclic session, relay
and pump pair is freed by reference counting the moment it closes.  The node
runs in this process (on this test's event loop) so that the collector's
findings can be inspected; the clients are blocking sockets in a worker
thread, which make no cycles of their own.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections import Counter
from typing import Any

import pytest

from resistance.config import Endpoint, NodeSettings
from resistance.node.policy import EgressPolicy
from resistance.node.server import Node
from resistance.node.users import UserDB
from resistance.proto.socks5 import (
    Address,
    Command,
    Reply,
    client_auth,
    client_greeting,
    client_request,
)
from tests.integration.socksclient import open_socks, recv_exact


def _cycle(proxy: tuple[str, int], port: int) -> None:
    with open_socks(proxy, "127.0.0.1", port) as sock:
        sock.sendall(b"x" * 64)
        assert recv_exact(sock, 64) == b"x" * 64


def _exchange(proxy: tuple[str, int], *messages: tuple[bytes, int]) -> bytes:
    """Send each message and read its answer's length; what the last one got.

    Raw bytes, not the project's client helpers: a failure there raises, and an
    exception's traceback is a cycle of this (client) side.
    """
    got = b""
    with socket.create_connection(proxy, timeout=10) as sock:
        for message, answer in messages:
            sock.sendall(message)
            got = recv_exact(sock, answer)
    return got


def _refused(proxy: tuple[str, int], port: int) -> None:
    reply = _exchange(
        proxy,
        (client_greeting(auth=True), 2),
        (client_auth(b"alice", b"secret"), 2),
        (client_request(Command.CONNECT, Address.from_host("127.0.0.1", port)), 10),
    )
    assert reply[1] == Reply.CONNECTION_REFUSED


def _bad_password(proxy: tuple[str, int]) -> None:
    reply = _exchange(
        proxy,
        (client_greeting(auth=True), 2),
        (client_auth(b"alice", b"wrong"), 2),
    )
    assert reply == b"\x01\x01"


def _project_garbage() -> Counter[str]:
    """Collect, and count what the collector found of this project's types."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(
            type(obj).__qualname__
            for obj in gc.garbage
            if type(obj).__module__.startswith("resistance.")
            or getattr(getattr(obj, "__self__", None), "__module__", "").startswith("resistance.")
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


@pytest.mark.parametrize("relay", ["splice", "copy"])
async def test_closed_connections_leave_no_cycles(relay: str, echo_server: Any) -> None:
    node = Node(
        NodeSettings(listen=(Endpoint("127.0.0.1", 0),), relay=relay),
        users=UserDB({"alice": "secret"}),
        policy=EgressPolicy(allow=["127.0.0.0/8"]),
    )
    await node.start()
    proxy = ("127.0.0.1", node.bound[0].port)
    closed = socket.create_server(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    loop = asyncio.get_running_loop()
    was_enabled = gc.isenabled()
    try:
        await loop.run_in_executor(None, _cycle, proxy, echo_server.port)  # warm up
        gc.collect()
        gc.disable()
        for _ in range(20):
            await loop.run_in_executor(None, _cycle, proxy, echo_server.port)
        await loop.run_in_executor(None, _refused, proxy, refused_port)
        await loop.run_in_executor(None, _bad_password, proxy)
        for _ in range(100):  # the node closes its side after the client's
            if not node.sessions:
                break
            await asyncio.sleep(0.02)
        assert not node.sessions
        assert _project_garbage() == Counter()
    finally:
        if was_enabled:
            gc.enable()
        await node.stop()
