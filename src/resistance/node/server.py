"""The running node: listeners, sessions, limits, sweeps and shutdown.

The plain listener accepts with a reader callback on a non-blocking socket
and hands each client to a :class:`~resistance.node.session.RawSession`,
which reads the handshake with ``recv`` and, once the destination is
connected, gives both sockets to a splice :class:`~resistance.net.relay.Relay`.
The TLS listener is an asyncio server whose
:class:`~resistance.node.session.StreamSession` relays through transports.
The node is its sessions' :class:`~resistance.node.host.SessionHost`; they
dial through its :class:`~resistance.node.net.SocketNetwork`.

Limits hold at every stage: total and per-address connection caps at
accept, the handshake timeout until a relay starts, the connect and DNS
timeouts while dialing, and an idle timeout enforced by a periodic sweep
(one timer for all connections, not one per connection).  The sweep also
moves byte counts into the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from operator import methodcaller
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.config import Endpoint, NodeLimits, NodeSettings
from resistance.errors import ConfigError
from resistance.net.deadlines import Deadlines
from resistance.net.reactor import HAS_EPOLL, Reactor
from resistance.net.relay import HAS_SPLICE, AnyPipePool, new_pipe_pool
from resistance.node import website
from resistance.node.admission import PerAddress
from resistance.node.host import Association, Client
from resistance.node.metrics import NodeMetrics
from resistance.node.net import NodeNetwork, SocketNetwork
from resistance.node.policy import EgressPolicy
from resistance.node.session import RawSession, Session, StreamSession
from resistance.node.tlscert import leaf_der
from resistance.node.users import UserDB

log = logging.getLogger("resistance.node")

ACCEPT_BATCH = 64
SWEEP_SECONDS = 5.0
# Pipes of 1 MiB let one splice move a large chunk; pages are only used while
# data is in flight, and an empty pipe goes back to the pool.
PIPE_SIZE = 1 << 20


class _StreamHandshake(asyncio.Protocol):
    """Admits a transport client and feeds its session until a relay takes over."""

    def __init__(self, node: Node, *, tls: bool = False) -> None:
        self.node = node
        self.tls = tls
        self.first = tls  # over TLS, the first bytes tell a SOCKS5 client from a browser
        self.session: StreamSession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if peer is None or local is None or not self.node.admit(peer[0]):
            transport.abort()
            return
        binding = self.node.tls_digest if self.tls else None
        self.session = StreamSession(self.node, transport, peer[0], local[0], binding)
        self.node.session_opened(self.session)

    def data_received(self, data: bytes) -> None:
        if self.session is None:
            return
        if self.first:
            self.first = False
            if not website.is_socks5(data):  # a browser or a censor's prober: a website
                self.session.write(website.answer(data))
                self.session.close()
                return
        self.session.feed(data)

    def eof_received(self) -> bool:
        if self.session is not None:
            self.session.on_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Once a relay runs, the transport belongs to it and this is not called.
        if self.session is not None and not self.session.closed:
            self.session.close()


class Listener:
    """A non-blocking listening socket served by a reader callback."""

    def __init__(self, node: Node, sock: socket.socket, reactor: Reactor) -> None:
        self.node = node
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        # accept4 without the wrapper: returns (descriptor, address)
        self.accept: Callable[[], tuple[int, Any]] = sock._accept  # type: ignore[attr-defined]
        self.paused: asyncio.TimerHandle | None = None
        node.loop.add_reader(self.fd, self.on_accept)

    def on_accept(self) -> None:
        node = self.node
        accept = self.accept
        family = self.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting briefly instead of spinning.
                    log.warning("accept failed (%s); pausing the listener for 1 s", exc.strerror)
                    node.metrics.rejected.labels("out-of-descriptors").inc()
                    node.loop.remove_reader(self.fd)
                    self.paused = node.loop.call_later(1.0, self._resume)
                return
            # The C socket type, not socket.socket: its Python-level __init__,
            # accept and close wrappers cost more than the handshake's parsing.
            sock = socket.SocketType(family, socket.SOCK_STREAM, 0, fd)
            if not node.admit(addr[0]):
                sock.close()
                continue
            sock.setblocking(False)  # TCP_NODELAY is inherited from the listener
            node.session_opened(node.session_class(node, sock, addr[0], self.reactor))

    def _resume(self) -> None:
        self.paused = None
        self.node.loop.add_reader(self.fd, self.on_accept)

    def close(self) -> None:
        if self.paused is not None:
            self.paused.cancel()
        else:
            self.node.loop.remove_reader(self.fd)
        self.sock.close()


def listening_socket(endpoint: Endpoint, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening, non-blocking socket for ``endpoint``.

    ``reuse_port``: join a SO_REUSEPORT group, so that several worker processes
    each listen on the same port and the kernel spreads connections over them.
    """
    try:
        infos = socket.getaddrinfo(
            endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {endpoint}: {exc.strerror}") from None
    return sock


def relay_kind(settings: NodeSettings) -> str:
    """``"splice"`` or ``"copy"``: how this node will relay, given its settings."""
    if settings.relay == "splice" and not HAS_SPLICE:
        raise ConfigError("relay = splice needs Linux (os.splice is not available here)")
    return "splice" if settings.relay != "copy" and HAS_SPLICE and HAS_EPOLL else "copy"


def tls_context(settings: NodeSettings) -> tuple[ssl.SSLContext, bytes]:
    """The TLS listener's context and the SHA-256 of its certificate (the pin)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None or key is None:
        raise ConfigError("a TLS listener needs a certificate and key")
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate or key: {exc}") from None
    return ctx, hashlib.sha256(leaf_der(cert)).digest()


WANTED_NOFILE = 1 << 20


def raise_nofile_limit() -> int:
    """Raise the descriptor limit as far as allowed; return the limit in force.

    A privileged process may raise the hard limit too (up to ``fs.nr_open``);
    anyone may raise the soft limit to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            ceiling = min(WANTED_NOFILE, int(f.read()))
    except (OSError, ValueError):
        ceiling = hard
    for target in (max(hard, ceiling), hard):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        except (ValueError, OSError):
            continue
        soft = target
        break
    return soft


def connection_capacity(max_connections: int) -> int:
    """Clients the node can really hold: each relayed one needs two descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(max_connections, (soft - 64) // 2))


class Node:
    """A SOCKS5 node serving its listeners until stopped.

    It is the :class:`~resistance.node.host.SessionHost` of its sessions.
    """

    def __init__(
        self,
        settings: NodeSettings,
        *,
        users: UserDB | None,
        policy: EgressPolicy,
        metrics: NodeMetrics | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        identity: Ed25519PrivateKey | None = None,
        sockets: tuple[list[socket.socket], list[socket.socket]] | None = None,
        net: NodeNetwork | None = None,
    ) -> None:
        """``sockets``: listening sockets made beforehand, for ``settings.listen`` and
        ``settings.tls_listen`` in order (a worker's share of a SO_REUSEPORT group);
        by default the node makes its own.  ``net``: the network its sessions
        resolve and dial through (by default real sockets)."""
        self.settings = settings
        self.sockets = sockets
        self.identity = identity
        self.session_class: type[RawSession] = RawSession
        self.limits = settings.limits
        self.capacity = connection_capacity(self.limits.max_connections)
        if self.capacity < self.limits.max_connections != NodeLimits().max_connections:
            log.warning(
                "the descriptor limit allows %d connections, not %d: clients over it are "
                "turned away at accept",
                self.capacity,
                self.limits.max_connections,
            )
        self.users = users
        self.policy = policy
        self.log_destinations = settings.log_destinations
        self.metrics = metrics or NodeMetrics()
        self.loop = loop or asyncio.get_running_loop()
        use_splice = relay_kind(settings) == "splice"
        self.pipes: AnyPipePool | None = new_pipe_pool(size=PIPE_SIZE) if use_splice else None
        self.reactor: Reactor | None = Reactor(self.loop) if HAS_EPOLL else None
        self.net: NodeNetwork = net or SocketNetwork(self.loop, self.reactor)
        limits = self.limits
        self.handshake_deadlines: Deadlines[Session] = Deadlines(
            self.loop, limits.handshake_timeout, methodcaller("on_handshake_timeout")
        )
        self.connect_deadlines: Deadlines[Session] = Deadlines(
            self.loop, limits.connect_timeout, methodcaller("on_connect_timeout")
        )
        self.bind_deadlines: Deadlines[Session] = Deadlines(
            self.loop, limits.bind_timeout, methodcaller("on_bind_timeout")
        )
        self.sessions: set[Client] = set()
        self.udp_associations: set[Association] = set()
        self.per_ip = PerAddress(limits.max_connections_per_ip)
        self.listeners: list[Listener] = []
        self.tls_servers: list[asyncio.Server] = []  # and plain ones served by transports
        self.bound: list[Endpoint] = []
        self.tls_bound: list[Endpoint] = []
        #: SHA-256 of the certificate the TLS listener presents (its pin), once started.
        self.tls_digest: bytes | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self._drained = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._flushed: dict[int, tuple[int, int]] = {}

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        try:
            made = self.sockets
            for i, endpoint in enumerate(self.settings.listen):
                sock = made[0][i] if made else listening_socket(endpoint)
                host, port = sock.getsockname()[:2]
                if self.reactor is not None:
                    self.listeners.append(Listener(self, sock, self.reactor))
                else:
                    self.tls_servers.append(
                        await self.loop.create_server(
                            lambda: _StreamHandshake(self), sock=sock, backlog=4096
                        )
                    )
                self.bound.append(Endpoint(host, port))
            if self.settings.tls_listen:
                ctx = self._tls_context()
                for i, endpoint in enumerate(self.settings.tls_listen):
                    sock = made[1][i] if made else listening_socket(endpoint)
                    server = await self.loop.create_server(
                        lambda: _StreamHandshake(self, tls=True),
                        sock=sock,
                        ssl=ctx,
                        backlog=4096,
                        ssl_handshake_timeout=self.limits.handshake_timeout,
                    )
                    self.tls_servers.append(server)
                    host, port = sock.getsockname()[:2]
                    self.tls_bound.append(Endpoint(host, port))
        except BaseException:
            self._close_listeners()
            raise
        self._sweeper = self.loop.create_task(self._sweep(), name="node-sweeper")

    def _tls_context(self) -> ssl.SSLContext:
        ctx, self.tls_digest = tls_context(self.settings)
        return ctx

    @property
    def tls_sha256(self) -> str | None:
        """The TLS listener's pin as clients write it (hex), once started."""
        return self.tls_digest.hex() if self.tls_digest is not None else None

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        for server in self.tls_servers:
            server.close()
        self.tls_servers.clear()

    async def stop(self) -> None:
        """Stop accepting, let relays finish for the drain time, then close the rest."""
        if self.draining:
            await self.stopped.wait()
            return
        self.draining = True
        self._close_listeners()
        for session in list(self.sessions):
            if session.relay is None:
                session.close()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.limits.drain_timeout)
        for session in list(self.sessions):
            session.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.pipes is not None:
            self.pipes.close()
        if self.reactor is not None:
            self.reactor.close()
        for deadlines in (self.handshake_deadlines, self.connect_deadlines, self.bind_deadlines):
            deadlines.close()
        self.stopped.set()

    def reload(self, *, users: UserDB | None, policy: EgressPolicy) -> None:
        """New users and policy for new requests; established connections go on."""
        self.users = users
        self.policy = policy

    # -- admission -------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        """Count a new client in, or say no (and count why)."""
        if self.draining:
            self.metrics.rejected.labels("draining").inc()
            return False
        if len(self.sessions) >= self.capacity:
            self.metrics.rejected.labels("max-connections").inc()
            return False
        if not self.per_ip.take(ip):
            self.metrics.rejected.labels("max-connections-per-ip").inc()
            return False
        return True

    def forget(self, ip: str) -> None:
        self.per_ip.release(ip)

    def session_opened(self, session: Client) -> None:
        self.sessions.add(session)
        self.metrics.connections.inc()
        self.metrics.active.inc()

    def session_closed(self, session: Client, up: int, down: int) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.forget(session.peer_ip)
        self.metrics.active.dec()
        if self.draining and not self.sessions:
            self._drained.set()
        done_up, done_down = self._flushed.pop(id(session), (0, 0))
        self.metrics.add_bytes(session.user, up - done_up, down - done_down)

    # -- sweeping ----------------------------------------------------------------

    async def _sweep(self) -> None:
        period = min(SWEEP_SECONDS, self.limits.idle_timeout / 4, self.limits.udp_idle_timeout / 4)
        idle_limit = max(1, round(self.limits.idle_timeout / period))
        udp_limit = max(1, round(self.limits.udp_idle_timeout / period))
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions):
                relay = session.relay
                if relay is None:
                    continue
                relay.idle += 1
                if relay.idle > idle_limit:
                    session.close()
                    continue
                up, down = relay.bytes_up, relay.bytes_down
                done_up, done_down = self._flushed.get(id(session), (0, 0))
                if up != done_up or down != done_down:
                    self.metrics.add_bytes(session.user, up - done_up, down - done_down)
                    self._flushed[id(session)] = (up, down)
            for udp in list(self.udp_associations):
                udp.idle += 1
                if udp.idle > udp_limit:
                    udp.session.close()
