"""Moving bytes between an established client and its destination.

Theory of operation
-------------------
A :class:`Relay` joins two connected non-blocking sockets with two pumps, one
per direction.  Both sockets are watched edge-triggered through the
:class:`~resistance.net.reactor.Reactor`; an edge marks a side readable or
writable until an operation meets ``EAGAIN``.  A pump moves a chunk from its
source towards its destination while both allow it; when the destination
cannot take it all, the pump simply stops until the destination's next
writable edge, leaving further input in the kernel.  So at most one chunk
per direction is ever in flight: a slow reader stops its writer, and memory
never grows with what the peers send (backpressure).  After a bounded
number of chunks a busy pump yields to other connections.

On Linux the chunk is moved with ``os.splice`` from the source socket into a
pipe and from the pipe into the destination socket: the bytes stay in the
kernel and Python only sees lengths.  Pipes come from a :class:`PipePool` and
go back to it as soon as they are empty, so an idle connection holds none.
Elsewhere (or when asked) a pump copies through one preallocated buffer with
``recv_into``/``send``.

End of stream is forwarded as a half-close: when one source reaches EOF and
its pump has drained, the pump shuts down the destination's write side and
the other direction keeps flowing.  The relay closes both sockets once both
directions have ended, or at once on any error (reset, broken pipe).

Where the C extension ``resistance.net._splice`` is built (see
:mod:`resistance.net.native`), the splice pumps, the two sockets' event
handlers and the reactor's dispatch run in C: the same algorithm as
:class:`_SplicePump`, :class:`_Side` and
:meth:`~resistance.net.reactor.Reactor.dispatch` below, which serve
elsewhere.  Python still starts, ends and closes every relay
(:meth:`Relay.pump_finished`, :meth:`Relay.fail`, :meth:`Relay.close`).

TLS connections cannot be spliced; :class:`TransportRelay` relays between
two asyncio transports instead, with pause/resume backpressure.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias, cast

from resistance.net.native import NATIVE
from resistance.net.reactor import ENDED, READABLE, WRITABLE, Handler, Reactor

if NATIVE or TYPE_CHECKING:
    from resistance.net import _splice

HAS_SPLICE: Final = hasattr(os, "splice")


def _no_splice(*args: object) -> int:
    raise OSError(errno.ENOSYS, "splice(2) is Linux-only")


splice: Final[Callable[..., int]] = getattr(os, "splice", _no_splice)
_SPLICE_FLAGS: Final = (
    getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0) if HAS_SPLICE else 0
)
DEFAULT_CHUNK: Final = 1 << 20
COPY_BUFFER: Final = 64 * 1024
PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
DEFAULT_PIPE_SIZE: Final = 64 * 1024
ROUNDS: Final = 16
"""Chunks a pump moves per turn before yielding to other connections."""
_ROUNDS: Final = range(ROUNDS)


class PipePool:
    """Empty pipes for splice pumps, reused instead of made per chunk."""

    __slots__ = ("free", "keep", "size", "slots")

    def __init__(self, *, size: int = 0, keep: int = 256) -> None:
        self.size = size
        self.keep = keep
        # A deque, not a list: a list shrinking to empty and growing again reallocates
        # on every pop and append, and one pipe is taken and given back per chunk.
        self.free: deque[tuple[int, int]] = deque()
        self.slots = 0
        """Buffer slots of the smallest pipe made so far: one splice can fill each
        with a single segment, so a read shorter than this cannot have filled a pipe."""

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        size = DEFAULT_PIPE_SIZE
        if self.size:
            try:
                size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
            except OSError:
                pass  # over the per-user pipe limit: this one keeps the default size
        slots = max(1, size // PAGE)
        self.slots = slots if not self.slots else min(self.slots, slots)
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def __len__(self) -> int:
        """Empty pipes kept."""
        return len(self.free)

    def close(self) -> None:
        while self.free:
            r, w = self.free.pop()
            os.close(r)
            os.close(w)


AnyPipePool: TypeAlias = "PipePool | _splice.PipePool"


def new_pipe_pool(*, size: int = 0, keep: int = 256) -> AnyPipePool:
    """The pool the node's splice relays take pipes from: the C one where it is built."""
    if NATIVE:
        return _splice.PipePool(size=size, keep=keep)
    return PipePool(size=size, keep=keep)


