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
import contextlib
import ipaddress
import logging
import socket
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from resistance.client.dial import Dialed, DialError, dial
from resistance.client.failover import Abandoned, race_upstreams
from resistance.client.mtrung import Reframer, dc_of_address, is_dc_address, read_app_init
from resistance.client.upstreams import Health, Upstream
from resistance.errors import ProtocolError
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
    from resistance.net.reactor import Reactor

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
    #: Seconds an application's connection waits for an upstream at most.
    failover_budget: float
    race_after: float | None
    dial_failures: int
    #: Networks counted as Telegram's besides the published ranges (lab, tests).
    telegram_ranges: tuple[Any, ...]
    #: Lab data-centre addresses and their DC index (for clients that leave it out).
    telegram_dcs: dict[str, int]


class ClientSession(RawSession):
    """An application's connection, forwarded through the upstream pool.

    A connection that ends before the destination sent a byte, after the
    application sent some (or broken by an error), is the upstream's failure,
    told to the pool at once: an upstream that accepts CONNECT and then
    resets or closes must not be chosen for the next connection.
    """

    __slots__ = ("answered", "upstream")

    def __init__(
        self, host: SessionHost, sock: socket.SocketType, peer_ip: str, reactor: Reactor
    ) -> None:
        super().__init__(host, sock, peer_ip, reactor)
        #: The upstream carrying this connection (None before, and once judged).
        self.upstream: Upstream | None = None
        #: Whether the destination's bytes came with the upstream's reply.
        self.answered = False

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

    def _relay_closed(self, relay: Any, exc: OSError | None) -> None:
        self.judge_upstream(relay.bytes_up, relay.bytes_down, broken=exc is not None)
        super()._relay_closed(relay, exc)

    def judge_upstream(self, up: int, down: int, *, broken: bool) -> None:
        """At the end of a relayed connection: did its upstream fail it?"""
        upstream, self.upstream = self.upstream, None
        if upstream is None or down or self.answered or not (up or broken):
            return
        self.client_node.pool.failed(upstream, "the connection died before the destination spoke")
        log.info("upstream %s broke a connection after accepting it", upstream.label)

    async def _through_upstreams(
        self, command: Command, address: Address
    ) -> tuple[Upstream, Dialed]:
        """Dial through upstreams in the pool's order within the failover budget
        (see :mod:`resistance.client.failover`).

        A censor that drops packets makes a dial hang rather than fail, so a
        slow attempt is raced by the next; an answer from the upstream that
        blames the destination leaves the upstream in good standing.  When
        nothing got through, the application is told the last upstream's
        reply, or TTL expired (0x06) when the budget ran out.
        """
        node = self.client_node
        pool = node.pool
        order = pool.order()
        # An MTProto proxy carries only DC traffic, and only through _forward_dc.
        order = [u for u in order if u.mtproto_secret is None]
        if command is UDP_ASSOCIATE:  # its control connection must be plain
            order = [u for u in order if u.tls_sha256 is None]
        last = [Reply.GENERAL_FAILURE]

        def failed(upstream: Upstream, exc: BaseException, seconds: float) -> None:
            if isinstance(exc, DialError):
                last[0] = exc.reply
                node.dial_failures += 1
                if exc.answered and exc.reply in DESTINATION_FAULTS:
                    pool.succeeded(upstream, None)  # alive; the destination may be the problem
                    return
                log.info("upstream %s failed: %s; trying the next", upstream.label, exc)
            pool.failed(upstream, str(exc), seconds=seconds, lying=getattr(exc, "identity", False))

        won, spent = await race_upstreams(
            order,
            lambda upstream, seconds: dial(upstream, command, address, seconds=seconds),
            budget=node.failover_budget,
            race_after=node.race_after,
            dial_timeout=node.dial_timeout,
            failed=failed,
            discard=Dialed.close,
            retryable=(DialError,),
            name=f"dial-{id(self):x}",
            # A TLS dial hanging on the last upstream may be a hello rule dropping
            # this variant's flows: the same node with the next hello gets through.
            again=lambda upstream: upstream.tls_sha256 is not None,
            # ... and so may one whose other candidates all failed their last dial
            # (under a whitelist every node abroad fails again as its rest ends).
            hopeless=lambda upstream: _failing(pool.health[upstream]),
        )
        if won is None:
            if spent:
                raise DialError(
                    f"no upstream answered within {node.failover_budget:g} s", Reply.TTL_EXPIRED
                )
            raise DialError("no upstream could carry the request", last[0])
        pool.succeeded(won.upstream, won.value.seconds)
        pool.used(won.upstream)
        return won.upstream, won.value

    async def _dial_for(
        self, command: Command, address: Address
    ) -> tuple[ServerConnection, Dialed] | None:
        """An accepted upstream request, or ``None`` once the failure is answered."""
        try:
            upstream, dialed = await self._through_upstreams(command, address)
        except DialError as exc:
            self.task = None
            self.reply_and_close(exc.reply)
            return None
        self.task = None
        if self.conn is None:  # the application left meanwhile
            dialed.close()
            return None
        self.upstream = upstream
        self.answered = bool(dialed.early)
        return self.conn, dialed

    async def _forward(self, request: CommandRequest) -> None:
        node = self.client_node
        if (
            request.address.type is not DOMAIN
            and any(u.mtproto_secret is not None for u in node.pool.upstreams)
            and (
                is_dc_address(request.address.host, node.telegram_ranges)
                or request.address.host in node.telegram_dcs
            )
        ):
            await self._forward_dc(request)
            return
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

    async def _forward_dc(self, request: CommandRequest) -> None:
        """A CONNECT to a data-centre address: the MTProto rung if the app speaks obfuscated2.

        The app is answered first (its init comes only after the reply), then
        its first 64 bytes decide (:mod:`resistance.client.mtrung`); upstreams
        are tried in the pool's order, a slow one raced by the next after
        ``race_after``, MTProto proxies only for a valid init, the others
        with the bytes read so far passed on unchanged.  If none carries it
        the app's connection is closed (it already has its SOCKS5 answer).
        """
        node = self.client_node
        conn = self.conn
        assert conn is not None and self.host.reactor is not None
        conn.reply(SUCCEEDED, ANY_IPV4)
        self.host.metrics.reply_by_code[SUCCEEDED].inc()
        self.write(conn.data_to_send())
        first = conn.take_early_data()
        self.conn = None
        self.paused = True
        self.host.reactor.release(self.fd)
        self.fd = -1
        pump = DcPump(self)
        self.relay = pump
        try:
            app_r, app_w = await asyncio.open_connection(sock=self.sock, limit=PUMP_READ)
            pump.writers.append(app_w)
            try:
                async with asyncio.timeout(node.dial_timeout):
                    while len(first) < 64:
                        data = await app_r.read(64 - len(first))
                        if not data:
                            return
                        first += data
            except TimeoutError:
                pass  # the app waits for the server to speak first: not obfuscated2
            dc_hint = dc_of_address(request.address.host, node.telegram_dcs)
            app = read_app_init(first[:64], dc_hint) if len(first) >= 64 else None
            dc_traffic = app is not None
            leg = await self._race_dc_legs(request.address, first, dc_traffic, dc_hint)
            if leg is None:
                return
            pump.writers.append(leg.writer)
            pump.bytes_up += len(first)  # went with the dial, and asks for an answer
            pump.bytes_down += len(leg.early)
            app_w.write(leg.early)
            await pump.run(app_r, app_w, leg.reader, leg.writer, leg.to_up, leg.to_app)
        except (OSError, TimeoutError):
            return
        finally:
            self.task = None
            pump.finish()

    async def _race_dc_legs(
        self, address: Address, first: bytes, dc_traffic: bool, dc_hint: int | None
    ) -> DcLeg | None:
        """The first upstream to carry ``first`` onwards within the failover budget, as
        :meth:`_through_upstreams` dials; MTProto proxies only for DC traffic."""
        node = self.client_node
        pool = node.pool
        order = pool.order()
        if not dc_traffic:
            order = [u for u in order if u.mtproto_secret is None]

        def failed(upstream: Upstream, exc: BaseException, seconds: float) -> None:
            if not isinstance(exc, Abandoned):
                node.dial_failures += 1
                log.info("upstream %s failed: %s; trying the next", upstream.label, exc)
            pool.failed(
                upstream,
                str(exc) or type(exc).__name__,
                seconds=seconds,
                lying=getattr(exc, "identity", False),
            )

        won, _ = await race_upstreams(
            order,
            lambda upstream, seconds: _open_leg(upstream, address, first, dc_hint, seconds),
            budget=node.failover_budget,
            race_after=node.race_after,
            dial_timeout=node.dial_timeout,
            failed=failed,
            discard=lambda leg: leg.writer.close(),
            retryable=(DialError, OSError, TimeoutError, ProtocolError),
            name=f"dc-{id(self):x}",
        )
        if won is None:
            return None
        pool.succeeded(won.upstream, won.value.seconds)
        pool.used(won.upstream)
        self.upstream = won.upstream
        self.answered = bool(won.value.early)
        return won.value

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


