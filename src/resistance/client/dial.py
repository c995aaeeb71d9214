"""Opening a connection through an upstream SOCKS5 proxy.

One write carries greeting, credentials and request (see
:class:`~resistance.proto.socks5.ClientConnection`), so a dial costs one TCP
handshake and one round trip.  Every step shares one deadline.

The client's connections and health checks and the registry's proof of
control all dial here: the SOCKS5 client handshake exists once.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast

from resistance.client.hello import (
    dialing,
    learn_name,
    pick_variant,
    server_name,
    variant,
    variant_failed,
    variant_worked,
)
from resistance.client.upstreams import Upstream
from resistance.errors import ProtocolError
from resistance.node.tlscert import certificate_sha256
from resistance.proto.socks5 import (
    Address,
    ClientConnection,
    Command,
    Established,
    Reply,
    UpstreamRefused,
)


class DialError(Exception):
    """A dial through an upstream failed; ``reply`` is what to tell the application.

    ``answered`` says the upstream itself answered with ``reply`` (so it is alive);
    ``identity`` that it failed its identity check (a certificate not its pin).
    """

    def __init__(
        self, message: str, reply: Reply, *, answered: bool = False, identity: bool = False
    ) -> None:
        super().__init__(message)
        self.reply = reply
        self.answered = answered
        self.identity = identity


@dataclass(slots=True)
class Dialed:
    sock: socket.socket | None  # a plain connection, for the splice relay
    bound: Address
    early: bytes
    seconds: float
    transport: asyncio.Transport | None = None  # a TLS connection instead
    certificate_sha256: str | None = None  # over TLS, the pin of the certificate presented

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.transport is not None:
            self.transport.abort()


class _TlsExchange(asyncio.Protocol):
    """The SOCKS5 exchange over a TLS transport, until the request is answered.

    Without a ``machine`` the connection is warm (:class:`WarmTls`): the handshake
    is done and the pin checked, and the request waits for :meth:`request`."""

    def __init__(self, machine: ClientConnection | None, hello: bytes, pin: str | None) -> None:
        self.machine = machine
        self.hello = hello
        self.pin = pin  # None: any certificate, learned into ``seen``
        self.seen = ""
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.done: asyncio.Future[Established] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.seen = seen = certificate_sha256(der) if der else ""
        if not seen:
            self._fail(
                DialError(
                    "the upstream presented no certificate", Reply.GENERAL_FAILURE, identity=True
                )
            )
            return
        if self.pin is not None and not hmac.compare_digest(seen, self.pin):
            self._fail(
                DialError(
                    "the upstream's certificate does not match its pin",
                    Reply.GENERAL_FAILURE,
                    identity=True,
                )
            )
            return
        if der:
            learn_name(seen, der)  # the next hello to this node names it
        if self.machine is not None:
            self.transport.write(self.hello)

    def request(self, machine: ClientConnection, hello: bytes) -> None:
        """Send a warm connection's request (greeting, credentials and CONNECT in one write)."""
        if self.lost or self.transport is None or self.done.done():
            raise DialError("the warm connection was closed", Reply.GENERAL_FAILURE)
        self.machine = machine
        self.transport.write(hello)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if self.machine is None:  # a SOCKS5 server speaks second: a warm one is broken
            self.lost = True
            if self.transport is not None:
                self.transport.abort()
            return
        try:
            result = self.machine.receive_data(data)
        except UpstreamRefused as exc:
            self._fail(
                DialError(
                    str(exc), exc.code or Reply.GENERAL_FAILURE, answered=exc.code is not None
                )
            )
            return
        except ProtocolError as exc:
            self._fail(DialError(f"the upstream broke the protocol: {exc}", Reply.GENERAL_FAILURE))
            return
        if result is not None:
            assert self.transport is not None
            self.transport.pause_reading()  # the relay takes over from here
            self.done.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.machine is None:
            return  # a warm connection nobody waits on: it is just gone
        if not self.done.done():
            self.done.set_exception(
                DialError("the upstream closed the connection", Reply.GENERAL_FAILURE)
            )

    def _fail(self, error: DialError) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


#: Seconds a TLS handshake must have hung before a cancelled dial rests its hello there.
HELLO_HANG = 0.5


