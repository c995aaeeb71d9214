"""One application connection to `resist connect`, forwarded through an upstream.

The local side is the node's own SOCKS5 session (same protocol core, same
limits, same splice relay); only what happens after the request differs:
instead of dialing the destination, the session asks upstream proxies in
the pool's order and answers the application only once one of them has
accepted.  A failed dial is retried on the next upstream, so the application
sees one slower connect instead of an error.

UDP ASSOCIATE is forwarded whole: the client opens an association on the
upstream, and datagrams (whose SOCKS5 headers are the same on both legs)
pass between the application and the upstream's relay unchanged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from asyncio import FIRST_COMPLETED
from typing import TYPE_CHECKING, Any, Protocol, cast

from resistance.client.dial import Dialed, DialError, dial
from resistance.client.upstreams import Upstream
from resistance.net.relay import TransportRelay
from resistance.node.host import SessionHost
from resistance.node.session import RawSession
from resistance.proto.socks5 import (
    ANY_IPV4,
    CONNECT,
    DOMAIN,
    SUCCEEDED,
    UDP_ASSOCIATE,
    Address,
    Command,
    CommandRequest,
    Reply,
    ServerConnection,
)

if TYPE_CHECKING:
    from resistance.client.upstreams import UpstreamPool

log = logging.getLogger("resistance.connect")

DESTINATION_FAULTS = frozenset(
    {
        Reply.HOST_UNREACHABLE,
        Reply.NETWORK_UNREACHABLE,
        Reply.CONNECTION_REFUSED,
        Reply.TTL_EXPIRED,
    }
)
"""Replies that may say more about the destination than about the upstream."""


class ConnectHost(SessionHost, Protocol):
    """The session host of ``resist connect``: a node host plus the upstreams."""

    pool: UpstreamPool
    dial_timeout: float
    max_attempts: int
    race_after: float | None
    dial_failures: int


class ClientSession(RawSession):
    """An application's connection, forwarded through the upstream pool."""

    __slots__ = ()

    @property
    def client_node(self) -> ConnectHost:
        return cast("ConnectHost", self.host)  # only a ConnectHost makes these sessions

    def _on_request(self, request: CommandRequest) -> None:
        self.request = request
        self._stop_waiting()  # the dial has its own deadlines from here on
        host = self.host
        host.metrics.request_by_command[request.command].inc()
        if request.command is CONNECT:
            self.task = host.loop.create_task(self._forward(request), name=f"forward-{id(self):x}")
        elif request.command is UDP_ASSOCIATE:
            self.task = host.loop.create_task(self._associate(request), name=f"udp-{id(self):x}")
        else:
            self.reply_and_close(Reply.COMMAND_NOT_SUPPORTED)

    async def _through_upstreams(
        self, command: Command, address: Address
    ) -> tuple[Upstream, Dialed]:
        """Dial through upstreams in the pool's order, racing a slow one.

        A censor that drops packets makes a dial hang rather than fail, so
        waiting for its timeout would stall the application for seconds.
        Instead, when an attempt has not finished after ``race_after``
        seconds the next upstream is tried alongside it (as Happy Eyeballs
        does for addresses); the first success wins and the rest are
        cancelled.  An attempt that fails starts the next one at once.
        """
        node = self.client_node
        pool = node.pool
        order = pool.order()
        if command is UDP_ASSOCIATE:  # its control connection must be plain
            order = [u for u in order if u.tls_sha256 is None]
        candidates = order[: node.max_attempts]
        racing: dict[asyncio.Task[Dialed], Upstream] = {}
        last = Reply.GENERAL_FAILURE
        started = 0
        try:
            while started < len(candidates) or racing:
                if started < len(candidates) and (not racing or node.race_after is not None):
                    upstream = candidates[started]
                    started += 1
                    task = node.loop.create_task(
                        dial(upstream, command, address, seconds=node.dial_timeout),
                        name=f"dial-{id(self):x}-{started}",
                    )
                    racing[task] = upstream
                more = started < len(candidates)
                done, _ = await asyncio.wait(
                    racing, timeout=node.race_after if more else None, return_when=FIRST_COMPLETED
                )
                for task in done:
                    upstream = racing.pop(task)
                    exc = task.exception()
                    if exc is None:
                        dialed = task.result()
                        for loser, slow in racing.items():  # still hanging: treat as failed
                            loser.cancel()
                            pool.failed(slow, "slower than another upstream")
                        racing.clear()
                        for other in done - {task}:
                            if other.exception() is None:
                                other.result().close()
                        pool.succeeded(upstream, dialed.seconds)
                        pool.used(upstream)
                        return upstream, dialed
                    if not isinstance(exc, DialError):
                        raise exc
                    last = exc.reply
                    node.dial_failures += 1
                    if exc.answered and exc.reply in DESTINATION_FAULTS:
                        pool.succeeded(upstream, None)  # alive; the destination may be the problem
                    else:
                        pool.failed(upstream, str(exc))
                        log.info("upstream %s failed: %s; trying the next", upstream.label, exc)
        finally:
            for task in racing:
                task.cancel()
        raise DialError("no upstream could carry the request", last)

    async def _dial_for(
        self, command: Command, address: Address
    ) -> tuple[ServerConnection, Dialed] | None:
        """An accepted upstream request, or ``None`` once the failure is answered."""
        try:
            _, dialed = await self._through_upstreams(command, address)
        except DialError as exc:
            self.task = None
            self.reply_and_close(exc.reply)
            return None
        self.task = None
        if self.conn is None:  # the application left meanwhile
            dialed.close()
            return None
        return self.conn, dialed

    async def _forward(self, request: CommandRequest) -> None:
        got = await self._dial_for(CONNECT, request.address)
        if got is None:
            return
        conn, dialed = got
        conn.reply(SUCCEEDED, dialed.bound)
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send() + dialed.early)
        early = conn.take_early_data()
        self.conn = None
        if dialed.sock is not None:
            self.start_relay(dialed.sock, early, upstream_unread=False)
        else:
            assert dialed.transport is not None
            await self._relay_tls(dialed.transport, early)

    async def _relay_tls(self, upstream: asyncio.Transport, early: bytes) -> None:
        """Relay to an upstream reached over TLS: both sides as transports, copying."""
        reactor = self.host.reactor
        assert reactor is not None
        self.paused = True
        reactor.release(self.fd)  # the client socket moves to a transport
        relay = TransportRelay(self._relay_closed)
        self.relay = relay
        # The upstream side first: the client's bytes may flow the moment its
        # transport exists, and they must find somewhere to go.
        upstream.set_protocol(relay.upstream_side)
        relay.upstream_side.connection_made(upstream)
        if early:
            upstream.write(early)
        try:
            # Both asyncio's loop and uvloop take the C socket type the listener makes;
            # typeshed asks for the Python subclass.
            await self.host.loop.connect_accepted_socket(
                lambda: relay.client_side, sock=cast(socket.socket, self.sock)
            )
        except OSError:
            relay.close()
            return
        upstream.resume_reading()

    async def _associate(self, request: CommandRequest) -> None:
        got = await self._dial_for(UDP_ASSOCIATE, ANY_IPV4)
        if got is None:
            return
        conn, dialed = got
        assert dialed.sock is not None  # UDP goes only through plain upstreams
        relay_host = dialed.bound.host
        if dialed.bound.type is DOMAIN or ipaddress.ip_address(relay_host).is_unspecified:
            relay_host = dialed.sock.getpeername()[0]
        hint = request.address
        try:
            forward = UdpForward(
                self,
                app_port=hint.port if hint.type is not DOMAIN else 0,
                local_ip=self.local_ip(),
                upstream_relay=(relay_host, dialed.bound.port),
                control=dialed.sock,
            )
        except OSError:
            dialed.sock.close()
            self.reply_and_close(Reply.GENERAL_FAILURE)
            return
        self.udp = forward
        conn.reply(SUCCEEDED, forward.bound_address())
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send())
        conn.take_early_data()
        self.resume_reading()  # to see the application's control connection end


