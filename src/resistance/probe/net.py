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
