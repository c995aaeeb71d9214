"""A live node under hostile load: garbage, stalls, floods and connection caps.

The node must shed every bad client within its handshake timeout, keep
serving good clients while it does, and give back what the bad clients cost
(sockets exactly, memory within a margin).  Every client here is written by
hand on asyncio streams, every wait is bounded, and no test asserts on how
long anything took: timeouts are only upper bounds for waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import EchoServer, RunningNode

USER = b"alice"
PASSWORD = b"secret"
HANDSHAKE_TIMEOUT = 3.0
# Upper bound for the node to close a stalled client: its handshake timeout
# plus room for a loaded 2-core machine.  Only ever used as a limit to wait.
CLOSE_WITHIN = HANDSHAKE_TIMEOUT + 12.0
STORM = 1000
GOOD_CLIENTS = 50
GOOD_CONCURRENCY = 10

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="watches the node through Linux's /proc"
)


# -- a SOCKS5 client, by hand ---------------------------------------------------------


class Socks5Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"SOCKS5 reply {code:#04x}")
        self.code = code


def greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def auth(user: bytes = USER, password: bytes = PASSWORD) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def connect_request(host: str, port: int, command: int = 1) -> bytes:
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        addr = b"\x01" + packed
    except OSError:
        try:
            addr = b"\x04" + socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            name = host.encode()
            addr = b"\x03" + bytes((len(name),)) + name
    return bytes((5, command, 0)) + addr + struct.pack("!H", port)


async def read_reply(reader: asyncio.StreamReader) -> int:
    """Read one request reply whole; return its code."""
    head = await reader.readexactly(4)
    assert head[0] == 5, head
    atyp = head[3]
    if atyp == 1:
        await reader.readexactly(4 + 2)
    elif atyp == 4:
        await reader.readexactly(16 + 2)
    elif atyp == 3:
        (n,) = await reader.readexactly(1)
        await reader.readexactly(n + 2)
    else:
        raise AssertionError(f"bad ATYP in reply: {head!r}")
    return head[1]


async def socks5_open(
    node: RunningNode, dest_host: str, dest_port: int, *, local_host: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT through ``node`` as alice; raises Socks5Refused on a failure reply."""
    local = (local_host, 0) if local_host else None
    reader, writer = await asyncio.open_connection(node.host, node.port, local_addr=local)
    try:
        writer.write(greeting(2))
        assert await reader.readexactly(2) == b"\x05\x02"
        writer.write(auth())
        assert await reader.readexactly(2) == b"\x01\x00"
        writer.write(connect_request(dest_host, dest_port))
        code = await read_reply(reader)
        if code != 0:
            raise Socks5Refused(code)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def echo_round_trip(node: RunningNode, echo: EchoServer, payload: bytes) -> None:
    reader, writer = await asyncio.wait_for(socks5_open(node, echo.host, echo.port), 20)
    try:
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        assert got == payload
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def good_clients(node: RunningNode, echo: EchoServer, count: int, seed: int) -> int:
    """``count`` echo round trips, ``GOOD_CONCURRENCY`` at a time; return how many succeeded."""
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randrange(1, 64 * 1024)) for _ in range(count)]
    gate = asyncio.Semaphore(GOOD_CONCURRENCY)

    async def one(payload: bytes) -> None:
        async with gate:
            await echo_round_trip(node, echo, payload)

    results = await asyncio.gather(*(one(p) for p in payloads), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} good clients failed, first: {failures[0]!r}"
    return len(results)


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """Read and discard until EOF or reset; False if the peer kept it open ``within`` s."""
    deadline = time.monotonic() + within
    for _ in range(10_000):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return False
        except OSError:
            return True  # reset: closed with unread bytes, still closed
        if not data:
            return True
    return False


