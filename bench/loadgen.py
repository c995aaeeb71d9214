"""The load generator: a minimal SOCKS5 client and the four measurements built on it.

Why hand-written: the harness must speak SOCKS5 itself so that every proxy sees exactly the
same bytes (greeting ``05 01 02``, RFC 1929 auth, CONNECT with ATYP=1), and so that the
client is cheap enough not to be what limits the numbers.

Theory of operation:

* Bulk transfers and ping-pong use blocking sockets in threads with a preallocated 1 MiB
  buffer; the GIL is released in every send/recv, and Python does one call per MiB.
* Connection cycles and held connections run on uvloop (when installed) with a bare
  Protocol that walks the handshake as a small state machine, one callback per reply,
  instead of a coroutine per step.
* Every wait is bounded: sockets carry timeouts, loops carry deadlines, and the async
  runs sit under ``asyncio.timeout``.

A route is either direct (``proxy=None``: connect straight to the sink) or through a proxy
with optional username/password.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sink import CHUNK, DOWNLOAD, HEADER, UPLOAD, UPLOAD_DONE

T = TypeVar("T")

SOCKS_VERSION = 0x05
AUTH_VERSION = 0x01


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Atyp(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class BenchError(Exception):
    """A proxy misbehaved or a measurement could not complete."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """How the load generator reaches ``dest``: straight, or via ``proxy``."""

    dest: tuple[str, int]
    proxy: Proxy | None = None

    @property
    def first_hop(self) -> tuple[str, int]:
        return self.dest if self.proxy is None else (self.proxy.host, self.proxy.port)


@dataclass(frozen=True, slots=True)
class Handshake:
    """The three client messages of a SOCKS5 CONNECT, serialized once per route."""

    greeting: bytes
    auth: bytes | None
    connect: bytes

    @classmethod
    def for_route(cls, route: Route) -> Handshake:
        proxy = route.proxy
        assert proxy is not None
        if proxy.username is None or proxy.password is None:
            greeting, auth = bytes((SOCKS_VERSION, 1, Method.NO_AUTH)), None
        else:
            user, password = proxy.username.encode(), proxy.password.encode()
            greeting = bytes((SOCKS_VERSION, 1, Method.USERNAME_PASSWORD))
            auth = bytes((AUTH_VERSION, len(user))) + user + bytes((len(password),)) + password
        host, port = route.dest
        connect = (
            bytes((SOCKS_VERSION, 0x01, 0x00, Atyp.IPV4))
            + ipaddress.IPv4Address(host).packed
            + struct.pack("!H", port)
        )
        return cls(greeting=greeting, auth=auth, connect=connect)

    @property
    def method(self) -> Method:
        return Method(self.greeting[2])


def connect_reply_length(head: bytes | bytearray) -> int:
    """Total length of a CONNECT reply, from its first five bytes; raises on a refusal."""
    if head[0] != SOCKS_VERSION:
        raise BenchError(f"bad reply version {head[0]:#x}")
    if head[1] != 0x00:
        raise BenchError(f"CONNECT refused with reply code {head[1]:#x}")
    atyp = head[3]
    if atyp == Atyp.IPV4:
        return 4 + 4 + 2
    if atyp == Atyp.IPV6:
        return 4 + 16 + 2
    if atyp == Atyp.DOMAIN:
        return 4 + 1 + head[4] + 2
    raise BenchError(f"bad reply address type {atyp:#x}")


def check_method_reply(reply: bytes | bytearray, wanted: Method) -> None:
    if reply[0] != SOCKS_VERSION or reply[1] != wanted:
        raise BenchError(f"server chose method {reply[1]:#x}, wanted {wanted:#x}")


def check_auth_reply(reply: bytes | bytearray) -> None:
    if reply[1] != 0x00:
        raise BenchError(f"username/password rejected (status {reply[1]:#x})")


# --- blocking client ------------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise BenchError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def open_connection(route: Route, timeout: float = 10.0) -> socket.socket:
    """A blocking socket to ``route.dest``, through the SOCKS5 proxy when there is one."""
    sock = socket.create_connection(route.first_hop, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if route.proxy is not None:
            hs = Handshake.for_route(route)
            sock.sendall(hs.greeting)
            check_method_reply(_recv_exactly(sock, 2), hs.method)
            if hs.auth is not None:
                sock.sendall(hs.auth)
                check_auth_reply(_recv_exactly(sock, 2))
            sock.sendall(hs.connect)
            head = _recv_exactly(sock, 5)
            _recv_exactly(sock, connect_reply_length(head) - 5)
    except BaseException:
        sock.close()
        raise
    return sock


def echo_once(route: Route, size: int = 64, timeout: float = 10.0) -> None:
    """One full cycle over the blocking client: the smoke test before measuring a server."""
    payload = b"s" * size
    with open_connection(route, timeout) as sock:
        sock.sendall(payload)
        if _recv_exactly(sock, size) != payload:
            raise BenchError("echo mismatch")


# --- bulk throughput ------------------------------------------------------------------------


class Direction(enum.StrEnum):
    UPLOAD = "upload"  # client -> sink
    DOWNLOAD = "download"  # sink -> client


@dataclass(frozen=True, slots=True)
class BulkResult:
    direction: Direction
    streams: int
    bytes: int
    seconds: float
    cpu_seconds: float | None

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9

    @property
    def cpu_s_per_gb(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds / (self.bytes / 1e9)


def _upload(sock: socket.socket, length: int, deadline: float) -> None:
    view = memoryview(bytearray(CHUNK))
    remaining = length
    while remaining >= CHUNK:
        sock.sendall(view)
        remaining -= CHUNK
        if time.monotonic() > deadline:
            raise TimeoutError("upload deadline passed")
    if remaining:
        sock.sendall(view[:remaining])
    if _recv_exactly(sock, 1) != UPLOAD_DONE:
        raise BenchError("sink did not confirm the upload")


def _download(sock: socket.socket, length: int, deadline: float) -> None:
    sock.sendall(HEADER.pack(DOWNLOAD, length))
    view = memoryview(bytearray(CHUNK))
    remaining = length
    while remaining > 0:
        got = sock.recv_into(view, min(CHUNK, remaining))
        if got == 0:
            raise BenchError(f"download cut short, {remaining} bytes missing")
        remaining -= got
        if time.monotonic() > deadline:
            raise TimeoutError("download deadline passed")


def run_bulk(
    route: Route,
    direction: Direction,
    total_bytes: int,
    streams: int,
    cpu_clock: Callable[[], float] | None,
    max_seconds: float,
) -> BulkResult:
    """Move ``total_bytes`` split over ``streams`` parallel connections; time the data only.

    All connections finish their handshake first; the clock (and the proxy CPU reading)
    starts when the last one is ready and stops when every stream is done.
    """
    per_stream = max(CHUNK, total_bytes // streams // CHUNK * CHUNK)
    socks = [open_connection(route) for _ in range(streams)]
    marks: dict[str, float] = {}
    errors: list[BaseException] = []

    def start_clock() -> None:
        marks["cpu0"] = cpu_clock() if cpu_clock else 0.0
        marks["t0"] = time.perf_counter()

    barrier = threading.Barrier(streams, action=start_clock, timeout=30)
    deadline = time.monotonic() + max_seconds

    def worker(sock: socket.socket) -> None:
        try:
            sock.settimeout(30)
            if direction is Direction.UPLOAD:
                sock.sendall(HEADER.pack(UPLOAD, per_stream))
                barrier.wait()
                _upload(sock, per_stream, deadline)
            else:
                barrier.wait()
                _download(sock, per_stream, deadline)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in socks]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(max_seconds + 60)
        t1 = time.perf_counter()
        cpu1 = cpu_clock() if cpu_clock else 0.0
    finally:
        for s in socks:
            s.close()
    if errors:
        raise BenchError(f"{len(errors)} of {streams} streams failed: {errors[0]!r}")
    if any(t.is_alive() for t in threads):
        raise BenchError("bulk stream did not finish")
    return BulkResult(
        direction=direction,
        streams=streams,
        bytes=per_stream * streams,
        seconds=t1 - marks["t0"],
        cpu_seconds=cpu1 - marks["cpu0"] if cpu_clock else None,
    )


# --- ping-pong latency ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyResult:
    rounds: int
    p50_us: float
    p99_us: float
    max_us: float


def _percentile(sorted_ns: list[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, round(q * (len(sorted_ns) - 1)))
    return sorted_ns[index] / 1000


def run_pingpong(
    route: Route, rounds: int, size: int = 32, warmup: int = 200, max_seconds: float = 60
) -> LatencyResult:
    """``rounds`` round trips of ``size`` bytes on one connection, each timed on its own."""
    message = b"p" * size
    buf = bytearray(size)
    view = memoryview(buf)
    samples: list[int] = []
    deadline = time.monotonic() + max_seconds
    with open_connection(route) as sock:
        for i in range(warmup + rounds):
            t0 = time.perf_counter_ns()
            sock.sendall(message)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise BenchError("connection closed during ping-pong")
                got += n
            if i >= warmup:
                samples.append(time.perf_counter_ns() - t0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"ping-pong deadline passed after {i} rounds")
    samples.sort()
    return LatencyResult(
        rounds=len(samples),
        p50_us=_percentile(samples, 0.50),
        p99_us=_percentile(samples, 0.99),
        max_us=samples[-1] / 1000,
    )


# --- asyncio client: connection cycles and held connections --------------------------------


class _Step(enum.Enum):
    METHOD = enum.auto()
    AUTH = enum.auto()
    CONNECT = enum.auto()
    ECHO = enum.auto()
    IDLE = enum.auto()


class Socks5Exchange(asyncio.Protocol):
    """Handshake (unless direct), then echo ``payload`` once; ``ready`` resolves after.

    With ``keep_open`` the connection stays up and :meth:`exchange` echoes again; otherwise
    it is closed as soon as the echo is back.
    """

    __slots__ = ("_buf", "_hs", "_payload", "_step", "keep_open", "ready", "transport")

    def __init__(
        self, hs: Handshake | None, payload: bytes, ready: asyncio.Future[None], keep_open: bool
    ) -> None:
        self._hs = hs
        self._payload = payload
        self._buf = bytearray()
        self._step = _Step.METHOD if hs is not None else _Step.ECHO
        self.ready = ready
        self.keep_open = keep_open
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if self._hs is None:
            transport.write(self._payload)
        else:
            transport.write(self._hs.greeting)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            while self._advance(buf):
                pass
        except BenchError as exc:
            self._fail(exc)

    def _advance(self, buf: bytearray) -> bool:
        """Consume one complete reply from ``buf`` if there is one; say whether it did."""
        hs, transport, step = self._hs, self.transport, self._step
        assert transport is not None
        if step is _Step.METHOD:
            assert hs is not None
            if len(buf) < 2:
                return False
            check_method_reply(buf, hs.method)
            del buf[:2]
            if hs.auth is not None:
                transport.write(hs.auth)
                self._step = _Step.AUTH
            else:
                transport.write(hs.connect)
                self._step = _Step.CONNECT
            return True
        if step is _Step.AUTH:
            assert hs is not None
            if len(buf) < 2:
                return False
            check_auth_reply(buf)
            del buf[:2]
            transport.write(hs.connect)
            self._step = _Step.CONNECT
            return True
        if step is _Step.CONNECT:
            if len(buf) < 5 or len(buf) < connect_reply_length(buf):
                return False
            del buf[: connect_reply_length(buf)]
            transport.write(self._payload)
            self._step = _Step.ECHO
            return True
        if step is _Step.ECHO:
            size = len(self._payload)
            if len(buf) < size:
                return False
            if buf[:size] != self._payload:
                raise BenchError("echo mismatch")
            del buf[:size]
            self._step = _Step.IDLE
            if not self.ready.done():
                self.ready.set_result(None)
            if not self.keep_open:
                transport.close()
            return False
        if buf:
            raise BenchError(f"{len(buf)} unexpected bytes on an idle connection")
        return False

    def exchange(self) -> asyncio.Future[None]:
        """Echo the payload once more on an idle, kept-open connection."""
        assert self.transport is not None and self._step is _Step.IDLE
        self.ready = asyncio.get_running_loop().create_future()
        self._step = _Step.ECHO
        self.transport.write(self._payload)
        return self.ready

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc or BenchError(f"closed by peer during {self._step.name}"))


def _handshake(route: Route) -> Handshake | None:
    return None if route.proxy is None else Handshake.for_route(route)


async def _open(
    route: Route, hs: Handshake | None, payload: bytes, keep_open: bool, op_seconds: float
) -> Socks5Exchange:
    """Connect and run the exchange; ``op_seconds`` bounds the exchange once connected.

    A timer on the future is about 6% cheaper per cycle than ``asyncio.timeout``; a connect
    that never completes is still bounded by the deadline of the whole run.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    host, port = route.first_hop
    timer = loop.call_later(op_seconds, _expire, ready)
    try:
        transport, proto = await loop.create_connection(
            lambda: Socks5Exchange(hs, payload, ready, keep_open), host, port
        )
        try:
            await ready
        except BaseException:
            transport.abort()
            raise
    finally:
        timer.cancel()
    return proto


