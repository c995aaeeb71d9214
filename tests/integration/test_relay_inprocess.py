"""The relay in this process over real loopback TCP: the C pumps, the Python ones, copying.

The live-node tests (test_relay.py) check what a client sees; these look inside: byte
counts, the error a relay closes with, pipes going back to the pool, and what the C
extension (resistance.net._splice) does with wrong arguments.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from resistance.net import native, reactor
from resistance.net.reactor import Reactor
from resistance.net.relay import HAS_SPLICE, PipePool, Relay

if native.NATIVE:
    from resistance.net import _splice

pytestmark = pytest.mark.skipif(not HAS_SPLICE, reason="splice(2) is Linux-only")

MODES = ["c", "python", "copy"]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(far end, node end) of one loopback TCP connection; the node's end non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.create_connection(listener.getsockname())
        near, _ = listener.accept()
    near.setblocking(False)
    far.setblocking(False)
    return far, near


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    reactor: Reactor
    relay: Relay
    user: socket.socket  # the client's end
    far: socket.socket  # the destination's end
    pool: object
    closed: list[OSError | None] = field(default_factory=list)


@pytest.fixture
def in_c_if_built() -> Iterator[None]:
    if not native.NATIVE:
        pytest.skip(f"the C extension is not here: {native.UNAVAILABLE_BECAUSE}")
    yield


@pytest.fixture(params=MODES)
async def rig(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    mode = request.param
    if mode == "c" and not native.NATIVE:
        pytest.skip(f"the C extension is not here: {native.UNAVAILABLE_BECAUSE}")
    if mode != "c":
        monkeypatch.setattr(reactor, "NATIVE", False)  # Reactor.dispatch in Python
    loop = asyncio.get_running_loop()
    r = Reactor(loop)
    pool: object = None
    if mode == "c":
        pool = _splice.PipePool(size=1 << 20)
    elif mode == "python":
        pool = PipePool(size=1 << 20)
    user, client_end = tcp_pair()
    far, upstream_end = tcp_pair()
    rig = Rig(loop, r, None, user, far, pool)  # type: ignore[arg-type]
    rig.relay = Relay(
        r,
        client_end,
        upstream_end,
        pool=pool,  # type: ignore[arg-type]
        on_close=lambda _relay, exc: rig.closed.append(exc),
    )
    rig.relay.start(client_unread=False, upstream_unread=False)
    yield rig
    rig.relay.close()
    user.close()
    far.close()
    r.close()
    if pool is not None:
        pool.close()  # type: ignore[attr-defined]


async def read_until_eof(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10):
        data += chunk
    return bytes(data)


async def test_bytes_both_ways_then_half_closes_then_close(rig: Rig) -> None:
    up = os.urandom(3 << 20)
    down = os.urandom(1 << 20)

    async def client() -> bytes:
        await rig.loop.sock_sendall(rig.user, up)
        rig.user.shutdown(socket.SHUT_WR)
        return await read_until_eof(rig.loop, rig.user)

    async def server() -> bytes:
        got = await read_until_eof(rig.loop, rig.far)  # the client's FIN came through
        await rig.loop.sock_sendall(rig.far, down)  # the other direction still flows
        rig.far.shutdown(socket.SHUT_WR)
        return got

    from_client, from_server = await asyncio.gather(server(), client())
    assert from_client == up and from_server == down
    for _ in range(100):
        if rig.closed:
            break
        await asyncio.sleep(0.01)
    assert rig.closed == [None] and rig.relay.closed
    assert (rig.relay.bytes_up, rig.relay.bytes_down) == (len(up), len(down))
    if rig.pool is not None:
        assert len(rig.pool) >= 1  # type: ignore[arg-type]  # empty pipes went back


async def test_a_reset_destination_closes_the_relay_with_its_error(rig: Rig) -> None:
    rig.far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.far.close()  # RST
    await rig.loop.sock_sendall(rig.user, b"x" * 100_000)
    for _ in range(200):
        if rig.closed:
            break
        await asyncio.sleep(0.01)
    (exc,) = rig.closed
    assert isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE), exc
    try:  # the client's side was closed too: EOF, or a reset for its unread bytes
        rest = await read_until_eof(rig.loop, rig.user)
    except ConnectionResetError:
        rest = b""
    assert rest == b""


@pytest.mark.parametrize("kind", ["c", "python"])
def test_pipe_pool_reuses_empty_pipes_and_keeps_a_bounded_number(kind: str) -> None:
    if kind == "c" and not native.NATIVE:
        pytest.skip(f"the C extension is not here: {native.UNAVAILABLE_BECAUSE}")
    pool = _splice.PipePool(keep=1) if kind == "c" else PipePool(keep=1)
    first, second = pool.get(), pool.get()
    assert first != second and pool.slots >= 1
    pool.put(first)
    pool.put(second)  # over `keep`: closed, not kept
    assert len(pool) == 1
    with pytest.raises(OSError):
        os.fstat(second[0])
    assert pool.get() == first
    pool.put(first)
    pool.close()
    with pytest.raises(OSError):
        os.fstat(first[1])


def test_the_c_types_refuse_wrong_arguments(in_c_if_built: None) -> None:
    with pytest.raises(ValueError, match="keep"):
        _splice.PipePool(keep=-1)
    with pytest.raises(TypeError):
        _splice.Pump(None, 3, 4, PipePool(), 1 << 20, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk"):
        _splice.Pump(None, 3, 4, _splice.PipePool(), 0, None)
    with pytest.raises(TypeError):
        _splice.Side(None, "up", "down")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _splice.dispatch(0, [], 64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events"):
        _splice.dispatch(0, {}, 0)
    with pytest.raises(OSError):
        _splice.dispatch(-1, {}, 64)  # not an epoll descriptor


def test_dispatch_skips_forgotten_descriptors_and_calls_python_handlers(
    in_c_if_built: None,
) -> None:
    ep = select.epoll()
    a, b = socket.socketpair()
    try:
        ep.register(a.fileno(), select.EPOLLOUT)
        ep.register(b.fileno(), select.EPOLLOUT)
        seen: list[int] = []
        _splice.dispatch(ep.fileno(), {b.fileno(): seen.append}, 64)  # a's event: no handler
        assert seen == [select.EPOLLOUT]
    finally:
        ep.close()
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["c", "python"])
async def test_a_handler_that_raises_does_not_cost_the_others_their_events(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edge-triggered: an event not handled in the poll that returned it never comes back."""
    if kind == "c" and not native.NATIVE:
        pytest.skip(f"the C extension is not here: {native.UNAVAILABLE_BECAUSE}")
    if kind == "python":
        monkeypatch.setattr(reactor, "NATIVE", False)
    loop = asyncio.get_running_loop()
    errors: list[object] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    r = Reactor(loop)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    seen: list[int] = []

    def broken(events: int) -> None:
        raise RuntimeError("a handler's bug")

    try:
        r.watch(a.fileno(), broken)  # both writable at once: one poll returns both
        r.watch(c.fileno(), seen.append)
        for _ in range(100):
            if seen and errors:
                break
            await asyncio.sleep(0.01)
        assert seen and seen[0] & select.EPOLLOUT
        assert isinstance(errors[0], RuntimeError)
    finally:
        loop.set_exception_handler(None)
        r.close()
        for s in (a, b, c, d):
            s.close()
