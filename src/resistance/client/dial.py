"""Opening a connection through an upstream SOCKS5 proxy.

One write carries greeting, credentials and request (see
:class:`~resistance.proto.socks5.ClientConnection`), so a dial costs one TCP
handshake and one round trip.  Every step shares one deadline.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any

from resistance.client.upstreams import Upstream
from resistance.errors import ProtocolError
from resistance.proto.socks5 import Address, ClientConnection, Command, Reply, UpstreamRefused


class DialError(Exception):
    """A dial through an upstream failed; ``reply`` is what to tell the application.

    ``answered`` says the upstream itself answered with ``reply`` (so it is alive).
    """

    def __init__(self, message: str, reply: Reply, *, answered: bool = False) -> None:
        super().__init__(message)
        self.reply = reply
        self.answered = answered


@dataclass(slots=True)
class Dialed:
    sock: socket.socket
    bound: Address
    early: bytes
    seconds: float


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


async def dial(upstream: Upstream, command: Command, address: Address, *, seconds: float) -> Dialed:
    """A non-blocking socket on which ``upstream`` has accepted the request, within ``seconds``."""
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
