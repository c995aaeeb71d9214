"""The UDP translator between AmneziaWG and a WireGuard device, on asyncio.

On a server it listens on the AmneziaWG port and forwards to wireguard-go
(or the kernel's WireGuard) on the same host; on a client it listens on
loopback for a stock WireGuard client (wg-quick, wireguard-go) and forwards
to the AmneziaWG server.  The rewriting is :class:`resistance.vpn.amnezia.Rewriter`.

Theory of operation
-------------------
Each far address is a *flow*: its own :class:`~resistance.vpn.amnezia.Rewriter`
and its own connected upstream UDP socket, so WireGuard sees one endpoint per
user (roaming, cookies and per-address rate limits keep working).  Sockets
are non-blocking and read by ``loop.add_reader`` callbacks that drain up to
:data:`BATCH` datagrams per wake-up; a datagram that cannot be sent at once
(full socket buffer) is dropped, as a router would — there is no queue to
grow.  On a server a flow is created only for a datagram that rewrites to a
WireGuard message (a handshake initiation whose mac1 is right), so junk and
scans never open sockets; flows are capped at ``max_flows`` and closed after
``idle`` seconds without traffic by a sweeper task.  :meth:`close` stops
everything; nothing here outlives it.

Where ``resistance.vpn._awg`` is built (and ``RESIST_NO_EXTENSIONS`` unset),
each reader callback instead makes one call into C (``_awg.relay``, see the
comment atop ``_awg.c``): transport messages, nearly all of a tunnel's
datagrams, are read in recvmmsg batches, rewritten by the rewriter's own
transport rules and sent (runs of one size as UDP GSO, else sendmmsg)
without entering Python; everything else comes back to the same
per-datagram code as on the Python path.  The C side finds a datagram's
flow in :attr:`_routes` (raw source address -> upstream socket, the
rewriter's live set of receiver indices, the flow), which flows register
when they open and drop when they close; on a server a stranger's datagram
reaches Python only if it has an initiation's size (or, with AWG 3's random
trailers, at least that size and an H1 value at S1).  AWG 3's header
protection is applied in C too (one ChaCha20 block per datagram).  Sockets get
:data:`SOCKET_BUFFER` bytes of buffer each way, and the command line runs
the loop on uvloop (a tunnel's datagrams mostly come one per wake-up, and
those cost less there).  bench/amnezia.py measures both paths.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from resistance.config import Endpoint
from resistance.errors import ConfigError
from resistance.net.native import DISABLE_ENV
from resistance.vpn.amnezia import BASE_SIZE, AmneziaParams, Rewriter
from resistance.vpn.noise import MessageType

log = logging.getLogger(__name__)

BATCH: Final = 64
MAX_DATAGRAM: Final = 65535
DEFAULT_IDLE: Final = 180.0
DEFAULT_MAX_FLOWS: Final = 4096
SOCKET_BUFFER: Final = 4 << 20
SO_SNDBUFFORCE: Final = 32  # Linux's values (<asm-generic/socket.h>); not in the socket module
SO_RCVBUFFORCE: Final = 33
UDP_GRO: Final = 104  # <linux/udp.h>: receive coalesced datagrams (the C path splits them)


class Side(enum.Enum):
    """Which end of the translator speaks AmneziaWG."""

    SERVER = "server"  # listeners are AmneziaWG clients; upstream is our WireGuard
    CLIENT = "client"  # listener is our stock WireGuard client; upstream the AmneziaWG server


@dataclass(slots=True)
class Counters:
    inbound: int = 0
    outbound: int = 0
    dropped: int = 0
    flows_opened: int = 0


class _Flow:
    __slots__ = ("addr", "key", "last", "rewriter", "sock", "up_route")

    def __init__(
        self, addr: Any, key: Any, sock: socket.socket, rewriter: Rewriter, now: float
    ) -> None:
        self.addr = addr  # the far address as socket.sendto takes it
        self.key = key  # what the flow is found by: ``addr``, or its raw sockaddr (C path)
        self.sock = sock
        self.rewriter = rewriter
        self.last = now
        self.up_route: Any = None  # the C path's route for datagrams from ``sock``


def _grow_buffers(sock: socket.socket) -> None:
    """Socket buffers of SOCKET_BUFFER bytes each way (as wireguard-go asks for its own).

    A tunnel's TCP sends bursts; with the default ~200 kB a burst that arrives
    while the translator is descheduled overflows and costs a retransmission.
    Root may pass the system's cap (SO_*BUFFORCE); others get up to the cap.
    """
    for force, plain in (
        (SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _accept_gro(sock: socket.socket) -> None:
    """Let the kernel hand the C path runs of datagrams coalesced (UDP GRO), where it can."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    except OSError:
        pass  # an older kernel: one datagram per slot, as without it