#: Bytes per read on either leg of a data-centre relay (and the stream buffers' limit).
PUMP_READ = 64 * 1024


@dataclass(slots=True)
class DcLeg:
    """An upstream carrying a data-centre connection, and how each direction is translated."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    seconds: float
    early: bytes  # for the app, before anything from the reader
    to_up: Callable[[bytes], bytes]
    to_app: Callable[[bytes], tuple[bytes, bytes]]


async def _open_leg(
    upstream: Upstream,
    address: Address,
    first: bytes,
    dc_hint: int | None,
    seconds: float,
) -> DcLeg:
    """``first`` (the app's bytes so far) sent on through ``upstream``: re-framed onto an
    MTProto proxy, or unchanged through a SOCKS5 upstream."""
    secret = upstream.mtproto
    if secret is not None:
        app = read_app_init(first[:64], dc_hint)  # its own ciphers: attempts may race
        assert app is not None
        reframer = Reframer(app, secret)
        reader, writer, took = await _open_mtproto(upstream, reframer, seconds)
        writer.write(reframer.to_proxy(first[64:]))
        return DcLeg(reader, writer, took, b"", reframer.to_proxy, reframer.from_proxy)
    dialed = await dial(upstream, CONNECT, address, seconds=seconds)
    try:
        reader, writer = await _streams_of(dialed)
    except BaseException:
        dialed.close()
        raise
    writer.write(first)
    return DcLeg(reader, writer, dialed.seconds, dialed.early, _same, _same_pair)


def _same(data: bytes) -> bytes:
    return data


def _same_pair(data: bytes) -> tuple[bytes, bytes]:
    return data, b""


#: A fake-TLS answer is a few KiB; more before it is complete is not an MTProto proxy.
MAX_ANSWER = 64 * 1024


async def _open_mtproto(
    upstream: Upstream, reframer: Reframer, seconds: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """A connection to the MTProto proxy, past its fake-TLS answer for ee secrets."""
    started = asyncio.get_running_loop().time()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(
                upstream.host, upstream.port, limit=PUMP_READ
            )
            writer.write(reframer.start())
            answered = 0
            while not reframer.established:
                data = await reader.read(PUMP_READ)
                if not data:
                    raise DialError("the MTProto proxy closed", Reply.GENERAL_FAILURE)
                answered += len(data)
                if answered > MAX_ANSWER:
                    raise ProtocolError("far more bytes than a fake-TLS answer")
                _, due = reframer.from_proxy(data)
                assert not due  # nothing was held back yet
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return reader, writer, asyncio.get_running_loop().time() - started


async def _streams_of(dialed: Dialed) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over a dialed upstream, plain socket or TLS transport."""
    if dialed.sock is not None:
        return await asyncio.open_connection(sock=dialed.sock, limit=PUMP_READ)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PUMP_READ, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    assert dialed.transport is not None
    transport = dialed.transport
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    transport.resume_reading()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class DcPump:
    """Both directions of a data-centre connection, translated; the session's relay.

    Reads are bounded (:data:`PUMP_READ`) and each write waits for the other
    side to drain (backpressure); the host's sweep ends it when idle.
    """

    __slots__ = ("bytes_down", "bytes_up", "done", "idle", "session", "tasks", "writers")

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.bytes_up = 0
        self.bytes_down = 0
        self.idle = 0
        self.done = False
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def run(
        self,
        app_r: asyncio.StreamReader,
        app_w: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        to_up: Callable[[bytes], bytes],
        to_app: Callable[[bytes], tuple[bytes, bytes]],
    ) -> None:
        async def up() -> None:
            while data := await app_r.read(PUMP_READ):
                self.idle = 0
                self.bytes_up += len(data)
                up_w.write(to_up(data))
                await up_w.drain()

        async def down() -> None:
            while data := await up_r.read(PUMP_READ):
                self.idle = 0
                plain, due = to_app(data)
                self.bytes_down += len(data)
                if due:
                    up_w.write(due)
                app_w.write(plain)
                await app_w.drain()

        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(up()), loop.create_task(down())]
        try:
            await asyncio.wait(self.tasks, return_when=FIRST_COMPLETED)
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(BaseException):
                    await task

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        for writer in self.writers:
            writer.close()
        if not self.writers:
            self.session.sock.close()
        self.session.judge_upstream(self.bytes_up, self.bytes_down, broken=False)
        self.session.host.session_closed(self.session, self.bytes_up, self.bytes_down)


def _failing(health: Health) -> bool:
    """Resting after a failure, or its last dial failed: not worth waiting for before
    racing a hanging upstream with another hello."""
    return health.consecutive_failures > 0 or not health.available(time.monotonic())