class _Pump:
    """One direction of a relay: from ``src`` to ``dst``.

    ``readable`` and ``writable`` remember the last edge seen on each side
    until an operation meets ``EAGAIN``; :meth:`run` moves bytes while both
    allow it, a bounded number of rounds at a time.
    """

    __slots__ = (
        "done",
        "dst",
        "dst_fd",
        "ending",
        "eof",
        "loop",
        "moved",
        "pending",
        "readable",
        "relay",
        "src",
        "src_fd",
        "writable",
    )

    def __init__(self, relay: Relay, src: socket.SocketType, dst: socket.SocketType) -> None:
        # Cleared when the relay closes (see :meth:`halt`), so that the relay and
        # its pumps form no reference cycle and are freed without the cyclic GC.
        self.relay: Relay | None = relay
        self.loop = relay.loop
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pending = 0
        self.moved = 0
        self.eof = False
        self.ending = False  # the source announced its end (RDHUP/HUP/ERR): read until 0
        self.done = False
        # Bytes may already wait on either side: look once before the first edge.
        self.readable = True
        self.writable = True

    def run(self) -> None:
        """Move bytes while both sides allow it, up to ``ROUNDS`` chunks a turn."""
        raise NotImplementedError

    def _fail(self, exc: OSError) -> None:
        relay = self.relay
        if relay is not None:
            relay.fail(exc)

    def _finish(self) -> None:
        self.done = True
        relay = self.relay
        assert relay is not None  # a pump of a closed relay is done and never runs
        relay.pump_finished(self)

    def halt(self) -> None:
        """The relay is closing: never run again, give back what is held."""
        self.done = True
        self.relay = None
        self.stop()

    def stop(self) -> None:
        pass


class _SplicePump(_Pump):
    __slots__ = ("chunk", "pipe", "pool")

    def __init__(
        self, relay: Relay, src: socket.SocketType, dst: socket.SocketType, pool: PipePool
    ) -> None:
        super().__init__(relay, src, dst)
        self.pool = pool
        self.pipe: tuple[int, int] | None = None
        self.chunk = relay.chunk

    def run(self) -> None:
        # The copy pump's loop with its _fill and _flush written inline: this runs
        # for every chunk in either direction, and each Python call on the way adds
        # to the latency of a small message (the ping-pong benchmark).
        if self.done:
            return
        pool = self.pool
        free = pool.free
        keep = pool.keep
        for _ in _ROUNDS:
            pending = self.pending
            if pending:
                if not self.writable:
                    return
                pipe = self.pipe
                assert pipe is not None
                while pending:
                    try:
                        pending -= splice(pipe[0], self.dst_fd, pending, None, None, _SPLICE_FLAGS)
                    except BlockingIOError:
                        self.pending = pending
                        self.writable = False
                        return
                    except OSError as exc:
                        self.pending = pending
                        self._fail(exc)
                        return
                self.pending = 0
                if len(free) < keep:  # pool.put, inline: empty pipes go back
                    free.append(pipe)
                else:
                    pool.put(pipe)
                self.pipe = None
                continue
            if self.eof:
                self._finish()
                return
            if not self.readable:
                return
            pipe = self.pipe
            if pipe is None:
                if free:
                    pipe = free.pop()
                else:
                    try:
                        pipe = pool.get()
                    except OSError as exc:  # out of descriptors or pipe memory
                        self._fail(exc)
                        return
                self.pipe = pipe
            try:
                n = splice(self.src_fd, pipe[1], self.chunk, None, None, _SPLICE_FLAGS)
            except BlockingIOError:
                self.readable = False
                pool.put(pipe)
                self.pipe = None
                return
            except OSError as exc:
                self._fail(exc)
                return
            if n:
                self.moved += n
                self.pending = n
                if n < pool.slots and not self.ending:
                    # Fewer bytes than the pipe has slots: the pipe cannot have
                    # filled up, so the socket's queue ran dry; new data brings a
                    # new edge.  Not so once the peer has shut down: its FIN came
                    # with the last edge, and only a read returning 0 shows it.
                    self.readable = False
            else:
                pool.put(pipe)
                self.pipe = None
                self.eof = True
        # Still busy after a fair share: let other connections run first.
        self.loop.call_soon(self.run)

    def stop(self) -> None:
        if self.pipe is not None:
            if self.pending:
                os.close(self.pipe[0])
                os.close(self.pipe[1])
            else:
                self.pool.put(self.pipe)
            self.pipe = None