async def _open_tls(upstream: Upstream, exchange: _TlsExchange, seconds: float) -> None:
    """TLS to ``upstream`` with a browser's hello (the variant's turn), driving
    ``exchange`` until its request is answered (or, warm, until the handshake)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    transport: asyncio.BaseTransport | None = None
    where = f"{upstream.host}:{upstream.port}"
    chosen = pick_variant(where, time.monotonic())
    try:
        async with asyncio.timeout(seconds):
            with dialing(where, chosen, started):  # a rival passes over it once it hangs
                transport, _ = await loop.create_connection(
                    lambda: exchange, upstream.host, upstream.port, ssl=variant(*chosen),
                    server_hostname=server_name(upstream.host, exchange.pin),
                    ssl_handshake_timeout=seconds,
                )  # fmt: skip
            if exchange.machine is not None or exchange.done.done():
                await exchange.done
    except TimeoutError:
        variant_failed(where, chosen, time.monotonic())
        if transport is not None:
            cast(asyncio.Transport, transport).abort()
        raise DialError("the upstream did not answer in time", Reply.TTL_EXPIRED) from None
    except ssl.SSLError as exc:
        variant_failed(where, chosen, time.monotonic())
        if transport is not None:
            cast(asyncio.Transport, transport).abort()
        raise DialError(
            f"cannot reach the upstream: no TLS handshake ({exc.reason or type(exc).__name__})",
            Reply.GENERAL_FAILURE,
        ) from None
    except OSError as exc:
        variant_failed(where, chosen, time.monotonic())
        if transport is not None:
            cast(asyncio.Transport, transport).abort()
        raise DialError(f"cannot reach the upstream: {exc}", Reply.GENERAL_FAILURE) from None
    except BaseException:
        if transport is not None:
            cast(asyncio.Transport, transport).abort()
        if exchange.transport is None and time.monotonic() - started >= HELLO_HANG:
            # cancelled with the handshake still hanging: a rival (this upstream with
            # another hello, or another upstream) won; rest this hello here
            variant_failed(where, chosen, time.monotonic())
        raise
    assert exchange.transport is not None
    variant_worked(where, chosen)


async def _dial_tls(
    upstream: Upstream, command: Command, address: Address, seconds: float, pin: str | None
) -> Dialed:
    started = time.monotonic()
    machine = ClientConnection(upstream.username, upstream.password)
    exchange = _TlsExchange(machine, machine.start(command, address), pin)
    await _open_tls(upstream, exchange, seconds)
    assert exchange.transport is not None
    established = exchange.done.result()
    return Dialed(
        None,
        established.bound,
        machine.take_early_data(),
        time.monotonic() - started,
        exchange.transport,
        exchange.seen,
    )


class WarmTls:
    """A connection to a SOCKS5-inside-TLS upstream with the TLS handshake done and
    the pin checked, nothing sent: a request on it (:meth:`request`) costs one
    round trip instead of a TLS handshake and a round trip."""

    __slots__ = ("exchange", "opened", "upstream")

    def __init__(self, upstream: Upstream, exchange: _TlsExchange, opened: float) -> None:
        self.upstream = upstream
        self.exchange = exchange
        self.opened = opened

    def alive(self) -> bool:
        t = self.exchange.transport
        return t is not None and not self.exchange.lost and not t.is_closing()

    def close(self) -> None:
        if self.exchange.transport is not None:
            self.exchange.transport.abort()

    async def request(self, command: Command, address: Address, *, seconds: float) -> Dialed:
        """The SOCKS5 request on this connection (used once); errors as :func:`dial`'s."""
        started = time.monotonic()
        upstream, exchange = self.upstream, self.exchange
        machine = ClientConnection(upstream.username, upstream.password)
        exchange.request(machine, machine.start(command, address))
        try:
            async with asyncio.timeout(seconds):
                established = await exchange.done
        except TimeoutError:
            self.close()
            raise DialError("the upstream did not answer in time", Reply.TTL_EXPIRED) from None
        except BaseException:
            self.close()
            raise
        assert exchange.transport is not None
        return Dialed(
            None,
            established.bound,
            machine.take_early_data(),
            time.monotonic() - started,
            exchange.transport,
            exchange.seen,
        )


