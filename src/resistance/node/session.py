"""The node's SOCKS5 sessions: one client, from its greeting to the end of its relay.

A :class:`Session` drives the sans-IO :class:`~resistance.proto.socks5.ServerConnection`
and decides: it checks credentials, applies the egress policy to the resolved
destination, dials, and only then answers "succeeded" with the address the
outbound socket really has.  It talks to its client through four small hooks
(write, pause, resume, close) plus one to hand over an established
connection, so the same logic serves the plain listener (:class:`RawSession`:
raw sockets, splice relay) and the TLS listener (:class:`StreamSession`:
asyncio transports, copying relay).  The UDP association
(:mod:`resistance.node.udp`) and ``resist connect``'s session
(:mod:`resistance.client.session`) are built the same way.

A session sees only its :class:`~resistance.node.host.SessionHost` (settings,
policy, metrics, deadlines, loop) and reaches the network only through the
host's :class:`~resistance.node.net.NodeNetwork`, so its decisions are tested
against a scripted network without sockets; see :mod:`resistance.node.host`
for how to add a session kind.

Everything is callback-driven: a CONNECT to an IP literal never creates a
task.  Only name resolution runs as a task, named and cancelled with the
session.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Any, cast

from resistance.errors import BufferOverflow, ProtocolError
from resistance.net.deadlines import Deadlines
from resistance.net.reactor import ENDED, READABLE, Reactor
from resistance.net.relay import Relay, TransportRelay
from resistance.node.identity import (
    CHALLENGE_SUFFIX,
    challenge_message,
    parse_challenge,
    tls_challenge_message,
)
from resistance.node.udp import UdpAssociation
from resistance.proto.socks5 import (
    AUTH,
    BIND_PENDING,
    CLOSED,
    CONNECT,
    DOMAIN,
    GREETING,
    IPV6,
    PAUSED,
    REPLY_PENDING,
    REQUEST,
    SUCCEEDED,
    UDP,
    UDP_ASSOCIATE,
    Address,
    AuthRequest,
    CommandRequest,
    Reply,
    ServerConnection,
)

if TYPE_CHECKING:
    from resistance.node.host import Association, SessionHost
    from resistance.node.net import Listening, PendingDial, Stream

log = logging.getLogger("resistance.node")

ERRNO_REPLY: dict[int, Reply] = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.NOT_ALLOWED,
    errno.EPERM: Reply.NOT_ALLOWED,
    errno.EAFNOSUPPORT: Reply.ADDRESS_TYPE_NOT_SUPPORTED,
}
"""How a failed outbound connect is told to the client (RFC 1928 section 6)."""


_HANDSHAKING = frozenset((GREETING, AUTH, REQUEST))
RECV_SIZE = 4096


def reply_for_errno(code: int | None) -> Reply:
    return ERRNO_REPLY.get(code or 0, Reply.GENERAL_FAILURE)


class Session:
    """Shared SOCKS5 logic; subclasses supply the client-side I/O."""

    __slots__ = (
        "bind_listener",
        "candidates",
        "conn",
        "dialing",
        "host",
        "peer_ip",
        "relay",
        "request",
        "task",
        "udp",
        "user",
        "waiting",
    )

    def __init__(self, host: SessionHost, peer_ip: str) -> None:
        self.host = host
        self.peer_ip = peer_ip
        self.conn: ServerConnection | None = ServerConnection(require_auth=host.users is not None)
        self.user: str | None = None
        self.request: CommandRequest | None = None
        # The timeout this session runs against: handshake, connect or bind.
        self.waiting: Deadlines[Session] | None = host.handshake_deadlines
        host.handshake_deadlines.add(self)
        self.task: asyncio.Task[None] | None = None
        self.dialing: PendingDial | None = None
        self.candidates: list[tuple[int, Any]] = []
        self.relay: Any = None
        self.udp: Association | None = None
        self.bind_listener: Listening | None = None

    # -- I/O hooks --------------------------------------------------------------

    def local_ip(self) -> str:
        """The node's address this client reached (for UDP and BIND replies)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close_client(self) -> None:
        raise NotImplementedError

    def start_relay(self, upstream: Stream, early: bytes, *, upstream_unread: bool = True) -> None:
        """Relay from now on; ``upstream_unread``: bytes may wait there unannounced."""
        raise NotImplementedError

    # -- input --------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client while no relay runs."""
        conn = self.conn
        if conn is None:
            return
        if conn.state is UDP:
            return  # the control connection of a UDP association carries nothing
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event.__class__ is AuthRequest:
                    assert isinstance(event, AuthRequest)
                    if not self._authenticate(conn, event):
                        return
                elif event.__class__ is CommandRequest:
                    assert isinstance(event, CommandRequest)
                    out = conn.data_to_send()
                    if out:
                        self.write(out)
                    self._on_request(event)
                    return
                else:
                    if event is PAUSED:
                        # Bytes ahead of our reply: keep them, but read no more
                        # until the request is answered (the buffer stays bounded).
                        self.pause_reading()
                    break
        except ProtocolError as exc:
            self._protocol_error(conn, exc)
            return
        out = conn.data_to_send()
        if out:
            self.write(out)

    def _authenticate(self, conn: ServerConnection, event: AuthRequest) -> bool:
        users = self.host.users
        user = users.check(event.username, event.password) if users is not None else None
        if user is None:
            conn.reject_auth()
            self.write(conn.data_to_send())
            self.host.metrics.auth_failures.labels("bad-credentials").inc()
            self.close()
            return False
        self.user = user
        conn.accept_auth()
        return True

    def _protocol_error(self, conn: ServerConnection, exc: ProtocolError) -> None:
        out = conn.data_to_send() + exc.reply
        if out:
            self.write(out)
        if isinstance(exc, BufferOverflow):
            reason = "oversized"
        elif conn.state is CLOSED and exc.reply[:2] == b"\x05\xff":
            reason = "no-acceptable-method"
        elif exc.reply[:1] == b"\x01":
            reason = "bad-auth-version"
            self.host.metrics.auth_failures.labels(reason).inc()
        elif exc.reply[:1] == b"\x05" and len(exc.reply) > 2:
            reason = f"reply-{exc.reply[1]:#04x}"
            self.host.metrics.reply_by_code[Reply(exc.reply[1])].inc()
        else:
            reason = "malformed"
        self.host.metrics.handshake_failures.labels(reason).inc()
        self.close()

    def on_eof(self) -> None:
        """The client closed its side before any relay started.

        After a complete CONNECT request that is a half-close, not a goodbye:
        the reply is still owed, and the end of the client's stream is passed
        on once the relay runs (a read there returns 0 again).
        """
        conn = self.conn
        if (
            conn is not None
            and conn.state is REPLY_PENDING
            and (self.request is not None and self.request.command is CONNECT)
        ):
            self.pause_reading()
            return
        if conn is not None and conn.state in _HANDSHAKING:
            self.host.metrics.handshake_failures.labels("eof").inc()
        self.close()

    def _wait(self, deadlines: Deadlines[Session]) -> None:
        """Run against ``deadlines``' timeout from now on, instead of any other."""
        if self.waiting is not None:
            self.waiting.discard(self)
        self.waiting = deadlines
        deadlines.add(self)

    def _stop_waiting(self) -> None:
        if self.waiting is not None:
            self.waiting.discard(self)
            self.waiting = None

    def on_handshake_timeout(self) -> None:
        self.waiting = None
        self.host.metrics.handshake_failures.labels("timeout").inc()
        self.close()

    # -- requests -------------------------------------------------------------------

    def _on_request(self, request: CommandRequest) -> None:
        self.request = request
        host = self.host
        command = request.command
        host.metrics.request_by_command[command].inc()
        if host.log_destinations:
            log.info("%s %s:%s", command.name, request.address.host, request.address.port)
        if command is CONNECT:
            if request.address.type is DOMAIN and request.address.host.endswith(CHALLENGE_SUFFIX):
                self._answer_challenge(request.address.host)
                return
            verdict = host.policy.check_port(request.address.port)
            if not verdict.allowed:
                self._refuse(verdict.reason)
                return
            self._resolve_then(request.address, self._dial)
        elif command is UDP_ASSOCIATE:
            if not host.settings.udp:
                self.reply_and_close(Reply.COMMAND_NOT_SUPPORTED)
                return
            self._start_udp(request.address)
        else:
            if not host.settings.bind:
                self.reply_and_close(Reply.COMMAND_NOT_SUPPORTED)
                return
            address = request.address
            if address.type is not DOMAIN and _is_unspecified(address.host):
                # "any peer": the peer that connects is checked when it arrives
                self._bind([(socket.AF_INET, (address.host, address.port))])
            else:
                self._resolve_then(address, self._bind)

    def _answer_challenge(self, host: str) -> None:
        """Prove to a registry that this node holds its identity key."""
        nonce = parse_challenge(host)
        identity = self.host.identity
        conn = self.conn
        if nonce is None or identity is None or conn is None:
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        binding = self.tls_binding()
        message = (
            challenge_message(nonce) if binding is None else tls_challenge_message(nonce, binding)
        )
        conn.reply(SUCCEEDED)
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send() + identity.sign(message))
        self.close()

    def tls_binding(self) -> bytes | None:
        """The SHA-256 of the certificate this client sees, if it came over TLS."""
        return None

    def _refuse(self, reason: str) -> None:
        self.host.metrics.policy_refusals.labels(reason).inc()
        # The reason only (never the client's address): -v shows why a test fails.
        log.debug("refused a destination: %s (--allow CIDR / --allow-port opens it)", reason)
        self.reply_and_close(Reply.NOT_ALLOWED)

    def _resolve_then(self, address: Address, then: Any) -> None:
        """Call ``then(candidates)`` with the allowed ``(family, sockaddr)`` list."""
        if address.type is not DOMAIN:
            family = socket.AF_INET6 if address.type is IPV6 else socket.AF_INET
            self._filter_and(then, [(family, (address.host, address.port))])
            return
        self.task = self.host.loop.create_task(
            self._resolve(address, then), name=f"resolve-{id(self):x}"
        )

    async def _resolve(self, address: Address, then: Any) -> None:
        host = self.host
        try:
            infos = await asyncio.wait_for(
                host.net.resolve(address.host, address.port), host.limits.dns_timeout
            )
        except (OSError, TimeoutError, UnicodeError):
            self.task = None
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        self.task = None
        seen: set[Any] = set()
        candidates: list[tuple[int, Any]] = []
        for family, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sockaddr not in seen:
                seen.add(sockaddr)
                candidates.append((family, sockaddr))
        if not candidates:
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        self._filter_and(then, candidates)

    def _filter_and(self, then: Any, candidates: list[tuple[int, Any]]) -> None:
        check = self.host.policy.check
        allowed = []
        refusal = ""
        for family, sockaddr in candidates:
            verdict = check(sockaddr[0], sockaddr[1])
            if verdict.allowed:
                allowed.append((family, sockaddr))
            elif not refusal:
                refusal = verdict.reason
        if not allowed:
            self._refuse(refusal)
            return
        then(allowed)

    # -- CONNECT ----------------------------------------------------------------

    def _dial(self, candidates: list[tuple[int, Any]]) -> None:
        self.candidates = candidates
        self._wait(self.host.connect_deadlines)
        self._dial_next(None)

    def _dial_next(self, last_errno: int | None) -> None:
        if not self.candidates:
            self.reply_and_close(reply_for_errno(last_errno))
            return
        family, sockaddr = self.candidates.pop(0)
        # ``_dialed`` may run before dial() returns, and may dial the next candidate.
        dialing = self.host.net.dial(family, sockaddr, self._dialed)
        if dialing is not None:
            self.dialing = dialing

    def _dialed(self, stream: Stream | None, err: int | None, unread: bool) -> None:
        self.dialing = None
        if stream is None:
            self._dial_next(err)
        else:
            self._connected(stream, upstream_unread=unread)

    def on_connect_timeout(self) -> None:
        self.waiting = None
        self.candidates = []
        self._drop_dial()
        self.reply_and_close(Reply.TTL_EXPIRED)

    def _drop_dial(self) -> None:
        dialing = self.dialing
        if dialing is not None:
            self.dialing = None
            dialing.cancel()

    def _connected(self, sock: Stream, *, upstream_unread: bool = True) -> None:
        self._stop_waiting()
        conn = self.conn
        assert conn is not None
        try:
            host, port = sock.getsockname()[:2]
        except OSError as exc:
            sock.close()
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        conn.reply(SUCCEEDED, Address.from_ip(host, port))
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send())
        early = conn.take_early_data()
        self.conn = None
        self.start_relay(sock, early, upstream_unread=upstream_unread)

    def reply_and_close(self, code: Reply) -> None:
        conn = self.conn
        if conn is not None and (conn.state is REPLY_PENDING or conn.state is BIND_PENDING):
            conn.reply(code)
            self.host.metrics.reply_by_code[code].inc()
            self.write(conn.data_to_send())
        self.close()

    # -- UDP ASSOCIATE ------------------------------------------------------------------

    def _start_udp(self, hint: Address) -> None:
        conn = self.conn
        assert conn is not None
        hint_port = hint.port if hint.type is not DOMAIN else 0
        try:
            udp = UdpAssociation(self.host, self, self.peer_ip, hint_port, self.local_ip())
        except OSError as exc:
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        self.udp = udp
        self._stop_waiting()
        conn.reply(SUCCEEDED, udp.bound_address())
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send())
        conn.take_early_data()
        self.resume_reading()  # to learn when the control connection ends

    # -- BIND -----------------------------------------------------------------------------

    def _bind(self, candidates: list[tuple[int, Any]]) -> None:
        conn = self.conn
        assert conn is not None and self.request is not None
        expected = candidates[0][1][0]
        try:
            listener = self.host.net.listen(self.local_ip(), self._on_bind_peer)
            host, port = listener.address()
        except OSError as exc:
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        self.bind_listener = listener
        self.candidates = [(0, expected)]
        conn.reply(SUCCEEDED, Address.from_ip(host, port))
        self.write(conn.data_to_send())
        self._wait(self.host.bind_deadlines)
        self.resume_reading()

    def _on_bind_peer(self, sock: Stream, addr: Any) -> None:
        expected = self.candidates[0][1]
        if _is_unspecified(expected):
            allowed = self.host.policy.check(addr[0], addr[1]).allowed
        else:
            allowed = _same_ip(expected, addr[0])
        if not allowed:
            sock.close()  # someone else knocked: keep waiting for the expected peer
            return
        self._close_bind_listener()
        self._stop_waiting()
        conn = self.conn
        assert conn is not None
        conn.reply(SUCCEEDED, Address.from_ip(addr[0], addr[1]))
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send())
        self.pause_reading()
        early = conn.take_early_data()
        self.conn = None
        # First registered by the relay, which reports whatever already waits.
        self.start_relay(sock, early, upstream_unread=False)

    def on_bind_timeout(self) -> None:
        self.waiting = None
        self._close_bind_listener()
        self.reply_and_close(Reply.TTL_EXPIRED)

    def _close_bind_listener(self) -> None:
        listener = self.bind_listener
        if listener is not None:
            self.bind_listener = None
            listener.close()

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client and everything this session holds; idempotent."""
        self._stop_waiting()
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._drop_dial()
        self._close_bind_listener()
        if self.udp is not None:
            udp, self.udp = self.udp, None
            udp.close()
        self.conn = None
        self.close_client()


class RawSession(Session):
    """A client on the plain listener, served over its raw socket.

    Its socket is watched edge-triggered by the node's reactor from accept to
    close; the relay takes the same registration over.
    """

    __slots__ = ("ending", "fd", "paused", "sock")

    def __init__(
        self, host: SessionHost, sock: socket.SocketType, peer_ip: str, reactor: Reactor
    ) -> None:
        super().__init__(host, peer_ip)
        self.sock = sock
        self.fd = sock.fileno()
        self.paused = False
        self.ending = False  # the client shut down: its FIN waits behind the data
        reactor.watch(self.fd, self.on_event)

    def on_event(self, events: int) -> None:
        if events & ENDED:
            self.ending = True
        if events & READABLE and not self.paused:
            self.on_readable()

    def on_readable(self) -> None:
        for _ in range(4):
            if self.fd < 0 or self.paused:
                return
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if not data:
                self.on_eof()
                return
            self.feed(data)
            if len(data) < RECV_SIZE and not self.ending:
                return  # drained: any later byte brings a new edge
        self.host.loop.call_soon(self.on_readable)  # a firehose: let others run first

    def local_ip(self) -> str:
        return str(self.sock.getsockname()[0])

    def write(self, data: bytes) -> None:
        # Handshake replies are tiny and the socket's send buffer is empty:
        # a non-blocking send takes them whole or the client is gone.
        try:
            self.sock.send(data)
        except OSError:
            pass

    def pause_reading(self) -> None:
        # Edge-triggered: unread bytes simply wait in the kernel.
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused and self.fd >= 0:
            self.paused = False
            self.host.loop.call_soon(self.on_readable)  # no edge comes for bytes already there

    def start_relay(self, upstream: Stream, early: bytes, *, upstream_unread: bool = True) -> None:
        # Otherwise every byte so far was read and fed (and a FIN would have been seen).
        client_unread = self.paused or self.ending
        self.paused = True  # from here on the relay reads this socket, never the session
        reactor = self.host.reactor
        assert reactor is not None
        relay = Relay(
            reactor,
            self.sock,
            cast(socket.SocketType, upstream),  # the socket network dials sockets
            pool=self.host.pipes,
            on_close=self._relay_closed,
        )
        self.relay = relay
        relay.start(early, client_unread=client_unread, upstream_unread=upstream_unread)

    def _relay_closed(self, relay: Any, exc: OSError | None) -> None:
        self.fd = -1
        self.host.session_closed(self, relay.bytes_up, relay.bytes_down)

    def close_client(self) -> None:
        if self.relay is not None:
            self.relay.close()
            return
        if self.fd >= 0:
            assert self.host.reactor is not None
            self.host.reactor.forget(self.fd)
            self.fd = -1
            self.sock.close()
            self.host.session_closed(self, 0, 0)


class StreamSession(Session):
    """A client on an asyncio transport (the TLS listener, or any listener where
    epoll is missing); the relay copies through transports."""

    __slots__ = ("_local_ip", "_tls_binding", "closed", "transport")

    def __init__(
        self,
        host: SessionHost,
        transport: asyncio.Transport,
        peer_ip: str,
        local_ip: str,
        tls_binding: bytes | None = None,
    ):
        super().__init__(host, peer_ip)
        self.transport: asyncio.Transport = transport
        self.closed = False
        self._local_ip = local_ip
        self._tls_binding = tls_binding

    def local_ip(self) -> str:
        return self._local_ip

    def tls_binding(self) -> bytes | None:
        return self._tls_binding

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def start_relay(self, upstream: Stream, early: bytes, *, upstream_unread: bool = True) -> None:
        self.transport.pause_reading()  # until the relay owns the transport
        if self.host.reactor is not None:
            self.host.reactor.release(upstream.fileno())  # the transport watches it now
        relay = TransportRelay(self._relay_closed)
        self.relay = relay
        self.task = self.host.loop.create_task(
            self._attach(relay, cast(socket.SocketType, upstream), early),
            name=f"tls-relay-{id(self):x}",
        )

    async def _attach(
        self, relay: TransportRelay, upstream: socket.SocketType, early: bytes
    ) -> None:
        # The client side first (it stays paused): the destination's bytes may
        # flow the moment its transport exists, and they must find somewhere to go.
        transport = self.transport
        transport.set_protocol(relay.client_side)
        relay.client_side.connection_made(transport)
        try:
            # Both asyncio's loop and uvloop take the C socket type; typeshed asks for
            # the Python subclass.
            await self.host.loop.connect_accepted_socket(
                lambda: relay.upstream_side, sock=cast(socket.socket, upstream)
            )
        except OSError:
            self.task = None
            upstream.close()
            relay.close()
            return
        self.task = None
        if early:
            relay.client_side.data_received(early)
        transport.resume_reading()

    def _relay_closed(self, relay: TransportRelay, exc: OSError | None) -> None:
        if not self.closed:
            self.closed = True
            self.host.session_closed(self, relay.bytes_up, relay.bytes_down)

    def close_client(self) -> None:
        if self.relay is not None:
            self.relay.close()
            return
        if not self.closed:
            self.closed = True
            self.transport.close()
            self.host.session_closed(self, 0, 0)


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_unspecified
    except ValueError:
        return False


def _same_ip(expected: str, actual: str) -> bool:
    try:
        a = ipaddress.ip_address(expected.partition("%")[0])
        b = ipaddress.ip_address(actual.partition("%")[0])
    except ValueError:
        return False
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    return a == b


__all__ = ["ERRNO_REPLY", "RawSession", "Session", "StreamSession", "reply_for_errno"]
