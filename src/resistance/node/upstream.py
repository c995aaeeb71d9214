"""A bridge node: every outbound connection goes through another node, the exit.

Where a whitelist lets only domestic addresses through, a node on a domestic
address (the bridge) relays to a node abroad (the exit).  ``resist node
--upstream URL`` (repeatable) makes a node a bridge: :class:`UpstreamNetwork`
takes the place of the node's :class:`~resistance.node.net.SocketNetwork`, so a
SOCKS5 CONNECT is still checked against the bridge's own limits and egress
policy (after resolving, as always) and then dialed as a SOCKS5 CONNECT on the
exit, which applies its own.  The MTProto server's data-centre connections
take the same path (:meth:`UpstreamNetwork.open_transport`).

Theory of operation.  The upstreams are the transports to the exit(s), in
the order given: SOCKS5 inside TLS with the browser-like hello
(``socks5s://``, the exit's certificate pinned) and plain SOCKS5
(``socks5://``).  They sit in the client's
:class:`~resistance.client.upstreams.UpstreamPool`: the one that last worked
stays in use; when a dial through it fails (refused, reset, no TLS
handshake, no answer within :data:`HOP_TIMEOUT`) the failure is recorded,
the next is dialed at once for the same connection, and the failed one rests
with exponential backoff, so later connections skip it without waiting.  A
TLS upstream is dialed a second time first, with another hello (the
variants come in turn, one the exit did not answer is passed over), raced
beside the first once that has hung :data:`HELLO_RACE` seconds: a censor
that fingerprints one hello on the hop costs about that, not the transport
nor the user's connection (whose resist connect allows it 5 s in all).  A
refusal the exit *answers* (destination refused, not allowed) is the exit's
verdict on the destination, not a broken hop: it goes to the user as the
SOCKS reply.  The user sees an error only when every upstream fails.

A plain hop hands the session the socket itself (the splice relay takes it
over).  A TLS hop cannot be spliced: the session gets one end of a socket
pair and a :class:`~resistance.net.relay.TransportRelay` copies between the
other end and the TLS connection.  UDP ASSOCIATE and BIND cannot cross a
SOCKS5 CONNECT hop; a bridge refuses them (configuration turns both off).

Warm connections.  A TLS hop costs a handshake per user connection (3.7 ms
of the 4 ms a connection took through bridge → exit in the lab).  After a
connection through a TLS upstream the bridge keeps up to :data:`WARM_SIZE`
(``upstream_warm`` in the configuration) connections to it with the
handshake done and the pin checked, nothing sent
(:class:`~resistance.client.dial.WarmTls`); the next connection sends its
request on one and pays one round trip; when none is left it waits for
the one being made rather than starting a handshake beside it (a burst of
connections would otherwise pay twice), at most :data:`HELLO_RACE` seconds
(a warm handshake whose hello is dropped hangs until the hop timeout).  A
warm connection unused for :data:`WARM_IDLE` seconds is closed before the
exit's handshake timeout would close it, and replaced only while connections came in the last
:data:`WARM_KEEP` seconds, so an idle bridge goes cold.  A warm connection
the exit closed meanwhile costs nothing but a fresh dial; an exit's answer
is final as always.

The hop's credentials are the bridge's own user on the exit (one per
bridge, revoked on the exit by removing it and SIGHUP); they are never
logged: upstreams are named by :attr:`Upstream.label`.  SIGHUP on the bridge
reads the upstream list again (:meth:`UpstreamNetwork.reload`: new exits, a
new hop password, an exit dropped) without touching established connections;
a node becomes a bridge, or stops being one, only at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from resistance.client.dial import Dialed, DialError, WarmTls, dial, warm_tls
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.errors import ConfigError
from resistance.net.relay import TransportRelay
from resistance.node.net import DatagramSocket, DialDone, Listening, PeerArrived, Sockaddr
from resistance.node.session import ERRNO_REPLY
from resistance.proto.socks5 import CONNECT, Address, Reply

log = logging.getLogger("resistance.node")

HOP_TIMEOUT: Final = 4.0
"""Seconds one attempt on one upstream may take (TCP, TLS and the SOCKS5 reply)
before the next is tried: a hop the censor silently drops costs this once."""

HELLO_RACE: Final = 1.0
"""Seconds a TLS hop's handshake (or the warm connection being made) may hang before
the bridge dials with the next hello beside it: a censor's hello rule drops one
fingerprint's flows silently, and the user's resist connect gives a connection 5 s
(``--failover-budget``) in all.  A handshake takes milliseconds to the exit's
hundreds on a slow path."""

WARM_SIZE: Final = 2
"""Warm TLS connections kept to the upstream in use (handshake done, nothing sent)."""

WARM_IDLE: Final = 6.0
"""Seconds a warm connection is kept unused: below an exit's handshake timeout (10 s
by default), after which the exit would close it as a slow client."""

WARM_KEEP: Final = 60.0
"""Seconds after the last connection that warm ones are still replaced: an idle
bridge goes cold instead of making handshakes to its exit forever."""

SCHEMES: Final = ("socks5", "socks5s", "socks5+tls")
MAX_URL: Final = 2048

REPLY_ERRNO: Final[dict[Reply, int]] = {}
for _code, _reply in ERRNO_REPLY.items():
    REPLY_ERRNO.setdefault(_reply, _code)
"""The errno that makes the session answer the user with the exit's reply."""