async def warm_tls(upstream: Upstream, *, seconds: float) -> WarmTls:
    """A :class:`WarmTls` to ``upstream`` (its ``tls_sha256`` pinned), within ``seconds``."""
    if upstream.tls_sha256 is None:
        raise ValueError("a warm connection is TLS: the upstream has no pin")
    exchange = _TlsExchange(None, b"", upstream.tls_sha256)
    await _open_tls(upstream, exchange, seconds)
    if exchange.done.done():  # the certificate was not its pin
        exchange.done.result()
    return WarmTls(upstream, exchange, time.monotonic())


class _Collector(asyncio.Protocol):
    def __init__(self, want: int, data: bytes) -> None:
        self.want = want
        self.data = data
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.want and not self.done.done():
            self.done.set_result(self.data)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.data)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.data)


async def read_at_least(dialed: Dialed, want: int, *, seconds: float) -> bytes:
    """The bytes after the reply until ``want`` have come (or the stream ended)."""
    data = dialed.early
    async with asyncio.timeout(seconds):
        if dialed.sock is not None:
            loop = asyncio.get_running_loop()
            while len(data) < want:
                chunk = await loop.sock_recv(dialed.sock, want - len(data))
                if not chunk:
                    break
                data += chunk
            return data
        assert dialed.transport is not None
        if len(data) >= want:
            return data
        collector = _Collector(want, data)
        dialed.transport.set_protocol(collector)
        dialed.transport.resume_reading()
        return await collector.done


async def _resolve(upstream: Upstream, seconds: float) -> tuple[int, Any]:
    """The upstream's socket address; IP literals skip the resolver's thread pool."""
    try:
        ip = ipaddress.ip_address(upstream.host)
    except ValueError:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(
                upstream.host, upstream.port, type=socket.SOCK_STREAM
            ),
            seconds,
        )
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), upstream.port, 0, 0)
    return socket.AF_INET, (str(ip), upstream.port)


async def dial(
    upstream: Upstream,
    command: Command,
    address: Address,
    *,
    seconds: float,
    learn_certificate: bool = False,
) -> Dialed:
    """A non-blocking socket on which ``upstream`` has accepted the request, within ``seconds``.

    Over TLS (``upstream.tls_sha256`` set) the certificate must match that
    pin.  ``learn_certificate`` dials over TLS accepting any certificate and
    reports its pin in :attr:`Dialed.certificate_sha256`: only for a caller
    that then has the node sign that pin (the registry's proof of control).
    """
    if learn_certificate:
        return await _dial_tls(upstream, command, address, seconds, None)
    if upstream.tls_sha256 is not None:
        return await _dial_tls(upstream, command, address, seconds, upstream.tls_sha256)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        family, sockaddr = await _resolve(upstream, seconds)
    except (OSError, TimeoutError) as exc:
        raise DialError(f"cannot resolve the upstream: {exc}", Reply.HOST_UNREACHABLE) from None
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        machine = ClientConnection(upstream.username, upstream.password)
        async with asyncio.timeout(seconds):
            await loop.sock_connect(sock, sockaddr)
            await loop.sock_sendall(sock, machine.start(command, address))
            while True:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise DialError("the upstream closed the connection", Reply.GENERAL_FAILURE)
                done = machine.receive_data(data)
                if done is not None:
                    return Dialed(
                        sock, done.bound, machine.take_early_data(), time.monotonic() - started
                    )
    except TimeoutError:
        sock.close()
        raise DialError("the upstream did not answer in time", Reply.TTL_EXPIRED) from None
    except UpstreamRefused as exc:
        sock.close()
        raise DialError(
            str(exc), exc.code or Reply.GENERAL_FAILURE, answered=exc.code is not None
        ) from None
    except ProtocolError as exc:
        sock.close()
        raise DialError(f"the upstream broke the protocol: {exc}", Reply.GENERAL_FAILURE) from None
    except OSError as exc:
        sock.close()
        reply = {
            errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
            errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
            errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
        }.get(exc.errno or 0, Reply.GENERAL_FAILURE)
        raise DialError(f"cannot reach the upstream: {exc.strerror or exc}", reply) from None
    except BaseException:
        sock.close()
        raise
