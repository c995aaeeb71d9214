"""A scripted network and host for driving sessions without sockets.

The test double of :mod:`resistance.node.net` (as httpcore ships a mock
network backend): :class:`ScriptedNetwork` answers name lookups from a
table, settles each dial the way the script says (connected to an in-memory
:class:`MemoryStream`, refused, unreachable, or never answered), hands BIND
peers and datagrams over when the test says so, and records everything a
session asked of it.  :class:`ScriptedHost` is a
:class:`~resistance.node.host.SessionHost` around it with real settings,
policy, users and metrics, and deadlines on a :class:`ManualClock` the test
advances, so a timeout is a step of the test, not a wait.
:class:`MemorySession` is a node session whose client side is in memory.

Nothing here opens a socket or sends a packet.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import heapq
import itertools
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import methodcaller
from typing import TYPE_CHECKING, Any, cast

from resistance.config import NodeSettings
from resistance.net.deadlines import Deadlines
from resistance.node.metrics import NodeMetrics
from resistance.node.policy import EgressPolicy
from resistance.node.session import Session

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.config import NodeLimits
    from resistance.net.reactor import Reactor
    from resistance.net.relay import AnyPipePool
    from resistance.node.host import Association, Client
    from resistance.node.net import DatagramSocket, DialDone, PeerArrived, Sockaddr, Stream
    from resistance.node.users import UserDB

_fds = itertools.count(1_000_000)  # far above any real descriptor, and never reused


class DialResult(enum.Enum):
    """How a scripted dial ends."""

    CONNECTED = "connected"
    REFUSED = "refused"
    NETWORK_UNREACHABLE = "network-unreachable"
    HOST_UNREACHABLE = "host-unreachable"
    TIMED_OUT = "timed-out"  # the kernel gave up (ETIMEDOUT)
    SILENT = "silent"  # no answer ever: the session's own connect timeout must act


_ERRNO = {
    DialResult.REFUSED: errno.ECONNREFUSED,
    DialResult.NETWORK_UNREACHABLE: errno.ENETUNREACH,
    DialResult.HOST_UNREACHABLE: errno.EHOSTUNREACH,
    DialResult.TIMED_OUT: errno.ETIMEDOUT,
}


class MemoryStream:
    """An outbound connection held in memory: what the session sends through it
    (early data, once relayed) lands in :attr:`received`."""

    __slots__ = ("_fd", "closed", "local", "peer", "received")

    def __init__(self, local: tuple[str, int], peer: tuple[str, int]) -> None:
        self.local = local
        self.peer = peer
        self.received = bytearray()
        self.closed = False
        self._fd = next(_fds)

    def fileno(self) -> int:
        return -1 if self.closed else self._fd

    def getsockname(self) -> tuple[str, int]:
        return self.local

    def getpeername(self) -> tuple[str, int]:
        return self.peer

    def send(self, data: bytes) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        self.received += data
        return len(data)

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class ScriptedDial:
    """One dial the network was asked for, as it stands."""

    family: int
    sockaddr: Sockaddr
    done: DialDone
    result: DialResult
    cancelled: bool = False
    settled: bool = False
    stream: MemoryStream | None = None

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedListener:
    """A BIND listener; :meth:`arrive` makes a peer connect to it."""

    def __init__(self, local_ip: str, port: int, on_peer: PeerArrived) -> None:
        self.local_ip = local_ip
        self.port = port
        self.on_peer = on_peer
        self.closed = False

    def address(self) -> tuple[str, int]:
        return self.local_ip, self.port

    def arrive(self, peer: tuple[str, int]) -> MemoryStream:
        """A peer at ``peer`` connects; returns its stream (closed if turned away)."""
        assert not self.closed, "nobody listens any more"
        stream = MemoryStream((self.local_ip, self.port), peer)
        self.on_peer(stream, peer)
        return stream

    def close(self) -> None:
        self.closed = True


class ScriptedDatagrams:
    """A bound UDP socket: :attr:`inbox` feeds ``recvfrom``, ``sendto`` lands in :attr:`sent`."""

    def __init__(self, family: int, address: tuple[str, int]) -> None:
        self.family = family
        self.address = address
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False
        self._fd = next(_fds)

    def fileno(self) -> int:
        return -1 if self.closed else self._fd

    def getsockname(self) -> tuple[str, int]:
        return self.address

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "no datagram waiting")
        data, addr = self.inbox.popleft()
        return data[:size], addr

    def sendto(self, data: bytes, address: Any, /) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        self.sent.append((bytes(data), (str(address[0]), int(address[1]))))
        return len(data)

    def close(self) -> None:
        self.closed = True


class ScriptedNetwork:
    """A :class:`~resistance.node.net.NodeNetwork` that does what its script says.

    ``names``: host name -> addresses (IPv4 and IPv6 text), an exception to
    raise, or ``None`` for a resolver that never answers.  ``dials``: ``(ip,
    port)`` (or ``ip`` for any port) -> :class:`DialResult`; a dial to an
    address not in the script fails the test.  Dials settle on the next loop
    iteration, or inside ``dial()`` itself when ``at_once`` is set.
    """

    def __init__(
        self,
        *,
        names: dict[str, list[str] | BaseException | None] | None = None,
        dials: dict[tuple[str, int] | str, DialResult] | None = None,
        at_once: bool = False,
        local_ip: str = "192.0.2.1",
    ) -> None:
        self.names = dict(names or {})
        self.script = dict(dials or {})
        self.at_once = at_once
        self.local_ip = local_ip
        self.lookups: list[tuple[str, int | None, bool]] = []
        self.attempts: list[ScriptedDial] = []
        self.listeners: list[ScriptedListener] = []
        self.datagram_sockets: list[ScriptedDatagrams] = []
        self.watched: dict[ScriptedDatagrams, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        self._ports = itertools.count(40000)

    # -- resolution --

    async def resolve(
        self, host: str, port: int | None, *, datagram: bool = False
    ) -> list[tuple[int, Sockaddr]]:
        self.lookups.append((host, port, datagram))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = self.names[host]
        if answer is None:
            await asyncio.Event().wait()  # never set: only a timeout ends this
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None
        out: list[tuple[int, Sockaddr]] = []
        for ip in answer:
            if ":" in ip:
                out.append((socket.AF_INET6, (ip, port or 0, 0, 0)))
            else:
                out.append((socket.AF_INET, (ip, port or 0)))
        return out

    # -- dialing --

    def dial(self, family: int, sockaddr: Sockaddr, done: DialDone) -> ScriptedDial | None:
        ip, port = str(sockaddr[0]), int(sockaddr[1])
        result = self.script.get((ip, port), self.script.get(ip))
        if result is None:
            raise AssertionError(f"dial to {ip} port {port} is not in the script")
        attempt = ScriptedDial(family, sockaddr, done, result)
        self.attempts.append(attempt)
        if result is DialResult.SILENT:
            return attempt
        if self.at_once:
            self._settle(attempt)
            return None
        asyncio.get_running_loop().call_soon(self._settle, attempt)
        return attempt

    def _settle(self, attempt: ScriptedDial) -> None:
        if attempt.cancelled or attempt.settled:
            return
        attempt.settled = True
        if attempt.result is DialResult.CONNECTED:
            local = (self.local_ip, next(self._ports))
            attempt.stream = MemoryStream(local, (str(attempt.sockaddr[0]), attempt.sockaddr[1]))
            attempt.done(attempt.stream, 0, True)
        else:
            attempt.done(None, _ERRNO[attempt.result], False)

    # -- BIND --

    def listen(self, local_ip: str, on_peer: PeerArrived) -> ScriptedListener:
        listener = ScriptedListener(local_ip, next(self._ports), on_peer)
        self.listeners.append(listener)
        return listener

    # -- UDP --

    def open_datagram(self, family: int, address: Sockaddr) -> DatagramSocket:
        host, port = str(address[0]), int(address[1])
        if host in ("0.0.0.0", "::"):
            host = self.local_ip if family == socket.AF_INET else "2001:db8::1"
        sock = ScriptedDatagrams(family, (host, port or next(self._ports)))
        self.datagram_sockets.append(sock)
        return sock

    def watch_readable(
        self, sock: DatagramSocket, callback: Callable[..., None], *args: Any
    ) -> None:
        self.watched[cast(ScriptedDatagrams, sock)] = (callback, args)

    def unwatch(self, sock: DatagramSocket) -> None:
        self.watched.pop(cast(ScriptedDatagrams, sock), None)

    def deliver(self, sock: DatagramSocket, data: bytes, source: tuple[str, int]) -> None:
        """A datagram from ``source`` arrives on ``sock``; its watcher runs if any."""
        scripted = cast(ScriptedDatagrams, sock)
        scripted.inbox.append((data, source))
        watcher = self.watched.get(scripted)
        if watcher is not None:
            callback, args = watcher
            callback(*args)


class ManualClock:
    """The two loop methods :class:`~resistance.net.deadlines.Deadlines` uses,
    on a time that moves only when :meth:`advance` says."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on, firing due timers in order (and those they set that are due)."""
        end = self.now + seconds
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = end