def parse_upstream_url(text: str) -> Upstream:
    """An exit as ``--upstream`` names it, or one :class:`ConfigError` saying why not.

    The error never repeats the credentials.
    """
    if not isinstance(text, str) or len(text) > MAX_URL or not text.isprintable():
        raise ConfigError("bad --upstream URL: expected socks5s://USER:PASS@HOST:PORT#sha256=PIN")
    shown = text.rpartition("@")[2] or text
    try:
        parts = urlsplit(text.strip())
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"bad --upstream URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"bad --upstream URL {shown!r}: expected socks5s://, socks5+tls:// or socks5://"
        )
    if not hostname or port is None or port == 0:
        raise ConfigError(f"bad --upstream URL {shown!r}: the exit's host and port are required")
    if parts.path not in ("", "/"):
        raise ConfigError(f"bad --upstream URL {shown!r}: unexpected path {parts.path!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if (username is None) != (password is None) or username == "" or password == "":
        raise ConfigError(f"bad --upstream URL {shown!r}: give both USER and PASS, or neither")
    if (
        username is not None
        and password is not None
        and max(len(username.encode()), len(password.encode())) > 255
    ):
        raise ConfigError(f"bad --upstream URL {shown!r}: USER and PASS are 255 bytes at most")
    pin = _pin(parts.query, parts.fragment, shown)
    if scheme == "socks5":
        if pin is not None:
            raise ConfigError(f"bad --upstream URL {shown!r}: a pin needs socks5s:// (TLS)")
    elif pin is None:
        raise ConfigError(
            f"bad --upstream URL {shown!r}: TLS needs the exit's certificate pinned "
            "as #sha256=<64 hex digits> (or ?pin=)"
        )
    return Upstream(hostname, port, username, password, tls_sha256=pin)


def _pin(query: str, fragment: str, shown: str) -> str | None:
    given: list[str] = []
    if fragment:
        if not fragment.startswith("sha256="):
            raise ConfigError(f"bad --upstream URL {shown!r}: expected #sha256=PIN")
        given.append(fragment.removeprefix("sha256="))
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ConfigError(f"bad --upstream URL {shown!r}: bad query") from None
        for key, value in pairs:
            if key != "pin":
                raise ConfigError(f"bad --upstream URL {shown!r}: unknown parameter {key!r}")
            given.append(value)
    if not given:
        return None
    pins = {p.replace(":", "").lower().removeprefix("sha256=") for p in given}
    pin = pins.pop()
    if pins or len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
        raise ConfigError(f"bad --upstream URL {shown!r}: the pin is one SHA-256 in 64 hex digits")
    return pin


class _HopSocket(socket.socket):
    """The session's end of a socket pair behind a TLS hop; reports the exit's
    bound address as its own (the SOCKS reply's BND.ADDR)."""

    __slots__ = ("bound",)

    bound: tuple[str, int]

    def getsockname(self) -> Any:
        return self.bound


class UpstreamNetwork:
    """The node's network seam for a bridge: TCP dials go through the exit(s).

    Implements :class:`~resistance.node.net.NodeNetwork`.
    """

    def __init__(
        self,
        upstreams: Iterable[Upstream],
        *,
        loop: asyncio.AbstractEventLoop,
        hop_timeout: float = HOP_TIMEOUT,
        warm_size: int = WARM_SIZE,
    ) -> None:
        self.pool = UpstreamPool(upstreams)
        if not self.pool.upstreams:
            raise ConfigError("--upstream: at least one exit is needed")
        self.loop = loop
        self.hop_timeout = hop_timeout
        self.dials: set[_HopDial] = set()
        self.relays: set[TransportRelay] = set()
        self.warm_size = warm_size
        self.warm: dict[Upstream, list[WarmTls]] = {}
        self.warming: dict[Upstream, set[asyncio.Task[None]]] = {}
        self.expiries: dict[WarmTls, asyncio.TimerHandle] = {}
        self.last_use = 0.0
        self.closed = False
        #: Connections that went out on a warm connection (no TLS handshake paid).
        self.warm_hits = 0

    def reload(self, urls: Iterable[str]) -> None:
        """The upstream list again (SIGHUP): every URL parsed first, so a bad one keeps
        the running list (:class:`ConfigError`); upstreams in both keep their health.
        Established connections are the relays' and never touch the list; a dial in
        flight finishes on the upstream it took."""
        fresh = [parse_upstream_url(url) for url in urls]
        if not fresh:
            raise ConfigError(
                "--upstream: a bridge keeps at least one exit (restart it to stop being one)"
            )
        self.pool.replace(fresh)
        self._drop_warm(keep=self.pool.upstreams)
        log.info("upstream: %d transport(s) to the exit after reload", len(self.pool.upstreams))

    # -- warm TLS connections ----------------------------------------------------------

    def _take_warm(self, upstream: Upstream) -> WarmTls | None:
        """A warm connection to ``upstream`` that is still open, or None."""
        stock = self.warm.get(upstream, [])
        while stock:
            warm = stock.pop()
            handle = self.expiries.pop(warm, None)
            if handle is not None:
                handle.cancel()
            if warm.alive():
                return warm
            warm.close()
        return None

    async def _warm_for(self, upstream: Upstream) -> WarmTls | None:
        """A warm connection to ``upstream``: one in stock, else the first of those
        being made (begun before this connection came, it is done sooner than a
        new dial would be, and a new dial beside it would only slow both), else
        None."""
        warm = self._take_warm(upstream)
        tasks = self.warming.get(upstream)
        if warm is None and tasks:
            # ... but not one hanging (its hello dropped): a fresh dial races from then on
            wait = min(self.hop_timeout, HELLO_RACE)
            await asyncio.wait(set(tasks), timeout=wait, return_when=FIRST_COMPLETED)
            warm = self._take_warm(upstream)
        return warm

    def _refill(self, upstream: Upstream) -> None:
        """Warm connections to ``upstream`` up to :attr:`warm_size` (the one in use)."""
        if self.closed or upstream not in self.pool.health:
            return
        stock = self.warm.setdefault(upstream, [])
        tasks = self.warming.setdefault(upstream, set())
        for _ in range(self.warm_size - len(stock) - len(tasks)):
            task = self.loop.create_task(self._warm_one(upstream), name="upstream-warm")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _warm_one(self, upstream: Upstream) -> None:
        try:
            warm = await warm_tls(upstream, seconds=self.hop_timeout)
        except DialError as exc:
            log.debug("upstream %s: no warm connection (%s)", upstream.label, exc)
            return
        if self.closed or upstream not in self.pool.health:
            warm.close()
            return
        self.warm.setdefault(upstream, []).append(warm)
        self.expiries[warm] = self.loop.call_later(WARM_IDLE, self._expire, upstream, warm)

    def _expire(self, upstream: Upstream, warm: WarmTls) -> None:
        """An unused warm connection is closed before the exit would; replaced only
        while the bridge is in use."""
        self.expiries.pop(warm, None)
        stock = self.warm.get(upstream, [])
        if warm in stock:
            stock.remove(warm)
        warm.close()
        if self.loop.time() - self.last_use < WARM_KEEP:
            self._refill(upstream)

    def _drop_warm(self, keep: Iterable[Upstream] = ()) -> None:
        """Close warm connections (and stop warming) except to ``keep``."""
        kept = set(keep)
        for upstream in [u for u in self.warm if u not in kept]:
            for warm in self.warm.pop(upstream):
                handle = self.expiries.pop(warm, None)
                if handle is not None:
                    handle.cancel()
                warm.close()
        for upstream in [u for u in self.warming if u not in kept]:
            for task in self.warming.pop(upstream):
                task.cancel()

    # -- what the pool decides -------------------------------------------------------

    async def connect(self, address: Address) -> Dialed:
        """A connection to ``address`` through the first upstream that gets through.

        Raises :class:`DialError` with the exit's reply if the exit answered, or
        the last failure when no upstream got through."""
        pool = self.pool
        last: DialError | None = None
        for upstream in pool.order():
            try:
                dialed = await self._dial(upstream, address)
            except DialError as exc:
                if exc.answered:  # the exit is there and refuses the destination
                    pool.succeeded(upstream, None)
                    pool.used(upstream)
                    raise
                pool.failed(upstream, str(exc))
                last = exc
                continue
            pool.succeeded(upstream, dialed.seconds)
            if pool.active is not upstream and pool.active is not None:
                log.info("upstream: now through %s", upstream.label)
            pool.used(upstream)
            return dialed
        assert last is not None
        raise last

    async def _dial(self, upstream: Upstream, address: Address) -> Dialed:
        """One upstream, with a second hello over TLS: a censor that drops one hello
        fingerprint on the hop (the bridge's dials take the variants in turn) costs
        one :data:`HOP_TIMEOUT`, and the next dial, which passes over the variant
        that was not answered, carries the same connection.  A wrong certificate
        or an answer from the exit is final."""
        tries = 2 if upstream.tls_sha256 is not None else 1
        if tries == 2:
            self.last_use = self.loop.time()
            warm = await self._warm_for(upstream)
            if warm is not None:
                try:
                    dialed = await warm.request(CONNECT, address, seconds=self.hop_timeout)
                except DialError as exc:
                    if exc.answered:
                        self._refill(upstream)
                        raise
                    # the exit closed it meanwhile: a fresh dial decides about the hop
                    log.debug("upstream %s: a warm connection failed (%s)", upstream.label, exc)
                else:
                    self.warm_hits += 1
                    self._refill(upstream)
                    return dialed
        if tries == 1:
            try:
                return await dial(upstream, CONNECT, address, seconds=self.hop_timeout)
            except DialError as exc:
                if not exc.answered:
                    log.warning("upstream %s failed (%s); trying the next", upstream.label, exc)
                raise
        dialed = await self._dial_two_hellos(upstream, address)
        self._refill(upstream)
        return dialed

    async def _dial_two_hellos(self, upstream: Upstream, address: Address) -> Dialed:
        """A fresh TLS dial, raced after :data:`HELLO_RACE` by one with the next hello
        (each bounded by the hop timeout): the first that gets through wins and the
        other is cancelled (a hello still hanging then rests, client.hello).  One that
        fails before the race starts it at once.  A wrong certificate or an answer
        from the exit is final.

        Serial, the second hello came only after a whole hop timeout, and a user's
        connection could wait a warm handshake's timeout before that: past the
        failover budget of the user's resist connect (5 s), which then failed the
        application's request while the bridge was still switching hellos."""
        label = upstream.label
        first = self.loop.create_task(
            dial(upstream, CONNECT, address, seconds=self.hop_timeout), name="upstream-hello"
        )
        pending: set[asyncio.Task[Dialed]] = {first}
        raced = False
        last: DialError | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=None if raced else HELLO_RACE, return_when=FIRST_COMPLETED
                )
                for task in done:
                    try:
                        return task.result()
                    except DialError as exc:
                        if exc.answered or exc.identity:
                            if not exc.answered:
                                log.warning("upstream %s failed (%s); trying the next", label, exc)
                            raise
                        last = exc
                        log.warning(
                            "upstream %s failed (%s); trying %s",
                            label,
                            exc,
                            "the next" if raced and not pending else "another hello",
                        )
                if not raced:
                    if not done:  # (as the lab's story counts the hop's failures)
                        log.warning(
                            "upstream %s failed (no TLS handshake in %g s); trying another "
                            "hello beside it",
                            label,
                            HELLO_RACE,
                        )
                    raced = True
                    second = self.loop.create_task(
                        dial(upstream, CONNECT, address, seconds=self.hop_timeout),
                        name="upstream-hello",
                    )
                    pending.add(second)
        finally:
            for task in pending:
                task.cancel()
            for task in pending:  # a dial that won meanwhile must not leak its connection
                with contextlib.suppress(BaseException):
                    late = await task
                    late.close()
        assert last is not None
        raise last

    # -- NodeNetwork -------------------------------------------------------------------

    async def resolve(
        self, host: str, port: int | None, *, datagram: bool = False
    ) -> list[tuple[int, Sockaddr]]:
        # The bridge resolves as any node does, so its egress policy sees addresses.
        kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
        infos = await self.loop.getaddrinfo(host, port, type=kind)
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def dial(self, family: int, sockaddr: Sockaddr, done: DialDone) -> _HopDial:
        return _HopDial(self, Address.from_ip(sockaddr[0], sockaddr[1]), done)

    def listen(self, local_ip: str, on_peer: PeerArrived) -> Listening:
        raise OSError(errno.EOPNOTSUPP, "BIND cannot cross the hop to the exit")

    def open_datagram(self, family: int, address: Sockaddr) -> DatagramSocket:
        raise OSError(errno.EOPNOTSUPP, "UDP cannot cross the hop to the exit")

    def watch_readable(
        self, sock: DatagramSocket, callback: Callable[..., None], *args: Any
    ) -> None:
        raise OSError(errno.EOPNOTSUPP, "UDP cannot cross the hop to the exit")

    def unwatch(self, sock: DatagramSocket) -> None:
        return None

    # -- handing the connection over ----------------------------------------------------

    async def as_stream(self, dialed: Dialed) -> tuple[socket.socket, bool]:
        """A socket the session's splice relay can take: the hop's own when plain,
        else a socket pair's end relayed to the TLS connection."""
        if dialed.sock is not None and not dialed.early:
            return dialed.sock, True
        ours, theirs = socket.socketpair()
        stream = _HopSocket(ours.family, ours.type, fileno=ours.detach())
        stream.bound = (dialed.bound.host, dialed.bound.port)
        try:
            stream.setblocking(False)
            theirs.setblocking(False)
            relay = TransportRelay(self._relay_closed)
            self.relays.add(relay)
            # The session's side first: nothing comes from it before done() is called,
            # and the exit's bytes must find somewhere to go.
            await self.loop.connect_accepted_socket(lambda: relay.client_side, sock=theirs)
            if dialed.early:
                relay.upstream_side.data_received(dialed.early)  # towards the session
            if dialed.transport is not None:
                upstream = dialed.transport
                upstream.set_protocol(relay.upstream_side)
                relay.upstream_side.connection_made(upstream)
                upstream.resume_reading()
            else:
                assert dialed.sock is not None
                await self.loop.create_connection(lambda: relay.upstream_side, sock=dialed.sock)
        except BaseException:
            stream.close()
            theirs.close()
            dialed.close()
            raise
        return stream, True

    def _relay_closed(self, relay: TransportRelay, exc: OSError | None) -> None:
        self.relays.discard(relay)

    async def open_transport(
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """``loop.create_connection`` through the exit (the MTProto server's DC dials);
        raises ``OSError`` as that does."""
        try:
            dialed = await self.connect(Address.from_host(host, port))
        except DialError as exc:
            raise OSError(REPLY_ERRNO.get(exc.reply, errno.EIO), str(exc)) from None
        protocol = protocol_factory()
        if dialed.transport is not None:
            transport = dialed.transport
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
        else:
            assert dialed.sock is not None
            if dialed.early:  # a data centre speaks second: this is not one
                dialed.close()
                raise OSError(errno.EPROTO, "the data centre spoke first")
            try:
                transport, _ = await self.loop.create_connection(lambda: protocol, sock=dialed.sock)
            except BaseException:
                dialed.close()
                raise
            return transport, protocol
        if dialed.early:
            protocol.data_received(dialed.early)
        transport.resume_reading()
        return transport, protocol

    def close(self) -> None:
        """Cancel dials in flight, close warm connections and end relays (the node
        is stopping)."""
        self.closed = True
        self._drop_warm()
        for pending in list(self.dials):
            pending.cancel()
        for relay in list(self.relays):
            relay.abort()


class _HopDial:
    """One CONNECT through the exit on behalf of a session (a ``PendingDial``)."""

    __slots__ = ("done", "net", "task")

    def __init__(self, net: UpstreamNetwork, address: Address, done: DialDone) -> None:
        self.net = net
        self.done = done
        net.dials.add(self)
        self.task = net.loop.create_task(self._run(address), name="upstream-dial")

    async def _run(self, address: Address) -> None:
        net = self.net
        try:
            try:
                dialed = await net.connect(address)
            except DialError as exc:
                self.done(None, REPLY_ERRNO.get(exc.reply, errno.EIO), False)
                return
            try:
                stream, unread = await net.as_stream(dialed)
            except OSError as exc:
                self.done(None, exc.errno or errno.EIO, False)
                return
            self.done(stream, 0, unread)
        finally:
            net.dials.discard(self)

    def cancel(self) -> None:
        self.net.dials.discard(self)
        self.task.cancel()


def upstream_network(
    urls: Iterable[str], loop: asyncio.AbstractEventLoop, *, warm: int = WARM_SIZE
) -> UpstreamNetwork:
    return UpstreamNetwork([parse_upstream_url(url) for url in urls], loop=loop, warm_size=warm)


__all__ = ["HOP_TIMEOUT", "UpstreamNetwork", "parse_upstream_url", "upstream_network"]