class _CopyPump(_Pump):
    """Copies through the loop's one scratch buffer (see :meth:`Reactor.scratch`).

    A chunk read into the scratch buffer is written out at once; only what a
    full destination does not take is copied aside (``held``), because the
    next pump to run reads into the same buffer.  So a connection allocates
    nothing per chunk, and an idle or flowing one holds no buffer of its own.
    """

    __slots__ = ("held", "offset", "scratch")

    def __init__(self, relay: Relay, src: socket.SocketType, dst: socket.SocketType) -> None:
        super().__init__(relay, src, dst)
        self.scratch = relay.reactor.scratch(COPY_BUFFER)
        self.held: memoryview | None = None
        self.offset = 0

    def run(self) -> None:
        if self.done:
            return
        for _ in _ROUNDS:
            if self.pending:
                if not self.writable or not self._flush():
                    return
                continue
            if self.eof:
                self._finish()
                return
            if not self.readable:
                return
            n = self._fill()
            if n < 0:
                return
            if n == 0:
                self.eof = True
        # Still busy after a fair share: let other connections run first.
        self.loop.call_soon(self.run)

    def _fill(self) -> int:
        """Read a chunk; bytes read, 0 at EOF, -1 when nothing more can be read now."""
        try:
            n = self.src.recv_into(self.scratch)
        except BlockingIOError:
            self.readable = False
            return -1
        except OSError as exc:
            self._fail(exc)
            return -1
        if n:
            self.moved += n
            self.offset = 0
            self.pending = n
            if n < COPY_BUFFER and not self.ending:
                self.readable = False  # a short read took all there was; more brings an edge
            self._flush()  # now, while the bytes are still in the scratch buffer
            if self.done:
                return -1
        return n

    def _flush(self) -> bool:
        """Write what is pending; ``True`` once all of it is written."""
        data = self.held if self.held is not None else self.scratch
        while self.pending:
            try:
                n = self.dst.send(data[self.offset : self.offset + self.pending])
            except BlockingIOError:
                if self.held is None:
                    self.held = memoryview(bytes(data[self.offset : self.offset + self.pending]))
                    self.offset = 0
                self.writable = False
                return False
            except OSError as exc:
                self._fail(exc)
                return False
            self.offset += n
            self.pending -= n
        self.held = None
        return True

    def stop(self) -> None:
        self.held = None


class _Side:
    """The event handler of one relayed socket (``_splice.Side`` is its C twin).

    An edge reports every ready bit, so EPOLLOUT comes with nearly every input
    edge; only a pump that a full destination stopped needs it.
    """

    __slots__ = ("reading", "relay", "writing")

    def __init__(self, relay: Relay, reading: _Pump, writing: _Pump) -> None:
        self.relay = relay
        self.reading = reading  # the pump this socket is the source of
        self.writing = writing  # the pump this socket is the destination of

    def __call__(self, events: int) -> None:
        self.relay.idle = 0
        if events & READABLE:
            reading = self.reading
            reading.readable = True
            if events & ENDED:
                reading.ending = True
            reading.run()
        writing = self.writing
        if events & WRITABLE and not writing.writable:
            writing.writable = True
            writing.run()


