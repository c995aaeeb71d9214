"""An edge-triggered epoll nested in the event loop, for the node's raw sockets.

Why not ``loop.add_reader``/``add_writer``: every call of those changes the
loop's registration of a descriptor, and a relay toggles them constantly
(reading stops when the other side is full, writing is watched only while
blocked).  Profiling connection cycles showed 18 ``epoll_ctl`` calls (half
of them failing and retried by libuv) and 4 ``ioctl`` per proxied
connection: more system calls than the SOCKS handshake itself.

Here each socket is registered once, for input and output, edge-triggered,
and never modified; closing it removes it from the epoll set.  The event
loop watches only this epoll's descriptor and calls :meth:`Reactor.dispatch`,
which hands each ready descriptor's event mask to its handler.  Handlers
treat the mask as a hint: they try the operation and stop at ``EAGAIN``
(which is what edge-triggering requires), so a stale event for a reused
descriptor number costs one failed system call and nothing else.

Where ``resistance.net._splice`` is built, :meth:`Reactor.dispatch` runs as
its C twin, which calls a relay's handlers (``_splice.Side``) without
entering the interpreter.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from resistance.net.native import NATIVE

if NATIVE or TYPE_CHECKING:
    from resistance.net import _splice

HAS_EPOLL: Final = hasattr(select, "epoll")

# Zero where epoll is missing: the raw path is Linux-only; elsewhere the node
# serves every listener through asyncio transports.
EPOLLIN: Final[int] = getattr(select, "EPOLLIN", 0)
EPOLLOUT: Final[int] = getattr(select, "EPOLLOUT", 0)
EPOLLERR: Final[int] = getattr(select, "EPOLLERR", 0)
EPOLLHUP: Final[int] = getattr(select, "EPOLLHUP", 0)
EPOLLRDHUP: Final[int] = getattr(select, "EPOLLRDHUP", 0)
EPOLLET: Final[int] = getattr(select, "EPOLLET", 0)

READABLE: Final = EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP
"""Event bits after which a read may make progress (data, EOF, or an error to collect)."""
WRITABLE: Final = EPOLLOUT | EPOLLHUP | EPOLLERR
ENDED: Final = EPOLLRDHUP | EPOLLHUP | EPOLLERR
"""Event bits that say the peer has shut down or failed: read until a read returns 0."""
"""Event bits after which a write (or a pending connect) may make progress."""
_MASK: Final = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET

Handler = Callable[[int], None]


class Reactor:
    """Descriptors registered once; their events dispatched to handlers."""

    __slots__ = ("_epoll", "_scratch", "handlers", "loop", "max_events")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_events: int = 64) -> None:
        self.loop = loop
        self.max_events = max_events
        self.handlers: dict[int, Handler] = {}
        self._epoll = select.epoll()
        self._scratch: memoryview | None = None
        fd = self._epoll.fileno()
        if NATIVE:  # the same loop as dispatch() below, in C
            loop.add_reader(fd, _splice.dispatch, fd, self.handlers, max_events)
        else:
            loop.add_reader(fd, self.dispatch)

    def scratch(self, size: int) -> memoryview:
        """A buffer shared by every handler of this loop, for bytes that do not
        outlive the callback that reads them (one loop runs one callback at a time)."""
        if self._scratch is None or len(self._scratch) < size:
            self._scratch = memoryview(bytearray(size))
        return self._scratch[:size]

    def watch(self, fd: int, handler: Handler) -> None:
        """Send ``fd``'s events to ``handler``; registers ``fd`` the first time only."""
        if fd not in self.handlers:
            self._epoll.register(fd, _MASK)
        self.handlers[fd] = handler

    def forget(self, fd: int) -> None:
        """Stop dispatching ``fd``'s events; call just before closing it."""
        self.handlers.pop(fd, None)

    def release(self, fd: int) -> None:
        """Take ``fd`` out of the epoll set (for a socket that lives on elsewhere)."""
        if self.handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def dispatch(self) -> None:
        handlers = self.handlers
        failed: Exception | None = None
        for fd, events in self._epoll.poll(0, self.max_events):
            handler = handlers.get(fd)
            if handler is not None:
                # Edge-triggered events come once: a handler that raises must not cost
                # the others theirs. The first error is raised after (the loop logs it).
                try:
                    handler(events)
                except Exception as exc:
                    failed = failed or exc
        if failed is not None:
            raise failed

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self.handlers.clear()
