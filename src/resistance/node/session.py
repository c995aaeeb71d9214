"""One client of the node, from its greeting to the end of its relay.

A :class:`Session` drives the sans-IO :class:`~resistance.proto.socks5.ServerConnection`
and decides: it checks credentials, applies the egress policy to the resolved
destination, dials, and only then answers "succeeded" with the address the
outbound socket really has.  It talks to its client through four small hooks
(write, pause, resume, close) plus one to hand over an established
connection, so the same logic serves the plain listener (raw sockets, splice
relay) and the TLS listener (asyncio transports, copying relay).

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
from typing import TYPE_CHECKING, Any

from resistance.errors import BufferOverflow, ProtocolError
from resistance.net.deadlines import Deadlines
from resistance.net.reactor import EPOLLERR, EPOLLHUP, READABLE, WRITABLE
from resistance.node.identity import (
    CHALLENGE_SUFFIX,
    challenge_message,
    parse_challenge,
    tls_challenge_message,
)
from resistance.node.udp import UdpAssociation
from resistance.proto.socks5 import (
    PAUSED,
    Address,
    AddressType,
    AuthRequest,
    Command,
    CommandRequest,
    Reply,
    ServerConnection,
    State,
)

if TYPE_CHECKING:
    from resistance.node.server import Node

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


# Enum members read per connection, as module globals (on Python 3.11 a read
# through the class goes through EnumType.__getattr__'s slow hook; see socks5).
_UDP_STATE = State.UDP
_REPLY_PENDING = State.REPLY_PENDING
_BIND_PENDING = State.BIND_PENDING
_HANDSHAKING = frozenset((State.GREETING, State.AUTH, State.REQUEST))
_CONNECT = Command.CONNECT
_UDP_ASSOCIATE = Command.UDP_ASSOCIATE
_DOMAIN = AddressType.DOMAIN
_IPV6 = AddressType.IPV6
_SUCCEEDED = Reply.SUCCEEDED


def reply_for_errno(code: int | None) -> Reply:
    return ERRNO_REPLY.get(code or 0, Reply.GENERAL_FAILURE)


class Session:
    """Shared SOCKS5 logic; subclasses supply the client-side I/O."""

    __slots__ = (
        "bind_listener",
        "candidates",
        "conn",
        "dial_sock",
        "node",
        "peer_ip",
        "relay",
        "request",
        "task",
        "udp",
        "user",
        "waiting",
    )

    def __init__(self, node: Node, peer_ip: str) -> None:
        self.node = node
        self.peer_ip = peer_ip
        self.conn: ServerConnection | None = ServerConnection(require_auth=node.users is not None)
        self.user: str | None = None
        self.request: CommandRequest | None = None
        # The timeout this session runs against: handshake, connect or bind.
        self.waiting: Deadlines[Session] | None = node.handshake_deadlines
        node.handshake_deadlines.add(self)
        self.task: asyncio.Task[None] | None = None
        self.dial_sock: socket.SocketType | None = None
        self.candidates: list[tuple[int, Any]] = []
        self.relay: Any = None
        self.udp: UdpAssociation | None = None
        self.bind_listener: socket.socket | None = None

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

    def start_relay(
        self, upstream: socket.SocketType, early: bytes, *, upstream_unread: bool = True
    ) -> None:
        """Relay from now on; ``upstream_unread``: bytes may wait there unannounced."""
        raise NotImplementedError

    # -- input --------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client while no relay runs."""
        conn = self.conn
        if conn is None:
            return
        if conn.state is _UDP_STATE:
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
        users = self.node.users
        user = users.check(event.username, event.password) if users is not None else None
        if user is None:
            conn.reject_auth()
            self.write(conn.data_to_send())
            self.node.metrics.auth_failures.labels("bad-credentials").inc()
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
        elif conn.state is State.CLOSED and exc.reply[:2] == b"\x05\xff":
            reason = "no-acceptable-method"
        elif exc.reply[:1] == b"\x01":
            reason = "bad-auth-version"
            self.node.metrics.auth_failures.labels(reason).inc()
        elif exc.reply[:1] == b"\x05" and len(exc.reply) > 2:
            reason = f"reply-{exc.reply[1]:#04x}"
            self.node.metrics.reply_by_code[Reply(exc.reply[1])].inc()
        else:
            reason = "malformed"
        self.node.metrics.handshake_failures.labels(reason).inc()
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
            and conn.state is _REPLY_PENDING
            and (self.request is not None and self.request.command is _CONNECT)
        ):
            self.pause_reading()
            return
        if conn is not None and conn.state in _HANDSHAKING:
            self.node.metrics.handshake_failures.labels("eof").inc()
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
        self.node.metrics.handshake_failures.labels("timeout").inc()
        self.close()

    # -- requests -------------------------------------------------------------------

    def _on_request(self, request: CommandRequest) -> None:
        self.request = request
        node = self.node
        command = request.command
        node.metrics.request_by_command[command].inc()
        if node.log_destinations:
            log.info("%s %s:%s", command.name, request.address.host, request.address.port)
        if command is _CONNECT:
            if request.address.type is _DOMAIN and request.address.host.endswith(CHALLENGE_SUFFIX):
                self._answer_challenge(request.address.host)
                return
            verdict = node.policy.check_port(request.address.port)
            if not verdict.allowed:
                self._refuse(verdict.reason)
                return
            self._resolve_then(request.address, self._dial)
        elif command is _UDP_ASSOCIATE:
            if not node.settings.udp:
                self.reply_and_close(Reply.COMMAND_NOT_SUPPORTED)
                return
            self._start_udp(request.address)
        else:
            if not node.settings.bind:
                self.reply_and_close(Reply.COMMAND_NOT_SUPPORTED)
                return
            address = request.address
            if address.type is not _DOMAIN and _is_unspecified(address.host):
                # "any peer": the peer that connects is checked when it arrives
                self._bind([(socket.AF_INET, (address.host, address.port))])
            else:
                self._resolve_then(address, self._bind)

    def _answer_challenge(self, host: str) -> None:
        """Prove to a registry that this node holds its identity key."""
        nonce = parse_challenge(host)
        identity = self.node.identity
        conn = self.conn
        if nonce is None or identity is None or conn is None:
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        binding = self.tls_binding()
        message = (
            challenge_message(nonce) if binding is None else tls_challenge_message(nonce, binding)
        )
        conn.reply(_SUCCEEDED)
        self.node.metrics.reply_by_code[_SUCCEEDED].inc()
        self.write(conn.data_to_send() + identity.sign(message))
        self.close()

    def tls_binding(self) -> bytes | None:
        """The SHA-256 of the certificate this client sees, if it came over TLS."""
        return None

    def _refuse(self, reason: str) -> None:
        self.node.metrics.policy_refusals.labels(reason).inc()
        self.reply_and_close(Reply.NOT_ALLOWED)

    def _resolve_then(self, address: Address, then: Any) -> None:
        """Call ``then(candidates)`` with the allowed ``(family, sockaddr)`` list."""
        if address.type is not _DOMAIN:
            family = socket.AF_INET6 if address.type is _IPV6 else socket.AF_INET
            self._filter_and(then, [(family, (address.host, address.port))])
            return
        self.task = self.node.loop.create_task(
            self._resolve(address, then), name=f"resolve-{id(self):x}"
        )

    async def _resolve(self, address: Address, then: Any) -> None:
        node = self.node
        try:
            infos = await asyncio.wait_for(
                node.loop.getaddrinfo(
                    address.host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                ),
                node.limits.dns_timeout,
            )
        except (OSError, TimeoutError, UnicodeError):
            self.task = None
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        self.task = None
        seen: set[Any] = set()
        candidates: list[tuple[int, Any]] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sockaddr not in seen:
                seen.add(sockaddr)
                candidates.append((family, sockaddr))
        if not candidates:
            self.reply_and_close(Reply.HOST_UNREACHABLE)
            return
        self._filter_and(then, candidates)

    def _filter_and(self, then: Any, candidates: list[tuple[int, Any]]) -> None:
        check = self.node.policy.check
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
        self._wait(self.node.connect_deadlines)
        self._dial_next(None)

    def _dial_next(self, last_errno: int | None) -> None:
        if not self.candidates:
            self.reply_and_close(reply_for_errno(last_errno))
            return
        family, sockaddr = self.candidates.pop(0)
        try:
            sock = socket.SocketType(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            self._dial_next(exc.errno)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
        except OSError as exc:
            sock.close()
            self._dial_next(exc.errno)
            return
        if err == 0:
            self._connected(sock)
        elif err == errno.EINPROGRESS:
            self.dial_sock = sock
            reactor = self.node.reactor
            if reactor is not None:
                reactor.watch(sock.fileno(), self._on_connect_event)
            else:
                self.node.loop.add_writer(sock.fileno(), self._on_connect_ready)
        else:
            sock.close()
            self._dial_next(err)

    def _on_connect_event(self, events: int) -> None:
        if events & WRITABLE:
            # Writable without an error or hang-up: the connect has succeeded, and
            # asking SO_ERROR would only cost a system call (this runs for every
            # CONNECT).  Where either is set, SO_ERROR tells what went wrong.
            self._on_connect_ready(
                unread=bool(events & READABLE), check=bool(events & (EPOLLERR | EPOLLHUP))
            )

    def _on_connect_ready(self, unread: bool = True, check: bool = True) -> None:
        sock = self.dial_sock
        if sock is None:
            return
        self.dial_sock = None
        reactor = self.node.reactor
        if reactor is None:
            self.node.loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if check else 0
        if err:
            if reactor is not None:
                reactor.forget(sock.fileno())
            sock.close()
            self._dial_next(err)
            return
        # With the reactor the socket stays registered: the relay takes it over.
        self._connected(sock, upstream_unread=unread)

    def on_connect_timeout(self) -> None:
        self.waiting = None
        self.candidates = []
        self._drop_dial()
        self.reply_and_close(Reply.TTL_EXPIRED)

    def _drop_dial(self) -> None:
        sock = self.dial_sock
        if sock is not None:
            self.dial_sock = None
            if self.node.reactor is not None:
                self.node.reactor.forget(sock.fileno())
            else:
                self.node.loop.remove_writer(sock.fileno())
            sock.close()

    def _connected(self, sock: socket.SocketType, *, upstream_unread: bool = True) -> None:
        self._stop_waiting()
        conn = self.conn
        assert conn is not None
        try:
            host, port = sock.getsockname()[:2]
        except OSError as exc:
            sock.close()
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        conn.reply(_SUCCEEDED, Address.from_ip(host, port))
        self.node.metrics.reply_by_code[_SUCCEEDED].inc()
        self.write(conn.data_to_send())
        early = conn.take_early_data()
        self.conn = None
        self.start_relay(sock, early, upstream_unread=upstream_unread)

    def reply_and_close(self, code: Reply) -> None:
        conn = self.conn
        if conn is not None and (conn.state is _REPLY_PENDING or conn.state is _BIND_PENDING):
            conn.reply(code)
            self.node.metrics.reply_by_code[code].inc()
            self.write(conn.data_to_send())
        self.close()

    # -- UDP ASSOCIATE ------------------------------------------------------------------

    def _start_udp(self, hint: Address) -> None:
        conn = self.conn
        assert conn is not None
        hint_port = hint.port if hint.type is not _DOMAIN else 0
        try:
            self.udp = UdpAssociation(self.node, self, self.peer_ip, hint_port, self.local_ip())
        except OSError as exc:
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        self._stop_waiting()
        conn.reply(_SUCCEEDED, self.udp.bound_address())
        self.node.metrics.reply_by_code[_SUCCEEDED].inc()
        self.write(conn.data_to_send())
        conn.take_early_data()
        self.resume_reading()  # to learn when the control connection ends

    # -- BIND -----------------------------------------------------------------------------

    def _bind(self, candidates: list[tuple[int, Any]]) -> None:
        conn = self.conn
        assert conn is not None and self.request is not None
        expected = candidates[0][1][0]
        try:
            local_ip = self.local_ip()
            family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setblocking(False)
            listener.bind((local_ip, 0))
            listener.listen(1)
        except OSError as exc:
            self.reply_and_close(reply_for_errno(exc.errno))
            return
        self.bind_listener = listener
        self.candidates = [(family, expected)]
        host, port = listener.getsockname()[:2]
        conn.reply(_SUCCEEDED, Address.from_ip(host, port))
        self.write(conn.data_to_send())
        self._wait(self.node.bind_deadlines)
        self.node.loop.add_reader(listener.fileno(), self._on_bind_accept)
        self.resume_reading()

    def _on_bind_accept(self) -> None:
        listener = self.bind_listener
        assert listener is not None
        try:
            sock, addr = listener.accept()
        except OSError:
            return
        expected = self.candidates[0][1]
        if _is_unspecified(expected):
            allowed = self.node.policy.check(addr[0], addr[1]).allowed
        else:
            allowed = _same_ip(expected, addr[0])
        if not allowed:
            sock.close()  # someone else knocked: keep waiting for the expected peer
            return
        self._close_bind_listener()
        self._stop_waiting()
        conn = self.conn
        assert conn is not None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.reply(_SUCCEEDED, Address.from_ip(addr[0], addr[1]))
        self.node.metrics.reply_by_code[_SUCCEEDED].inc()
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
            self.node.loop.remove_reader(listener.fileno())
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


__all__ = ["ERRNO_REPLY", "Session", "reply_for_errno"]
