"""The probe's only contact with sockets: a narrow seam the checks run over.

:class:`Network` opens a :class:`Connection`; a connection sends and receives
bytes.  OS errors are translated here, once, into :class:`NetFailure`
carrying the :class:`~resistance.probe.check.Failure` kind, so the runner
never looks at errno.  Tests replace :class:`SocketNetwork` with scripted
peers.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Protocol

from resistance.probe.check import Failure


class NetFailure(Exception):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Connection(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes:
        """Some bytes, or ``b""`` at end of stream."""
        ...

    def close(self) -> None: ...


class Network(Protocol):
    async def connect(self, host: str, port: int) -> Connection: ...


_KINDS = {
    errno.ECONNREFUSED: Failure.REFUSED,
    errno.ECONNRESET: Failure.RESET,
    errno.EPIPE: Failure.RESET,
    errno.ECONNABORTED: Failure.RESET,
    errno.ENETUNREACH: Failure.UNREACHABLE,
    errno.EHOSTUNREACH: Failure.UNREACHABLE,
    errno.ENETDOWN: Failure.UNREACHABLE,
    errno.ETIMEDOUT: Failure.TIMEOUT,
}


def translate(exc: OSError) -> NetFailure:
    kind = _KINDS.get(exc.errno or 0, Failure.ERROR)
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return NetFailure(kind, name)


class SocketConnection:
    __slots__ = ("_loop", "sock")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self._loop = loop

    async def send(self, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(self.sock, data)
        except OSError as exc:
            raise translate(exc) from None

    async def recv(self) -> bytes:
        try:
            return await self._loop.sock_recv(self.sock, 65536)
        except OSError as exc:
            raise translate(exc) from None

    def close(self) -> None:
        self.sock.close()


class SocketNetwork:
    """Real TCP, optionally from a chosen source address (a multi-homed vantage)."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source

    async def connect(self, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source is not None:
                # Let connect() pick the port, so one source address is not limited to
                # one ephemeral range per destination-less bind.
                opt = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
                sock.setsockopt(socket.IPPROTO_IP, opt, 1)
                sock.bind((self.source, 0))
            await loop.sock_connect(sock, (host, port))
        except OSError as exc:
            sock.close()
            raise translate(exc) from None
        except BaseException:
            sock.close()
            raise
        return SocketConnection(sock, loop)


class TlsConnection:
    """TLS over a :class:`SocketConnection` through :class:`ssl.SSLObject` (memory BIOs),
    so the bytes that came on the wire are counted (``wire_received``): a censor
    counts those, and a freeze cuts a TLS record in the middle, so the plaintext
    that could be read says less about where the flow stopped."""

    __slots__ = ("incoming", "outgoing", "raw", "tls", "wire_received")

    def __init__(self, raw: SocketConnection, context: ssl.SSLContext, server_name: str) -> None:
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self.wire_received = 0

    async def _flush(self) -> None:
        if pending := self.outgoing.read():
            await self.raw.send(pending)

    async def _fill(self) -> None:
        data = await self.raw.recv()
        self.wire_received += len(data)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                raise NetFailure(Failure.WRONG_ANSWER, exc.reason or type(exc).__name__) from None
            else:
                await self._flush()
                return

    async def send(self, data: bytes) -> None:
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            raise NetFailure(Failure.WRONG_ANSWER, exc.reason or type(exc).__name__) from None
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return b""
            except ssl.SSLError as exc:
                raise NetFailure(Failure.WRONG_ANSWER, exc.reason or type(exc).__name__) from None

    def close(self) -> None:
        self.raw.close()


class TlsNetwork:
    """TCP as :class:`SocketNetwork` opens it, then a TLS handshake with ``context``
    naming ``server_name``: a check run over it speaks to a node's TLS listener
    the way the client does (its hello, its name), so a rule that stops the
    plain protocol's first bytes does not hide what comes later (a freeze).
    ``last`` is the last connection opened (its ``wire_received``)."""

    def __init__(
        self, context: ssl.SSLContext, server_name: str, source: str | None = None
    ) -> None:
        self.context = context
        self.server_name = server_name
        self.tcp = SocketNetwork(source)
        self.last: TlsConnection | None = None

    async def connect(self, host: str, port: int) -> Connection:
        raw = await self.tcp.connect(host, port)
        assert isinstance(raw, SocketConnection)
        conn = TlsConnection(raw, self.context, self.server_name)
        try:
            await conn.handshake()
        except BaseException:
            conn.close()
            raise
        self.last = conn
        return conn