def _native_module() -> Any:
    """``resistance.vpn._awg`` when it is built and not switched off, else None."""
    if os.environ.get(DISABLE_ENV):
        return None
    try:
        from resistance.vpn import _awg
    except ImportError:
        return None
    return _awg


def _address(raw: bytes) -> Any:
    """A raw ``struct sockaddr`` (as the C path reports it) as socket.recvfrom gives it."""
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6:
        flowinfo = int.from_bytes(raw[4:8], "big")
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope)
    raise ValueError(f"unexpected address family {family}")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Translator:
    """AmneziaWG on ``listen`` <-> WireGuard (see the module docstring)."""

    def __init__(
        self,
        params: AmneziaParams,
        *,
        side: Side,
        listen: Endpoint,
        target: Endpoint,
        wireguard_public: bytes,
        amnezia_publics: Callable[[], Iterable[bytes]],
        max_flows: int = DEFAULT_MAX_FLOWS,
        idle: float = DEFAULT_IDLE,
        fwmark: int = 0,
        native: bool | None = None,
    ) -> None:
        self.params = params
        self.side = side
        self.listen = listen
        self.target = target
        self._wg_public = wireguard_public
        self._amnezia_publics = amnezia_publics
        self.max_flows = max_flows
        self.idle = idle
        self.fwmark = fwmark  # on upstream sockets: wg-quick's full tunnel lets them out
        self.counters = Counters()
        self._flows: dict[Any, _Flow] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._target_addr: Any = None
        self._target_family = socket.AF_INET
        # the transport path in C (``_awg.c``): None where it is not built or is switched
        # off; ``native`` False forces the Python path, True insists on C
        self._awg = _native_module() if native is not False else None
        if native and self._awg is None:
            raise RuntimeError("the translator's C path (resistance.vpn._awg) is not available")
        # its routes: a far end's raw sockaddr -> (upstream fd, None, receiver indices, flow)
        self._routes: dict[bytes, Any] = {}
        p = params
        self._handshake_sizes = tuple(
            p.padding(t) + BASE_SIZE[t]
            for t in (MessageType.INITIATION, MessageType.RESPONSE, MessageType.COOKIE_REPLY)
        )
        self._initiation_size = self._handshake_sizes[0] if side is Side.SERVER else -1
        # AWG 3: header protection in C too; with random trailers C hands possible
        # handshakes to Python, and a stranger's datagram that may be an initiation with
        # a trailer (S1+148 bytes or more, H1 at S1 once unmasked)
        self._hp_key = p.header_protection_key or None
        self._candidates: tuple[tuple[int, int, int, int], ...] = ()
        if p.random_trailers:
            self._candidates = tuple(
                (p.padding(t) + BASE_SIZE[t], p.padding(t), p.header(t).lo, p.header(t).hi)
                for t in (MessageType.INITIATION, MessageType.RESPONSE, MessageType.COOKIE_REPLY)
            )

    @property
    def native(self) -> bool:
        """Whether transport messages move in C (``_awg.c``)."""
        return self._awg is not None

    @property
    def flows(self) -> int:
        return len(self._flows)

    async def start(self) -> Endpoint:
        """Bind and start serving; the bound address (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        infos = await loop.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_DGRAM)
        self._target_addr = infos[0][4]
        self._target_family = infos[0][0]
        sock = socket.socket(_family(self.listen.host), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _grow_buffers(sock)
            sock.bind((self.listen.host, self.listen.port))
        except OSError as exc:
            sock.close()
            # a port in use or an address not ours: no retry mends it, so one clear line
            raise ConfigError(f"cannot listen on {self.listen}: {exc.strerror or exc}") from exc
        self._sock = sock
        if self._awg is not None:
            _accept_gro(sock)  # only the C path reads coalesced datagrams
        reader = self._downstream_native if self._awg is not None else self._downstream_readable
        loop.add_reader(sock.fileno(), reader)
        self._sweeper = loop.create_task(self._sweep(), name="amnezia-translator-sweeper")
        host, port = sock.getsockname()[:2]
        return Endpoint(host, port)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        for addr in list(self._flows):
            self._close_flow(addr)
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def _sweep(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(min(30.0, self.idle / 2))
            cutoff = self._loop.time() - self.idle
            for addr in [a for a, f in self._flows.items() if f.last < cutoff]:
                self._close_flow(addr)

    def _close_flow(self, key: Any) -> None:
        flow = self._flows.pop(key, None)
        self._routes.pop(key, None)
        if flow is not None and self._loop is not None:
            self._loop.remove_reader(flow.sock.fileno())
            flow.sock.close()

    def _new_rewriter(self) -> Rewriter:
        return Rewriter(
            self.params,
            wireguard_public=self._wg_public,
            amnezia_publics=self._amnezia_publics,
        )

    def _open_flow(self, key: Any, rewriter: Rewriter) -> _Flow | None:
        assert self._loop is not None
        if len(self._flows) >= self.max_flows:
            return None
        sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _grow_buffers(sock)
            if self.fwmark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)
            sock.connect(self._target_addr)
        except OSError as exc:
            sock.close()
            log.warning("translator: cannot reach %s: %s", self.target, exc.strerror)
            return None
        addr = _address(key) if isinstance(key, bytes) else key
        flow = _Flow(addr, key, sock, rewriter, self._loop.time())
        self._flows[key] = flow
        self.counters.flows_opened += 1
        if self._awg is not None and self._sock is not None:
            server = self.side is Side.SERVER
            indices = rewriter.wireguard_indices
            # downstream datagrams from this far end go up ``sock`` ...
            self._routes[key] = (sock.fileno(), None, indices if server else None, flow)
            # ... and what ``sock`` receives goes back down to the far end
            flow.up_route = (self._sock.fileno(), key, None if server else indices, flow)
            _accept_gro(sock)
            self._loop.add_reader(sock.fileno(), self._upstream_native, flow)
        else:
            self._loop.add_reader(sock.fileno(), self._upstream_readable, flow)
        return flow

    # --- the hot path ---------------------------------------------------------

    def _downstream_readable(self) -> None:
        sock = self._sock
        if sock is None or self._loop is None:
            return
        now = self._loop.time()
        counters = self.counters
        server = self.side is Side.SERVER
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ICMP errors surface here on some kernels: not ours to act on
            counters.inbound += 1
            self._down(data, addr, now, server)

    def _down(self, data: bytes, key: Any, now: float, server: bool) -> None:
        """One datagram from a far end (Python's share of it, on the C path)."""
        counters = self.counters
        flow = self._flows.get(key)
        if server:
            rewriter = flow.rewriter if flow is not None else self._new_rewriter()
            out = rewriter.to_wireguard(data)
            if out is None:
                counters.dropped += 1
                return
            if flow is None:
                flow = self._open_flow(key, rewriter)
                if flow is None:
                    counters.dropped += 1
                    return
            flow.last = now
            self._send_up(flow, out)
        else:
            if flow is None:
                flow = self._open_flow(key, self._new_rewriter())
                if flow is None:
                    counters.dropped += 1
                    return
            flow.last = now
            wire = flow.rewriter.to_amnezia(data)
            if not wire:
                counters.dropped += 1
            for datagram in wire:
                self._send_up(flow, datagram)

    def _upstream_readable(self, flow: _Flow) -> None:
        sock = self._sock
        if sock is None:
            return
        server = self.side is Side.SERVER
        for _ in range(BATCH):
            try:
                data = flow.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ECONNREFUSED from an ICMP port-unreachable
            self._up(flow, data, sock, server)

    def _up(self, flow: _Flow, data: bytes, sock: socket.socket, server: bool) -> None:
        """One datagram from our side of ``flow``, back down to its far end."""
        counters = self.counters
        if server:
            wire = flow.rewriter.to_amnezia(data)
        else:
            out = flow.rewriter.to_wireguard(data)
            wire = [] if out is None else [out]
        if not wire:
            counters.dropped += 1
        for datagram in wire:
            try:
                sock.sendto(datagram, flow.addr)
                counters.outbound += 1
            except OSError:
                counters.dropped += 1

    # --- the hot path with transport messages in C (``_awg.c``) ------------------

    def _downstream_native(self) -> None:
        sock, awg = self._sock, self._awg
        if sock is None or self._loop is None or awg is None:
            return
        server = self.side is Side.SERVER
        p = self.params
        slow, received, sent, dropped, tags = awg.relay(
            sock.fileno(),
            server,
            p.s4,
            p.h4.lo,
            p.h4.hi,
            self._handshake_sizes,
            self._routes,
            self._initiation_size,
            self._hp_key,
            self._candidates,
        )
        now = self._loop.time()
        counters = self.counters
        counters.inbound += received
        counters.outbound += sent
        counters.dropped += dropped
        for flow in tags:
            flow.last = now
        for data, raw in slow:
            self._down(data, raw, now, server)

    def _upstream_native(self, flow: _Flow) -> None:
        sock, awg = self._sock, self._awg
        if sock is None or awg is None:
            return
        server = self.side is Side.SERVER
        p = self.params
        slow, _, sent, dropped, _ = awg.relay(
            flow.sock.fileno(),
            not server,
            p.s4,
            p.h4.lo,
            p.h4.hi,
            self._handshake_sizes,
            flow.up_route,
            -1,
            self._hp_key,
            self._candidates,
        )
        counters = self.counters
        counters.outbound += sent
        counters.dropped += dropped
        for data, _raw in slow:
            self._up(flow, data, sock, server)

    def _send_up(self, flow: _Flow, datagram: bytes) -> None:
        try:
            flow.sock.send(datagram)
            self.counters.outbound += 1
        except OSError:
            self.counters.dropped += 1


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed, else asyncio's loop (``RESIST_EVENT_LOOP=asyncio`` picks it)."""
    if os.environ.get("RESIST_EVENT_LOOP") == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_translator(translator: Translator, *, announce: str = "") -> int:
    """Serve until SIGTERM or SIGINT (for the command line); the exit status.

    On uvloop where it is installed, as the node: its wake-ups cost less than
    asyncio's own loop, and a tunnel's datagrams mostly come one per wake-up.
    """
    import signal

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        bound = await translator.start()
        print(
            f"{announce}AmneziaWG {translator.side.value} translator on {bound} "
            f"({translator.params.in_force()})",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await translator.close()
            c = translator.counters
            log.info(
                "translator stopped: %d in, %d out, %d dropped, %d flows",
                c.inbound,
                c.outbound,
                c.dropped,
                c.flows_opened,
            )

    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        runner.run(main())
    return 0