async def still_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Does the node still serve this idle connection?  Ask it for a method choice."""
    try:
        writer.write(greeting(2))
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(2), 10) == b"\x05\x02"
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False


# -- watching the node's process ------------------------------------------------------------


def socket_fds(pid: int) -> int:
    """How many sockets the process holds (pipes of the splice pool do not count)."""
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(fd_dir / fd).startswith("socket:"):
                count += 1
    return count


def tcp_peers(pid: int) -> int:
    """TCP connections the process holds, listeners aside."""
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status != psutil.CONN_LISTEN)


def wait_until(predicate: Callable[[], bool], within: float = 20.0) -> bool:
    """Poll ``predicate`` until true or ``within`` seconds pass (bounded in count too)."""
    deadline = time.monotonic() + within
    for _ in range(int(within / 0.05) + 1):
        if predicate():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return predicate()


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def checked_nodes(node_factory: Any) -> Iterator[Callable[..., RunningNode]]:
    """node_factory whose nodes must stop cleanly and never print a traceback."""
    started: list[RunningNode] = []

    def start(*args: str, **kwargs: Any) -> RunningNode:
        node = node_factory(*args, **kwargs)
        started.append(node)
        return node

    yield start
    for node in started:
        status = node.stop()
        err = node.stderr()
        assert "Traceback" not in err, err
        assert status == 0, f"node exited with {status}: {err}"


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room in this process for the storm's sockets and the echo server's."""
    need = 2 * STORM + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def hostile_node(start: Callable[..., RunningNode], *extra: str) -> RunningNode:
    return start(
        "--user",
        "alice:secret",
        "--allow",
        "127.0.0.0/8",
        "--handshake-timeout",
        str(HANDSHAKE_TIMEOUT),
        *extra,
    )


# -- the storm -------------------------------------------------------------------------


def partial_greetings(rng: random.Random) -> bytes:
    """A greeting cut short: the version only, or fewer methods than announced."""
    if rng.random() < 0.3:
        return b"\x05"
    n = rng.randrange(2, 256)
    return bytes((5, n)) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, n)))


def partial_requests(rng: random.Random) -> bytes:
    """A valid greeting and login, then a request cut short."""
    request = connect_request("x" * rng.randrange(1, 200), 443)
    return greeting(2) + auth() + request[: rng.randrange(1, len(request) - 1)]


def garbage(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(1, 4096))


async def storm(node: RunningNode, echo: EchoServer, seed: int) -> dict[str, int]:
    """``STORM`` bad clients at once; good clients meanwhile; every bad one must be shed."""
    rng = random.Random(seed)
    kinds = [garbage, partial_greetings, partial_requests]
    plans = [(kinds[i % 3].__name__, kinds[i % 3](rng)) for i in range(STORM)]

    async def bad(data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.open_connection(node.host, node.port)
        except OSError:
            return None
        writer.write(data)
        return reader, writer

    opened = await asyncio.gather(*(bad(data) for _, data in plans))
    assert all(o is not None for o in opened), "the node refused connections it has room for"
    try:
        served = await good_clients(node, echo, GOOD_CLIENTS, seed)
        closed = await asyncio.gather(*(closed_by_peer(o[0], CLOSE_WITHIN) for o in opened if o))
    finally:
        for o in opened:
            if o is not None:
                o[1].close()
    lingering: dict[str, int] = {}
    for (kind, _), was_closed in zip(plans, closed, strict=True):
        if not was_closed:
            lingering[kind] = lingering.get(kind, 0) + 1
    assert not lingering, f"the node kept stalled clients open past its timeout: {lingering}"
    return {"good": served, "bad": len(opened)}


def test_storm_of_bad_clients_leaves_the_node_serving(
    many_descriptors: None, checked_nodes: Any, echo_server: EchoServer
) -> None:
    node = hostile_node(checked_nodes, "--max-connections-per-ip", "5000")
    proc = psutil.Process(node.proc.pid)

    # Warm-up: good clients bring the code paths, the allocator and the
    # splice pipe pool to their working size before the baseline is taken.
    asyncio.run(good_clients(node, echo_server, GOOD_CLIENTS, seed=1))
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)
    baseline_rss = proc.memory_info().rss
    baseline_sockets = socket_fds(node.proc.pid)

    outcome = asyncio.run(storm(node, echo_server, seed=2))
    assert outcome == {"good": GOOD_CLIENTS, "bad": STORM}

    # Sockets come back exactly: no session, relay or timer keeps one alive.
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0), proc.net_connections("tcp")
    assert wait_until(lambda: socket_fds(node.proc.pid) == baseline_sockets)

    # Memory comes back within a margin.  Freed objects go back to pymalloc's
    # arenas and glibc's heap, which give memory back to the system only when
    # a whole arena or the top of the heap empties, so RSS keeps the
    # high-water mark of 1,000 sessions alive at once (measured at about
    # 1.5 MiB on a 2-core machine).  5 MiB leaves room for that on other
    # allocators and machines, yet a leak that outlives its session by 2.5 KiB
    # or more (a receive buffer, a parser, a 64 KiB copy buffer) exceeds it
    # within the two storms.  Leaked sockets are caught exactly, above.
    margin = 5 * 1024 * 1024
    after_first = proc.memory_info().rss
    assert after_first <= baseline_rss + margin, (baseline_rss, after_first)

    outcome = asyncio.run(storm(node, echo_server, seed=3))
    assert outcome == {"good": GOOD_CLIENTS, "bad": STORM}
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)
    assert wait_until(lambda: socket_fds(node.proc.pid) == baseline_sockets)
    after_second = proc.memory_info().rss
    assert after_second <= baseline_rss + margin, (baseline_rss, after_first, after_second)
    asyncio.run(good_clients(node, echo_server, 5, seed=4))