class _Timer:
    __slots__ = ("args", "callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class ScriptedHost:
    """A :class:`~resistance.node.host.SessionHost` over a :class:`ScriptedNetwork`.

    Deadlines run on :attr:`clock`; everything else on the running loop.
    :attr:`ended` records each ``session_closed`` call.
    """

    loop: asyncio.AbstractEventLoop
    net: ScriptedNetwork
    settings: NodeSettings = field(default_factory=NodeSettings)
    policy: EgressPolicy = field(default_factory=EgressPolicy)
    users: UserDB | None = None
    identity: Ed25519PrivateKey | None = None
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    clock: ManualClock = field(default_factory=ManualClock)
    reactor: Reactor | None = None
    pipes: AnyPipePool | None = None

    def __post_init__(self) -> None:
        self.limits: NodeLimits = self.settings.limits
        self.log_destinations = self.settings.log_destinations
        self.udp_associations: set[Association] = set()
        self.ended: list[tuple[Client, int, int]] = []
        clock = cast(asyncio.AbstractEventLoop, self.clock)  # Deadlines needs time/call_at
        limits = self.limits
        self.handshake_deadlines: Deadlines[Any] = Deadlines(
            clock, limits.handshake_timeout, methodcaller("on_handshake_timeout")
        )
        self.connect_deadlines: Deadlines[Any] = Deadlines(
            clock, limits.connect_timeout, methodcaller("on_connect_timeout")
        )
        self.bind_deadlines: Deadlines[Any] = Deadlines(
            clock, limits.bind_timeout, methodcaller("on_bind_timeout")
        )

    def session_closed(self, session: Client, up: int, down: int) -> None:
        self.ended.append((session, up, down))
        self.metrics.add_bytes(session.user, up, down)


class MemorySession(Session):
    """A node session whose client is in memory: :meth:`feed` what the client
    sends, read what it got from :attr:`to_client`.  A started relay is
    recorded in :attr:`relayed` (the stream, the early bytes, ``upstream_unread``)
    and the early bytes are sent into the stream, as the real relays do."""

    __slots__ = ("closed", "local", "paused", "relayed", "to_client")

    def __init__(self, host: ScriptedHost, peer_ip: str, *, local_ip: str = "192.0.2.1") -> None:
        super().__init__(host, peer_ip)
        self.local = local_ip
        self.to_client = bytearray()
        self.paused = False
        self.closed = False
        self.relayed: tuple[Stream, bytes, bool] | None = None

    def local_ip(self) -> str:
        return self.local

    def write(self, data: bytes) -> None:
        self.to_client += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def start_relay(self, upstream: Stream, early: bytes, *, upstream_unread: bool = True) -> None:
        self.relayed = (upstream, early, upstream_unread)
        if early:
            cast(MemoryStream, upstream).send(early)

    @property
    def bytes_up(self) -> int:
        return len(self.relayed[1]) if self.relayed is not None else 0

    @property
    def bytes_down(self) -> int:
        return 0

    def close_client(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.relayed is not None:
            cast(MemoryStream, self.relayed[0]).close()
        self.host.session_closed(self, self.bytes_up, self.bytes_down)


__all__ = [
    "DialResult",
    "ManualClock",
    "MemorySession",
    "MemoryStream",
    "ScriptedDial",
    "ScriptedHost",
    "ScriptedNetwork",
]