class UdpForward:
    """Datagrams between the application and an upstream's UDP relay, unchanged."""

    __slots__ = (
        "app_addr",
        "app_ip",
        "app_port",
        "app_sock",
        "closed",
        "control",
        "idle",
        "session",
        "upstream_sock",
    )

    def __init__(
        self,
        session: ClientSession,
        *,
        app_port: int,
        local_ip: str,
        upstream_relay: tuple[str, int],
        control: socket.socket,
    ) -> None:
        self.session = session
        self.app_ip = session.peer_ip
        self.app_port = app_port
        self.app_addr: Any = None
        self.closed = False
        self.idle = 0
        self.control = control
        loop = session.host.loop
        family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
        self.app_sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            self.app_sock.bind((local_ip, 0))
            up_family = socket.AF_INET6 if ":" in upstream_relay[0] else socket.AF_INET
            self.upstream_sock = socket.socket(up_family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            self.upstream_sock.connect(upstream_relay)
        except OSError:
            self.app_sock.close()
            raise
        loop.add_reader(self.app_sock.fileno(), self._from_app)
        loop.add_reader(self.upstream_sock.fileno(), self._from_upstream)
        loop.add_reader(control.fileno(), self._control_readable)
        session.host.udp_associations.add(self)
        session.host.metrics.udp_associations.inc()

    def bound_address(self) -> Address:
        host, port = self.app_sock.getsockname()[:2]
        return Address.from_ip(host, port)

    def _from_app(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.app_sock.recvfrom(65535)
            except OSError:
                return
            if addr[0] != self.app_ip:
                continue
            if self.app_addr is None:
                if self.app_port and addr[1] != self.app_port:
                    continue
                self.app_addr = addr
            elif addr[1] != self.app_addr[1]:
                continue
            self.idle = 0
            try:
                self.upstream_sock.send(data)
            except OSError:
                pass

    def _from_upstream(self) -> None:
        for _ in range(64):
            try:
                data = self.upstream_sock.recv(65535)
            except OSError:
                return
            if self.app_addr is None:
                continue
            self.idle = 0
            try:
                self.app_sock.sendto(data, self.app_addr)
            except OSError:
                pass

    def _control_readable(self) -> None:
        try:
            data = self.control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the upstream ended the association
            self.session.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = self.session.host.loop
        for sock in (self.app_sock, self.upstream_sock, self.control):
            loop.remove_reader(sock.fileno())
            sock.close()
        self.session.host.udp_associations.discard(self)
        self.session.host.metrics.udp_associations.dec()