# -- malformed and oversized handshakes ---------------------------------------------------


async def exchange(node: RunningNode, data: bytes, expect: bytes) -> bool:
    """Send ``data``, read exactly ``expect`` back, then the node must close."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        writer.write(data)
        got = await asyncio.wait_for(reader.readexactly(len(expect)), 20)
        assert got == expect, (data[:40], got)
        return await closed_by_peer(reader, CLOSE_WITHIN)
    finally:
        writer.close()


async def request_code(node: RunningNode, request: bytes) -> tuple[int, bool]:
    """Log in, send ``request``; return the reply code and whether the node then closed."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        writer.write(greeting(2) + auth() + request)
        assert await asyncio.wait_for(reader.readexactly(4), 20) == b"\x05\x02\x01\x00"
        code = await asyncio.wait_for(read_reply(reader), 20)
        return code, await closed_by_peer(reader, CLOSE_WITHIN)
    finally:
        writer.close()


async def stalls_then_closed(node: RunningNode, data: bytes) -> bool:
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        writer.write(data)
        return await closed_by_peer(reader, CLOSE_WITHIN)
    finally:
        writer.close()


async def malformed_handshakes(node: RunningNode, echo: EchoServer) -> None:
    all_but_login = bytes(m for m in range(256) if m != 2)
    long_name = "a" * 255
    checks = [
        # 255 methods, one of them username/password, then the longest
        # credentials RFC 1929 allows, wrong: failure status, then close.
        exchange(
            node,
            bytes((5, 255)) + bytes(range(1, 256)) + auth(b"u" * 255, b"p" * 255),
            b"\x05\x02\x01\x01",
        ),
        # 255 methods and none acceptable.
        exchange(node, bytes((5, 255)) + all_but_login, b"\x05\xff"),
        # A bad sub-negotiation version after a good greeting, with 1 MiB behind it.
        stalls_then_closed(node, greeting(2) + b"\x07" + os.urandom(1 << 20)),
        # Length bytes that promise more than ever comes.
        stalls_then_closed(node, greeting(2) + b"\x01\xff" + b"u" * 100),
        stalls_then_closed(node, greeting(2) + auth() + b"\x05\x01\x00\x03\xff" + b"h" * 200),
        stalls_then_closed(node, bytes((5, 255)) + bytes(100)),
    ]
    results = await asyncio.gather(*checks)
    assert all(results), results

    codes = await asyncio.gather(
        request_code(node, connect_request(long_name, echo.port)),  # 255-byte name
        request_code(node, b"\x05\x01\x00\x03\x00\x00\x50"),  # empty name
        request_code(node, b"\x05\x01\x00\x09" + bytes(6)),  # unknown address type
        request_code(node, b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50"),  # unknown command
        request_code(node, b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50"),  # bad version
    )
    assert codes == [(4, True), (4, True), (8, True), (7, True), (1, True)], codes

    # A client that pipelines its whole handshake with 1 MiB of data behind it
    # gets every byte relayed: the data is early data, not an oversized field.
    payload = os.urandom(1 << 20)
    reader, writer = await asyncio.open_connection(node.host, node.port)
    try:
        writer.write(greeting(2) + auth() + connect_request(echo.host, echo.port) + payload)
        assert await asyncio.wait_for(reader.readexactly(4), 20) == b"\x05\x02\x01\x00"
        assert await asyncio.wait_for(read_reply(reader), 20) == 0
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
        assert got == payload
    finally:
        writer.close()


def test_oversized_and_malformed_fields_are_refused(
    checked_nodes: Any, echo_server: EchoServer
) -> None:
    node = hostile_node(checked_nodes)
    asyncio.run(malformed_handshakes(node, echo_server))
    asyncio.run(good_clients(node, echo_server, 5, seed=5))
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)


# -- SOCKS4 -----------------------------------------------------------------------------


async def socks4_flood(node: RunningNode, count: int) -> list[bytes]:
    """SOCKS4 and SOCKS4a CONNECTs at once; return what each got before the close."""

    async def one(i: int) -> bytes:
        if i % 2:
            request = b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"user%d\x00" % i
        else:
            request = b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00example.com\x00"
        reader, writer = await asyncio.open_connection(node.host, node.port)
        try:
            writer.write(request)
            got = b""
            for _ in range(100):
                try:
                    chunk = await asyncio.wait_for(reader.read(64), CLOSE_WITHIN)
                except OSError:
                    break
                if not chunk:
                    break
                got += chunk
            return got
        finally:
            writer.close()

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_socks4_flood_is_rejected_and_shed(
    many_descriptors: None, checked_nodes: Any, echo_server: EchoServer
) -> None:
    node = hostile_node(checked_nodes, "--max-connections-per-ip", "5000")
    answers = asyncio.run(socks4_flood(node, 600))
    # A SOCKS4 client understands "request rejected" (VN=0, CD=91); the node
    # says that, serves nothing, and closes.
    assert set(answers) == {b"\x00\x5b" + bytes(6)}
    asyncio.run(good_clients(node, echo_server, 5, seed=6))
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)


