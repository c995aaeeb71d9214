"""The real network seam (:class:`~resistance.node.net.SocketNetwork`) on loopback.

The session tests drive a scripted network; these check that the real one
keeps the same promises: ``done`` once, with a connected non-blocking socket
or the errno the kernel gave, nothing after ``cancel()``, BIND peers handed
over non-blocking, datagrams announced.  With and without the reactor.  And a
real node takes whatever its sessions resolve and dial from the network it is given.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from resistance.config import Endpoint, NodeSettings
from resistance.net.reactor import HAS_EPOLL, Reactor
from resistance.node.fakenet import DialResult, ScriptedNetwork
from resistance.node.net import SocketNetwork
from resistance.node.policy import EgressPolicy
from resistance.node.server import Node
from resistance.proto.socks5 import (
    Address,
    Command,
    Reply,
    client_greeting,
    client_request,
    parse_reply,
)


@pytest.fixture(params=["reactor", "loop"] if HAS_EPOLL else ["loop"])
async def net(request: pytest.FixtureRequest) -> AsyncIterator[SocketNetwork]:
    loop = asyncio.get_running_loop()
    reactor = Reactor(loop) if request.param == "reactor" else None
    yield SocketNetwork(loop, reactor)
    if reactor is not None:
        reactor.close()


class Outcome:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, int | None, bool]] = []
        self.event = asyncio.Event()

    def __call__(self, stream: Any, err: int | None, unread: bool) -> None:
        self.calls.append((stream, err, unread))
        self.event.set()

    async def wait(self) -> tuple[Any, int | None, bool]:
        await asyncio.wait_for(self.event.wait(), 10)
        await asyncio.sleep(0.01)  # a second call would show up here
        assert len(self.calls) == 1, "done is called exactly once"
        return self.calls[0]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dial_connects_to_a_listener(net: SocketNetwork) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        done = Outcome()
        net.dial(socket.AF_INET, ("127.0.0.1", port), done)
        stream, err, _ = await done.wait()
        assert err == 0
        try:
            assert stream.getpeername()[1] == port
            assert not stream.getblocking()
            assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            if net.reactor is not None:
                net.reactor.forget(stream.fileno())
            stream.close()


async def test_dial_to_a_closed_port_reports_econnrefused(net: SocketNetwork) -> None:
    done = Outcome()
    net.dial(socket.AF_INET, ("127.0.0.1", closed_port()), done)
    stream, err, unread = await done.wait()
    assert (stream, err, unread) == (None, errno.ECONNREFUSED, False)


async def test_dial_of_an_unsupported_family_fails_at_once(net: SocketNetwork) -> None:
    done = Outcome()
    pending = net.dial(socket.AF_INET6, ("::ffff:127.0.0.1", closed_port(), 0, 0), done)
    if pending is None:  # settled inside dial(): refused at once or no IPv6 here
        assert done.calls and done.calls[0][0] is None and done.calls[0][1] != 0
    else:
        stream, err, _ = await done.wait()
        assert stream is None and err != 0


async def test_cancelled_dial_never_reports(net: SocketNetwork) -> None:
    # A listener with a full backlog is not enough to hold a loopback connect, so
    # cancel straight away: the connect is still in progress or just settled
    # (then the loop has not yet run the callback), and either way done stays silent.
    with socket.create_server(("127.0.0.1", 0)) as server:
        done = Outcome()
        pending = net.dial(socket.AF_INET, server.getsockname()[:2], done)
        if pending is None:
            pytest.skip("the connect completed inside dial() on this kernel")
        pending.cancel()
        pending.cancel()  # idempotent
        await asyncio.sleep(0.05)
        assert done.calls == []


async def test_resolve_gives_family_and_sockaddr_pairs(net: SocketNetwork) -> None:
    pairs = await net.resolve("localhost", 8080)
    assert (socket.AF_INET, ("127.0.0.1", 8080)) in pairs
    with pytest.raises(OSError):
        await net.resolve("no-such-name.invalid", 80)


async def test_bind_listener_hands_over_its_peer(net: SocketNetwork) -> None:
    arrived: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
    listener = net.listen("127.0.0.1", lambda stream, addr: arrived.put_nowait((stream, addr)))
    host, port = listener.address()
    with socket.create_connection((host, port), timeout=5) as client:
        stream, addr = await asyncio.wait_for(arrived.get(), 10)
        try:
            assert addr[1] == client.getsockname()[1]
            assert not stream.getblocking()
        finally:
            stream.close()
    listener.close()
    listener.close()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=5).close()


async def test_datagram_socket_is_watched_until_unwatched(net: SocketNetwork) -> None:
    sock = net.open_datagram(socket.AF_INET, ("127.0.0.1", 0))
    got: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

    def readable() -> None:
        while True:
            try:
                got.put_nowait(sock.recvfrom(2048))
            except BlockingIOError:
                return

    net.watch_readable(sock, readable)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.sendto(b"ping", sock.getsockname())
        data, source = await asyncio.wait_for(got.get(), 10)
        assert (data, source) == (b"ping", sender.getsockname())
    net.unwatch(sock)
    sock.close()


@pytest.mark.parametrize("relay", ["splice", "copy"])
async def test_node_sessions_resolve_and_dial_through_the_injected_network(relay: str) -> None:
    """A real node and a real client socket, the destination side scripted: the
    node's sessions take everything they resolve and dial from ``Node(net=...)``."""
    net = ScriptedNetwork(
        names={"intranet.example": ["10.0.0.7"], "public.example": ["203.0.113.5"]},
        dials={"203.0.113.5": DialResult.REFUSED},
    )
    node = Node(
        NodeSettings(listen=(Endpoint("127.0.0.1", 0),), relay=relay),
        users=None,
        policy=EgressPolicy(allow=["203.0.113.0/24"]),
        net=net,
    )
    await node.start()
    proxy = ("127.0.0.1", node.bound[0].port)

    def ask(name: str) -> Reply:
        with socket.create_connection(proxy, timeout=5) as client:
            client.sendall(
                client_greeting(auth=False)
                + client_request(Command.CONNECT, Address.from_host(name, 443))
            )
            data = b""
            while (parsed := parse_reply(data[2:])) is None:
                chunk = client.recv(512)
                assert chunk, f"closed after {data.hex()}"
                data += chunk
            return parsed[0]

    loop = asyncio.get_running_loop()
    try:
        assert await loop.run_in_executor(None, ask, "intranet.example") is Reply.NOT_ALLOWED
        assert await loop.run_in_executor(None, ask, "public.example") is Reply.CONNECTION_REFUSED
    finally:
        await node.stop()
    assert [lookup[0] for lookup in net.lookups] == ["intranet.example", "public.example"]
    assert [a.sockaddr[0] for a in net.attempts] == ["203.0.113.5"]
    assert node.metrics.policy_refusals.labels("private").value == 1
