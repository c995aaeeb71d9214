"""The node's sessions' only contact with the network: a narrow seam.

A session resolves names, dials TCP destinations, listens for one BIND peer
and opens UDP sockets, all through a :class:`NodeNetwork`.
:class:`SocketNetwork` is the real one (non-blocking sockets, the node's
edge-triggered reactor, the loop's resolver); tests script a
:class:`~resistance.node.fakenet.ScriptedNetwork` instead, so that what the
session decides (policy after resolution, the reply code for each failure,
timeouts) is tested without sockets, as ``probe/net.py`` does for probes.

Dialing is callback-driven, not a coroutine: a CONNECT to an IP literal must
not cost a task.  :meth:`NodeNetwork.dial` calls ``done(stream, 0, unread)``
or ``done(None, errno, False)`` exactly once, possibly before it returns
(then it returns ``None``); while the connect is pending it returns a handle
whose ``cancel()`` drops it without calling ``done``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from resistance.net.reactor import EPOLLERR, EPOLLHUP, READABLE, WRITABLE

if TYPE_CHECKING:
    import asyncio

    from resistance.net.reactor import Reactor

Sockaddr = Any
"""A socket address as ``getaddrinfo`` gives it: ``(host, port[, flow, scope])``."""


class Stream(Protocol):
    """An established TCP connection as the seam hands it over (a socket in real life)."""

    def fileno(self) -> int: ...

    def getsockname(self) -> Any: ...

    def close(self) -> None: ...


class DatagramSocket(Protocol):
    """A bound, non-blocking UDP socket (a socket in real life)."""

    def fileno(self) -> int: ...

    def getsockname(self) -> Any: ...

    def recvfrom(self, size: int) -> tuple[bytes, Any]: ...

    def sendto(self, data: bytes, address: Any, /) -> int: ...

    def close(self) -> None: ...


DialDone = Callable[[Stream | None, "int | None", bool], None]
"""``done(stream, 0, unread)`` on success (``unread``: bytes may already wait on
it unannounced), ``done(None, errno, False)`` on failure."""

PeerArrived = Callable[[Stream, Sockaddr], None]


class PendingDial(Protocol):
    def cancel(self) -> None:
        """Give the connect up and close its socket; ``done`` is not called."""
        ...


class Listening(Protocol):
    """A listener waiting for a BIND peer."""

    def address(self) -> tuple[str, int]: ...

    def close(self) -> None: ...


class NodeNetwork(Protocol):
    async def resolve(
        self, host: str, port: int | None, *, datagram: bool = False
    ) -> list[tuple[int, Sockaddr]]:
        """``(family, sockaddr)`` for each address of ``host``, in the resolver's order
        (duplicates and other families included); raises ``OSError`` (``socket.gaierror``)
        or ``UnicodeError`` when the name does not resolve.  The caller bounds the wait."""
        ...

    def dial(self, family: int, sockaddr: Sockaddr, done: DialDone) -> PendingDial | None:
        """Start a TCP connect to ``sockaddr`` (see the module's docstring)."""
        ...

    def listen(self, local_ip: str, on_peer: PeerArrived) -> Listening:
        """Listen on ``local_ip`` (any port) and call ``on_peer(stream, addr)`` for each
        peer that connects, until closed; the callee keeps or closes the stream.
        Raises ``OSError``."""
        ...

    def open_datagram(self, family: int, address: Sockaddr) -> DatagramSocket:
        """A non-blocking UDP socket bound to ``address``; raises ``OSError``."""
        ...

    def watch_readable(
        self, sock: DatagramSocket, callback: Callable[..., None], *args: Any
    ) -> None:
        """Call ``callback(*args)`` whenever ``sock`` may have datagrams."""
        ...

    def unwatch(self, sock: DatagramSocket) -> None:
        """Stop watching ``sock`` (call before closing it)."""
        ...


class SocketNetwork:
    """The real network: non-blocking sockets on the node's loop and reactor.

    With a reactor, a dialed socket is watched edge-triggered from the start
    and stays registered when handed over, so the splice relay takes the
    registration over without another ``epoll_ctl``.
    """

    __slots__ = ("loop", "reactor")

    def __init__(self, loop: asyncio.AbstractEventLoop, reactor: Reactor | None) -> None:
        self.loop = loop
        self.reactor = reactor

    async def resolve(
        self, host: str, port: int | None, *, datagram: bool = False
    ) -> list[tuple[int, Sockaddr]]:
        if datagram:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        else:
            infos = await self.loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def dial(self, family: int, sockaddr: Sockaddr, done: DialDone) -> PendingDial | None:
        try:
            sock = socket.SocketType(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            done(None, exc.errno, False)
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(sockaddr)
        except OSError as exc:
            sock.close()
            done(None, exc.errno, False)
            return None
        if err == 0:
            done(sock, 0, True)
            return None
        if err == errno.EINPROGRESS:
            return _Connecting(self, sock, done)
        sock.close()
        done(None, err, False)
        return None

    def listen(self, local_ip: str, on_peer: PeerArrived) -> Listening:
        family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((local_ip, 0))
            sock.listen(1)
        except OSError:
            sock.close()
            raise
        return _Listener(self.loop, sock, on_peer)

    def open_datagram(self, family: int, address: Sockaddr) -> DatagramSocket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        return sock

    def watch_readable(
        self, sock: DatagramSocket, callback: Callable[..., None], *args: Any
    ) -> None:
        self.loop.add_reader(sock.fileno(), callback, *args)

    def unwatch(self, sock: DatagramSocket) -> None:
        self.loop.remove_reader(sock.fileno())


class _Connecting:
    """A non-blocking connect waiting for its socket to become writable."""

    __slots__ = ("done", "net", "sock")

    def __init__(self, net: SocketNetwork, sock: socket.SocketType, done: DialDone) -> None:
        self.net = net
        self.sock: socket.SocketType | None = sock
        self.done = done
        reactor = net.reactor
        if reactor is not None:
            reactor.watch(sock.fileno(), self._on_event)
        else:
            net.loop.add_writer(sock.fileno(), self._on_ready)

    def _on_event(self, events: int) -> None:
        if events & WRITABLE:
            # Writable without an error or hang-up: the connect has succeeded, and
            # asking SO_ERROR would only cost a system call (this runs for every
            # CONNECT).  Where either is set, SO_ERROR tells what went wrong.
            self._on_ready(
                unread=bool(events & READABLE), check=bool(events & (EPOLLERR | EPOLLHUP))
            )

    def _on_ready(self, unread: bool = True, check: bool = True) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        reactor = self.net.reactor
        if reactor is None:
            self.net.loop.remove_writer(sock.fileno())
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if check else 0
        if err:
            if reactor is not None:
                reactor.forget(sock.fileno())
            sock.close()
            self.done(None, err, False)
            return
        # With the reactor the socket stays registered: the relay takes it over.
        self.done(sock, 0, unread)

    def cancel(self) -> None:
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        reactor = self.net.reactor
        if reactor is not None:
            reactor.forget(sock.fileno())
        else:
            self.net.loop.remove_writer(sock.fileno())
        sock.close()


class _Listener:
    """A BIND listener: accepts peers and hands them over non-blocking, with TCP_NODELAY."""

    __slots__ = ("loop", "on_peer", "sock")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, on_peer: PeerArrived
    ) -> None:
        self.loop = loop
        self.sock: socket.socket | None = sock
        self.on_peer = on_peer
        loop.add_reader(sock.fileno(), self._on_accept)

    def address(self) -> tuple[str, int]:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return host, port

    def _on_accept(self) -> None:
        if self.sock is None:
            return
        try:
            peer, addr = self.sock.accept()
        except OSError:
            return
        try:
            peer.setblocking(False)
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            peer.close()
            return
        self.on_peer(peer, addr)

    def close(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            self.loop.remove_reader(sock.fileno())
            sock.close()


__all__ = [
    "DatagramSocket",
    "DialDone",
    "Listening",
    "NodeNetwork",
    "PendingDial",
    "SocketNetwork",
    "Stream",
]