# -- connection caps -----------------------------------------------------------------------


async def hold(node: RunningNode, local_host: str) -> tuple[asyncio.StreamReader, Any]:
    """A connection the node has accepted and answers (a greeting, then nothing)."""
    reader, writer = await asyncio.open_connection(node.host, node.port, local_addr=(local_host, 0))
    assert await still_open(reader, writer), f"the node dropped a connection from {local_host}"
    return reader, writer


async def refused_at_once(node: RunningNode, local_host: str) -> bool:
    """The node accepts and closes at once, before any byte (the handshake timeout is long)."""
    reader, writer = await asyncio.open_connection(node.host, node.port, local_addr=(local_host, 0))
    try:
        return await closed_by_peer(reader, 10)
    finally:
        writer.close()


async def served_again(node: RunningNode, echo: EchoServer, local_host: str) -> bool:
    """A full round trip, retried while the node finishes closing what was released."""
    for _ in range(100):
        try:
            reader, writer = await asyncio.wait_for(
                socks5_open(node, echo.host, echo.port, local_host=local_host), 10
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(b"again")
            return await asyncio.wait_for(reader.readexactly(5), 10) == b"again"
        finally:
            writer.close()
    return False


async def at_the_cap(
    node: RunningNode, echo: EchoServer, sources: list[str], over: str, other: str | None
) -> None:
    held = [await hold(node, src) for src in sources]
    try:
        assert await refused_at_once(node, over)
        if other is not None:
            extra = await hold(node, other)  # another address has its own allowance
            held.append(extra)
        # The connections the node holds are not disturbed by the refusals.
        for reader, writer in held:
            writer.write(auth())
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"\x01\x00"
        for _, writer in held[:3]:
            writer.close()
        del held[:3]
        assert await served_again(node, echo, over)
    finally:
        for _, writer in held:
            writer.close()


def test_per_address_limit(checked_nodes: Any, echo_server: EchoServer) -> None:
    node = checked_nodes(
        "--user",
        "alice:secret",
        "--allow",
        "127.0.0.0/8",
        "--handshake-timeout",
        "60",
        "--max-connections-per-ip",
        "10",
    )
    asyncio.run(at_the_cap(node, echo_server, ["127.0.0.1"] * 10, "127.0.0.1", "127.0.0.2"))
    asyncio.run(good_clients(node, echo_server, 5, seed=7))
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)


def test_total_limit(checked_nodes: Any, echo_server: EchoServer) -> None:
    node = checked_nodes(
        "--user",
        "alice:secret",
        "--allow",
        "127.0.0.0/8",
        "--handshake-timeout",
        "60",
        "--max-connections",
        "10",
    )
    sources = ["127.0.0.1"] * 5 + ["127.0.0.2"] * 5
    asyncio.run(at_the_cap(node, echo_server, sources, "127.0.0.3", None))
    asyncio.run(good_clients(node, echo_server, 5, seed=8))
    assert wait_until(lambda: tcp_peers(node.proc.pid) == 0)