class Relay:
    """Relays an established client connection and its upstream connection."""

    __slots__ = (
        "chunk",
        "client",
        "client_fd",
        "closed",
        "down",
        "idle",
        "loop",
        "on_close",
        "reactor",
        "up",
        "upstream",
        "upstream_fd",
    )

    def __init__(
        self,
        reactor: Reactor,
        client: socket.SocketType,
        upstream: socket.SocketType,
        *,
        pool: AnyPipePool | None,
        on_close: Callable[[Relay, OSError | None], None],
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        """Splice through ``pool``'s pipes where splice(2) exists (in C when the pool is
        the C one, see :func:`new_pipe_pool`); copy without a pool."""
        self.reactor = reactor
        self.loop = reactor.loop
        self.client = client
        self.upstream = upstream
        self.client_fd = client.fileno()
        self.upstream_fd = upstream.fileno()
        self.on_close = on_close
        self.chunk = chunk
        self.closed = False
        self.idle = 0
        self.up: _Pump | _splice.Pump
        self.down: _Pump | _splice.Pump
        if pool is None or not HAS_SPLICE:
            self.up = _CopyPump(self, client, upstream)
            self.down = _CopyPump(self, upstream, client)
        elif isinstance(pool, PipePool):
            self.up = _SplicePump(self, client, upstream, pool)
            self.down = _SplicePump(self, upstream, client, pool)
        else:
            loop = self.loop
            self.up = _splice.Pump(self, self.client_fd, self.upstream_fd, pool, chunk, loop)
            self.down = _splice.Pump(self, self.upstream_fd, self.client_fd, pool, chunk, loop)

    @property
    def bytes_up(self) -> int:
        return self.up.moved

    @property
    def bytes_down(self) -> int:
        return self.down.moved

    def start(
        self, early: bytes = b"", *, client_unread: bool = True, upstream_unread: bool = True
    ) -> None:
        """Send bytes the client sent ahead of the reply, then relay.

        ``client_unread``/``upstream_unread`` say whether bytes may already wait
        on a side without a new edge to announce them (then the pump looks
        once); a descriptor registered here for the first time needs no look,
        since registering reports its current state.
        """
        if early:
            try:
                sent = self.upstream.send(early)
            except OSError as exc:
                self.fail(exc)
                return
            self.up.moved += sent
            if sent != len(early):
                # A new connection's send buffer holds far more than a handshake
                # buffer, so this cannot happen short of a broken stack.
                self.fail(OSError(errno.ENOBUFS, "early data did not fit the send buffer"))
                return
        # Where bytes may wait unannounced, a FIN may wait behind them too: read
        # those sides until a read returns 0 or EAGAIN, never trusting a short one.
        self.up.readable = self.up.ending = client_unread
        self.down.readable = self.down.ending = upstream_unread
        up, down = self.up, self.down
        sides: tuple[Handler, Handler]
        if isinstance(up, _Pump) and isinstance(down, _Pump):
            sides = _Side(self, up, down), _Side(self, down, up)
        else:  # both pumps in C (__init__ makes them in pairs)
            assert not isinstance(up, _Pump) and not isinstance(down, _Pump)
            sides = _splice.Side(self, up, down), _splice.Side(self, down, up)
        self.reactor.watch(self.client_fd, sides[0])
        self.reactor.watch(self.upstream_fd, sides[1])
        up.run()
        down.run()

    def pump_finished(self, pump: _Pump | _splice.Pump) -> None:
        """``pump``'s source ended and all it read is written: pass the end on."""
        if self.up.done and self.down.done:
            self.close()  # closing sends the FIN: no separate shutdown needed
            return
        try:
            (self.upstream if pump is self.up else self.client).shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def fail(self, exc: OSError) -> None:
        self.close(exc)

    def close(self, exc: OSError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.up.halt()
        self.down.halt()
        self.reactor.forget(self.client_fd)
        self.reactor.forget(self.upstream_fd)
        self.client.close()
        self.upstream.close()
        on_close, self.on_close = self.on_close, _closed_already
        on_close(self, exc)


def _closed_already(relay: Relay, exc: OSError | None) -> None:
    """What a closed relay holds instead of its owner's callback (no cycle)."""


class _TransportSide(asyncio.Protocol):
    """One transport of a :class:`TransportRelay`; forwards what it reads to its peer."""

    def __init__(self, relay: TransportRelay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _TransportSide | None = None
        self.moved = 0
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.relay.idle = 0
        self.moved += len(data)
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        assert peer is not None and peer.transport is not None
        if not peer.transport.is_closing() and peer.transport.can_write_eof() and not peer.eof:
            peer.transport.write_eof()
            return True
        self.relay.close()
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close(exc if isinstance(exc, OSError) else None)


class TransportRelay:
    """Relays between two asyncio transports (used where splice cannot be: TLS)."""

    def __init__(self, on_close: Callable[[TransportRelay, OSError | None], None]) -> None:
        self.client_side = _TransportSide(self)
        self.upstream_side = _TransportSide(self)
        self.client_side.peer = self.upstream_side
        self.upstream_side.peer = self.client_side
        self.on_close = on_close
        self.closed = False
        self.idle = 0

    @property
    def bytes_up(self) -> int:
        return self.client_side.moved

    @property
    def bytes_down(self) -> int:
        return self.upstream_side.moved

    def close(self, exc: OSError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None:
                side.transport.close()
        self.on_close(self, exc)

    def abort(self) -> None:
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None:
                side.transport.abort()
        self.close()