def _expire(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_exception(TimeoutError("SOCKS5 exchange timed out"))


@dataclass(frozen=True, slots=True)
class CycleResult:
    cycles: int
    errors: int
    seconds: float
    first_error: str | None

    @property
    def per_second(self) -> float:
        return self.cycles / self.seconds


async def run_cycles(
    route: Route,
    total: int,
    concurrency: int,
    payload_size: int = 64,
    op_seconds: float = 10.0,
    max_seconds: float = 300.0,
    max_errors: int = 100,
) -> CycleResult:
    """``total`` cycles of connect, handshake, echo, close, ``concurrency`` at a time."""
    hs = _handshake(route)
    payload = b"c" * payload_size
    started = 0
    done = errors = 0
    first_error: str | None = None
    deadline = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal started, done, errors, first_error
        while started < total and errors < max_errors and time.monotonic() < deadline:
            started += 1
            try:
                await _open(route, hs, payload, keep_open=False, op_seconds=op_seconds)
                done += 1
            except (OSError, BenchError, TimeoutError) as exc:
                errors += 1
                first_error = first_error or repr(exc)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(concurrency):
            tg.create_task(worker(), name=f"cycle-worker-{i}")
    seconds = time.perf_counter() - t0
    return CycleResult(cycles=done, errors=errors, seconds=seconds, first_error=first_error)


@dataclass(frozen=True, slots=True)
class HoldResult:
    """``wanted`` connections opened and held at once, then each echoed on again."""

    wanted: int
    opened: int
    open_errors: int
    echo_errors: int
    open_seconds: float
    first_error: str | None
    measured: Any

    @property
    def errors(self) -> int:
        return self.open_errors + self.echo_errors


async def hold_connections(
    route: Route,
    count: int,
    measure: Callable[[], T],
    concurrency: int = 256,
    settle_seconds: float = 1.0,
    op_seconds: float = 20.0,
) -> HoldResult:
    """Open ``count`` authenticated, CONNECTed connections, each echoed once, and hold them.

    With all of them open and idle, ``measure()`` is called (the caller reads the proxy's
    memory there). Then every connection echoes once more, all at once, to check the proxy
    still serves each of them; then all are closed.
    """
    hs = _handshake(route)
    payload = b"i" * 64
    held: list[Socks5Exchange] = []
    open_errors = echo_errors = 0
    first_error: str | None = None
    gate = asyncio.Semaphore(concurrency)

    async def open_one() -> None:
        nonlocal open_errors, first_error
        async with gate:
            try:
                held.append(await _open(route, hs, payload, keep_open=True, op_seconds=op_seconds))
            except (OSError, BenchError, TimeoutError) as exc:
                open_errors += 1
                first_error = first_error or repr(exc)

    async def echo(proto: Socks5Exchange) -> None:
        nonlocal echo_errors, first_error
        try:
            async with asyncio.timeout(op_seconds):
                await proto.exchange()
        except (OSError, BenchError, TimeoutError) as exc:
            echo_errors += 1
            first_error = first_error or repr(exc)

    t0 = time.perf_counter()
    try:
        await _gather_named("open", [open_one() for _ in range(count)])
        open_seconds = time.perf_counter() - t0
        await asyncio.sleep(settle_seconds)
        measured = measure()
        await _gather_named("echo", [echo(p) for p in held])
    finally:
        for proto in held:
            if proto.transport is not None:
                proto.transport.close()
        await asyncio.sleep(0.5)
    return HoldResult(
        wanted=count,
        opened=len(held),
        open_errors=open_errors,
        echo_errors=echo_errors,
        open_seconds=open_seconds,
        first_error=first_error,
        measured=measured,
    )


async def _gather_named(label: str, coros: list[Coroutine[Any, Any, None]]) -> None:
    async with asyncio.TaskGroup() as tg:
        for i, coro in enumerate(coros):
            tg.create_task(coro, name=f"{label}-{i}")


def run_async(main: Callable[[], Awaitable[T]], max_seconds: float) -> T:
    """Run ``main()`` on a fresh uvloop (or asyncio) loop, bounded by ``max_seconds``."""

    async def bounded() -> T:
        async with asyncio.timeout(max_seconds):
            return await main()

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(bounded())
