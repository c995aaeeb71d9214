"""The node's MTProto proxy listener: fake-TLS, obfuscated2, fronting, limits.

Theory of operation
-------------------
Each accepted client is a :class:`ClientConnection` (an asyncio protocol).
It buffers the first bytes (at most one ClientHello record) and decides:

* bytes that start a TLS handshake, with mode ``ee`` on: the whole
  ClientHello is parsed and its random checked against every user's key
  (hinted user first, see :mod:`resistance.node.mtproto_users`), then the
  time window and the replay cache.  A good hello gets the HMAC-signed
  ServerHello/CCS/ApplicationData answer; from then on the client speaks
  obfuscated2 inside TLS ApplicationData records;
* otherwise, with ``classic`` or ``dd`` on: the first 64 bytes are an
  obfuscated2 init, tried against every user's key;
* anything that does not authenticate - a browser, a scanner, random bytes,
  a truncated init, a replayed, stale or foreign hello - is *fronted*: the
  node connects to the front (``--mtproto-front``, else the domain on port
  443) and relays every byte it has seen and will see, unchanged, both ways.
  A censor's probe thus talks to the real site.  Without a front the
  connection is held silently until the handshake timeout and closed.

An authenticated client's init gives the protocol tag and the DC index.
The node connects to that DC (``--mtproto-dc`` overrides the built-in
table; an unknown index goes to DC 2, as mtg does), sends its own init
without a secret, and relays: client bytes are decrypted with the client
leg's key and encrypted with the DC leg's.  In fast mode (the default, as in
mtprotoproxy) the DC leg's reply key is the client leg's, so DC bytes go
back to the client without any AES work (ee still wraps them in TLS
records); the price is that the node's init to the DC carries that key in
the clear, which only someone who already sees the node-to-DC leg learns.

Defaults and why
----------------
``--mtproto-modes`` defaults to ``ee`` when ``--mtproto-domain`` is set, and
to ``dd`` otherwise: classic and dd connections are recognised by DPI from
their first bytes' statistics, and without fronting they also answer
probes differently from a web server; ee looks like HTTPS to a real site.

Limits: the node's connection caps (total, per client address) count MTProto
clients too; the handshake timeout runs until the DC is connected; idle
connections are closed by a sweep; per user a byte quota, an expiry time and
a connection limit hold, checked at handshake (and the quota on every read).
Buffers are bounded: a side's transport pauses the other side's reading when
its write buffer passes ``HIGH_WATER``.  Logs name users and reasons, never
client addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resistance.config import Endpoint, MTProtoSettings, MTProtoUserSpec, NodeLimits
from resistance.errors import BufferOverflow, ProtocolError
from resistance.links import mtproto_links
from resistance.node.admission import PerAddress
from resistance.node.metrics import Family, NodeMetrics
from resistance.node.mtproto_shared import (
    SHARED_REPLAY_FILE,
    SHARED_USERS_FILE,
    SharedReplayCache,
    SharedUsers,
    state_lock,
)
from resistance.node.mtproto_users import (
    REPLAY_FILE,
    HandshakeRefused,
    MTProtoUser,
    ReplayCache,
    UserTable,
    load_usage,
    resolve_users,
    save_usage,
)
from resistance.proto import faketls, obfuscated2
from resistance.proto.faketls import ProxySecret, SecretMode

log = logging.getLogger("resistance.node.mtproto")

#: Telegram's production data centres (direct mode, port 443), and test DCs.
DEFAULT_DCS_V4 = {
    1: "149.154.175.50",
    2: "149.154.167.51",
    3: "149.154.175.100",
    4: "149.154.167.91",
    5: "149.154.171.5",
}
DEFAULT_DCS_V6 = {
    1: "2001:b28:f23d:f001::a",
    2: "2001:67c:4e8:f002::a",
    3: "2001:b28:f23d:f003::a",
    4: "2001:67c:4e8:f004::a",
    5: "2001:b28:f23f:f005::a",
}
TEST_DCS_V4 = {1: "149.154.175.10", 2: "149.154.167.40", 3: "149.154.175.117"}
TEST_DC_OFFSET = 10000
FALLBACK_DC = 2

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: How much a client may send before it has authenticated (one ClientHello
#: record at most, or a 64-byte init), and while the DC is being connected.
MAX_EARLY = faketls.RECORD_HEADER_LEN + faketls.MAX_HELLO_BODY + 64 * 1024
STATE_FILE = "mtproto-state.json"
MIN_CERT_LEN = 64
FLIGHT_QUIET = 0.3
#: Without --mtproto-user the node makes one user (its secret kept in the state dir).
DEFAULT_USERS = (MTProtoUserSpec("tg"),)
SWEEP_SECONDS = 5.0
#: Classic and dd inits carry no time: they are remembered this long.
CLASSIC_REPLAY_SECONDS = 3600.0
SAVE_EVERY = 12  # sweeps between saves of usage and the replay cache
SYNC_BYTES = SharedUsers.SYNC_BYTES


def tune_malloc() -> bool:
    """Keep freed relay buffers in glibc's heap instead of giving them back.

    Every chunk an encrypting relay moves makes fresh 256 KiB buffers (read,
    decrypt, encrypt, TLS records).  With glibc's defaults each comes from
    mmap or a grown heap and goes back at once, so every chunk pays page
    faults: measured, 2.5 CPU s/GiB through the ee relay, against 1.0 with
    these settings (bench/mtproto.py).  The retained heap stays bounded by
    the trim threshold.  Returns whether glibc took the settings.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return bool(
        mallopt(m_mmap_threshold, 4 << 20)
        and mallopt(m_trim_threshold, 64 << 20)
        and mallopt(m_top_pad, 8 << 20)
    )


def encrypted_flight(data: bytes) -> int | None:
    """Bytes of ApplicationData record bodies at the start of a server's answer.

    ``None`` until one has arrived whole.  TLS 1.3 servers send their
    encrypted extensions, certificate, verify and finished messages in one
    record (BoringSSL) or one record each (OpenSSL); the fake-TLS answer has
    room for one record only, so the node matches the total.  Raises
    ProtocolError if the answer holds anything but handshake, CCS and
    ApplicationData records (an alert, not TLS).
    """
    pos = 0
    total: int | None = None
    while len(data) - pos >= faketls.RECORD_HEADER_LEN:
        kind = data[pos]
        (length,) = struct.unpack_from(">H", data, pos + 3)
        if len(data) - pos < faketls.RECORD_HEADER_LEN + length:
            break
        if kind == faketls.ContentType.APPLICATION_DATA:
            total = (total or 0) + length
        elif kind not in (faketls.ContentType.HANDSHAKE, faketls.ContentType.CHANGE_CIPHER_SPEC):
            raise ProtocolError("the front answered with no encrypted flight")
        pos += faketls.RECORD_HEADER_LEN + length
    return total


def open_replay_cache(state_dir: Path, now: float) -> SharedReplayCache:
    """The node's replay cache, shared by its workers; an older node's saved cache joins it."""
    cache = SharedReplayCache(state_dir / SHARED_REPLAY_FILE)
    old_path = state_dir / REPLAY_FILE
    with state_lock(state_dir):
        if old_path.exists():
            old = ReplayCache()
            old.load(old_path, now)
            for bucket, keys in old.buckets().items():
                for key in keys:
                    cache.seen(struct.pack("<Q", key), (bucket + 1) * ReplayCache.BUCKET, now)
            with contextlib.suppress(OSError):
                old_path.unlink()
    return cache


def default_modes(settings: MTProtoSettings) -> frozenset[str]:
    if settings.modes is not None:
        return settings.modes
    return frozenset({"ee"}) if settings.domain else frozenset({"dd"})


def checked_modes(settings: MTProtoSettings) -> frozenset[str]:
    modes = default_modes(settings)
    if "ee" in modes and not settings.domain:
        raise ProtocolError("mode ee needs a domain")
    return modes


def front_of(settings: MTProtoSettings) -> Endpoint | None:
    """Where failed handshakes go: ``--mtproto-front``, else the domain on port 443."""
    return settings.front or (Endpoint(settings.domain, 443) if settings.domain else None)


def dc_table(settings: MTProtoSettings) -> dict[int, tuple[Endpoint, ...]]:
    """DC index -> addresses to try in order: overrides, else IPv4 then IPv6."""
    table: dict[int, tuple[Endpoint, ...]] = {}
    for dc, v4 in DEFAULT_DCS_V4.items():
        table[dc] = (Endpoint(v4, 443), Endpoint(DEFAULT_DCS_V6[dc], 443))
    for dc, address in TEST_DCS_V4.items():
        table[TEST_DC_OFFSET + dc] = (Endpoint(address, 443),)
    for dc, endpoints in settings.dcs.items():
        table[dc] = endpoints
        if dc > 0 and -dc not in settings.dcs:
            table[-dc] = endpoints  # a media DC follows its DC unless given apart
    return table


class MTProtoMetrics:
    """The MTProto families, added to the node's registry (never an address)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        def family(name: str, help: str, *labels: str, kind: str = "counter") -> Family:
            fam = Family(name, help, labels, kind=kind)
            metrics.families.append(fam)
            return fam

        self.connections = family(
            "resist_mtproto_connections", "MTProto connections served, by user and mode", "user",
            "mode",
        )  # fmt: skip
        self.active = family(
            "resist_mtproto_connections_active", "MTProto connections open", "user", kind="gauge"
        )
        self.bytes = family(
            "resist_mtproto_bytes", "Bytes relayed per user (up: to the DC)", "user", "direction"
        )
        self.failures = family(
            "resist_mtproto_handshake_failures", "MTProto handshakes refused, by reason", "reason"
        )
        self.refused = family(
            "resist_mtproto_user_refusals", "Authenticated users refused by a limit", "user",
            "reason",
        )  # fmt: skip
        self.fronted = family("resist_mtproto_fronted", "Connections relayed to the front")


# --------------------------------------------------------------------------- server


class MTProtoServer:
    """The MTProto listeners of a node and their connections."""

    def __init__(
        self,
        settings: MTProtoSettings,
        limits: NodeLimits,
        *,
        state_dir: Path,
        metrics: NodeMetrics,
        loop: asyncio.AbstractEventLoop | None = None,
        now: Callable[[], float] = time.time,
        worker: tuple[int, int] | None = None,
        open_connection: Callable[..., Awaitable[tuple[Any, Any]]] | None = None,
    ) -> None:
        """``worker``: (slot, count) of a ``--workers`` node, whose users' bytes and
        connections are then counted node-wide (:class:`SharedUsers`).
        ``open_connection``: how data centres are dialed, as ``loop.create_connection``
        (a bridge's goes through its exit)."""
        self.settings = settings
        self.limits = limits
        self.state_dir = state_dir
        self.loop = loop or asyncio.get_running_loop()
        self.now = now
        self.open_connection = open_connection or self.loop.create_connection
        self.modes = checked_modes(settings)
        self.metrics = MTProtoMetrics(metrics)
        with state_lock(state_dir):  # workers resolve at once: one generated secret each
            self.users = UserTable(resolve_users(settings.users or DEFAULT_USERS, state_dir))
        self.shared_users: SharedUsers | None = None
        if worker is not None:
            self.shared_users = SharedUsers(state_dir / SHARED_USERS_FILE, worker[1], worker[0])
            self._attach(self.users.users)
        else:
            usage = load_usage(state_dir)
            for user in self.users.users:
                user.used = usage.get(user.name, 0)
        self.replay = open_replay_cache(state_dir, now())
        self.dcs = dc_table(settings)
        self.front = front_of(settings)
        self.cert_len = self._cert_len()
        self.connections: set[ClientConnection] = set()
        self.per_ip = PerAddress(self.limits.max_connections_per_ip)
        self.servers: list[asyncio.Server] = []
        self.bound: list[Endpoint] = []
        self.draining = False
        self._drained = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._learner: asyncio.Task[None] | None = None
        self._flushed: dict[int, tuple[int, int]] = {}

    def _cert_len(self) -> int:
        """The fake certificate's size: the front's own when learnt, else drawn once and kept."""
        path = self.state_dir / STATE_FILE
        with state_lock(self.state_dir):  # every worker of the node answers alike
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                value = int(json.loads(path.read_text())["cert_len"])
                if MIN_CERT_LEN <= value <= faketls.MAX_FRAGMENT:
                    return value
            value = 2500 + secrets.randbelow(2000)
            self._keep_cert_len(value)
            return value

    def _keep_cert_len(self, value: int) -> None:
        from resistance.paths import write_private

        try:
            write_private(self.state_dir / STATE_FILE, json.dumps({"cert_len": value}) + "\n")
        except OSError as exc:
            log.warning("cannot keep MTProto state: %s", exc.strerror)

    async def learn_cert_len(self) -> None:
        """Ask the front for its first encrypted flight's size and answer with the same.

        A passive observer who knows the real site's certificate chain then sees
        the same record sizes from the node (mtprotoproxy does this too).  The
        front gets an ordinary ClientHello for the domain; failures keep the
        size the node has.
        """
        front, domain = self.front, self.settings.domain
        if front is None or domain is None:
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(front.host, front.port), self.limits.connect_timeout
            )
        except (OSError, TimeoutError):
            return
        try:
            writer.write(faketls.build_client_hello(os.urandom(16), domain, self.now()))
            buffered = b""
            deadline = self.loop.time() + self.limits.connect_timeout
            while len(buffered) < 64 * 1024:
                # Until the first encrypted record, wait; after it, the flight
                # ends when the front falls quiet (it waits for our Finished).
                wait = deadline - self.loop.time()
                if encrypted_flight(buffered) is not None:
                    wait = min(wait, FLIGHT_QUIET)
                try:
                    data = await asyncio.wait_for(reader.read(65536), max(0.05, wait))
                except TimeoutError:
                    data = b""
                if not data:
                    break
                buffered += data
            size = encrypted_flight(buffered) or 0
            if MIN_CERT_LEN <= size <= faketls.MAX_FRAGMENT and size != self.cert_len:
                self.cert_len = size
                self._keep_cert_len(size)
                log.info("MTProto answers now match the front's first flight (%d bytes)", size)
        except (OSError, TimeoutError, ProtocolError):
            return
        finally:
            writer.close()

    # -- life cycle -----------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        tune_malloc()
        try:
            for i, endpoint in enumerate(self.settings.listen):
                if sockets is not None:
                    sock = sockets[i]
                else:
                    from resistance.node.server import listening_socket

                    sock = listening_socket(endpoint)
                server = await self.loop.create_server(
                    lambda: ClientConnection(self), sock=sock, backlog=4096
                )
                self.servers.append(server)
                host, port = sock.getsockname()[:2]
                self.bound.append(Endpoint(host, port))
        except BaseException:
            for server in self.servers:
                server.close()
            raise
        self._sweeper = self.loop.create_task(self._sweep(), name="mtproto-sweeper")
        self._learner = self.loop.create_task(self.learn_cert_len(), name="mtproto-cert-len")

    async def stop(self) -> None:
        """Stop accepting; relays get the drain time; then everything closes and state is kept."""
        if self.draining:
            return
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.state != RELAYING:
                conn.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.limits.drain_timeout)
        for conn in list(self.connections):
            conn.close()
        if self._learner is not None:
            self._learner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._learner
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.save_state()
        self.replay.close()
        if self.shared_users is not None:
            self.shared_users.close()

    def _attach(self, users: list[MTProtoUser]) -> None:
        shared = self.shared_users
        if shared is None:
            return
        for user in users:
            if user.shared_slot is None:
                user.shared_slot = shared.slot(user.name)
            self.sync(user)

    def sync(self, user: MTProtoUser) -> None:
        """Add this worker's unsynced bytes to the node's count and learn the total."""
        shared, slot = self.shared_users, user.shared_slot
        if shared is not None and slot is not None:
            user.used = shared.add_used(slot, user.unsynced)
        user.unsynced = 0

    def claim(self, conn: ClientConnection, user: MTProtoUser) -> None:
        """Count the connection node-wide; refused when the user's limit is reached."""
        shared, slot = self.shared_users, user.shared_slot
        if shared is None or slot is None:
            return
        if not shared.claim(slot, user.max_connections):
            self.metrics.refused.labels(user.name, "user_connections").inc()
            raise HandshakeRefused("user_connections")
        conn.claimed = slot

    def save_state(self) -> None:
        try:
            for user in self.users.users:
                self.sync(user)
            with state_lock(self.state_dir):
                save_usage(self.state_dir, self.users.users)
            self.replay.save()
        except OSError as exc:
            log.error("cannot keep MTProto state in %s: %s", self.state_dir, exc.strerror)

    def reload(self, settings: MTProtoSettings) -> None:
        """SIGHUP: new users and limits for new connections; usage carries over."""
        with state_lock(self.state_dir):
            self.users.replace(resolve_users(settings.users or DEFAULT_USERS, self.state_dir))
        self._attach(self.users.users)
        log.info("MTProto users reloaded: %d", len(self.users.users))

    # -- admission ------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        if self.draining:
            return False
        if len(self.connections) >= self.limits.max_connections:
            self.metrics.failures.labels("max_connections").inc()
            return False
        if not self.per_ip.take(ip):
            self.metrics.failures.labels("max_connections_per_ip").inc()
            return False
        return True

    def forget(self, ip: str) -> None:
        self.per_ip.release(ip)

    def closed(self, conn: ClientConnection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.forget(conn.peer_ip)
        self._flush(conn, final=True)
        user = conn.user
        if conn.claimed is not None and self.shared_users is not None:
            self.shared_users.release(conn.claimed)
        if user is not None:
            user.active -= 1
            user.sessions.discard(conn)
            address = conn.user_address
            if address is not None:
                left = user.addresses.get(address, 0) - 1
                if left > 0:
                    user.addresses[address] = left
                else:
                    user.addresses.pop(address, None)
            self.metrics.active.labels(user.name).dec()
        if self.draining and not self.connections:
            self._drained.set()

    def _flush(self, conn: ClientConnection, *, final: bool = False) -> None:
        if conn.user is None:
            return
        key = id(conn)
        done_up, done_down = (
            self._flushed.pop(key, (0, 0)) if final else self._flushed.get(key, (0, 0))
        )
        up, down = conn.bytes_up, conn.bytes_down
        if up != done_up:
            self.metrics.bytes.labels(conn.user.name, "up").inc(up - done_up)
        if down != done_down:
            self.metrics.bytes.labels(conn.user.name, "down").inc(down - done_down)
        if not final:
            self._flushed[key] = (up, down)

    async def _sweep(self) -> None:
        period = min(SWEEP_SECONDS, self.limits.idle_timeout / 4)
        idle_limit = max(1, round(self.limits.idle_timeout / period))
        sweeps = 0
        while True:
            await asyncio.sleep(period)
            sweeps += 1
            now = self.now()
            for conn in list(self.connections):
                if conn.touched:
                    conn.touched = False
                    conn.idle = 0
                else:
                    conn.idle += 1
                    if conn.idle > idle_limit:
                        conn.close()
                        continue
                self._flush(conn)
                user = conn.user
                if user is not None and user.expires is not None and now > user.expires:
                    conn.close()
            if sweeps % SAVE_EVERY == 0:
                self.save_state()
            elif self.shared_users is not None:
                for user in self.users.users:  # other workers' bytes count against quotas
                    if user.unsynced or user.quota_bytes is not None:
                        self.sync(user)

    # -- DC ---------------------------------------------------------------------

    def dc_endpoints(self, dc: int) -> tuple[Endpoint, ...]:
        endpoints = self.dcs.get(dc)
        if endpoints is None:
            self.metrics.failures.labels("unknown_dc").inc()
            endpoints = self.dcs[FALLBACK_DC]
        return endpoints


# --------------------------------------------------------------------------- connections

READING_HELLO = 0
TLS_INIT = 1
CONNECTING = 2
RELAYING = 3
FRONTING = 4
HOLDING = 5
CLOSED = 6


class ClientConnection(asyncio.Protocol):
    """One client of the MTProto listener, from accept to close."""

    def __init__(self, server: MTProtoServer) -> None:
        self.server = server
        self.transport: Any = None
        self.peer_ip = ""
        self.user_address: bytes | None = None
        self.state = READING_HELLO
        self.head = bytearray()
        self.hello_buffer: faketls.HelloBuffer | None = None
        self.records: faketls.RecordReader | None = None
        self.tls = False
        self.user: MTProtoUser | None = None
        self.client: obfuscated2.Init | None = None
        self.dc: DCConnection | None = None
        self.front: FrontConnection | None = None
        self.pending = bytearray()  # plaintext waiting for the DC, bounded by MAX_EARLY
        self.bytes_up = 0
        self.bytes_down = 0
        self.touched = True
        self.idle = 0
        self.client_eof = False
        self.deadline: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.claimed: int | None = None  # the user's shared slot, once counted node-wide

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else ""
        server = self.server
        if not server.admit(self.peer_ip):
            self.state = CLOSED
            transport.abort()  # type: ignore[attr-defined]
            return
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.deadline = server.loop.call_later(
            server.limits.handshake_timeout, self.on_handshake_timeout
        )

    def data_received(self, data: bytes) -> None:
        self.touched = True
        state = self.state
        if state == RELAYING:
            self.relay_up(data)
        elif state == FRONTING:
            assert self.front is not None
            self.front.send(data)
        elif state in (READING_HELLO, TLS_INIT, CONNECTING):
            try:
                self.handshake(data)
            except HandshakeRefused as exc:
                self.refuse(exc.reason)
            except ProtocolError:
                self.fail("protocol")
        # HOLDING and CLOSED: ignore what comes

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state == FRONTING and self.front is not None:
            self.front.send_eof()
            return True
        if self.state == READING_HELLO and self.head:
            self.refuse("truncated")  # fronting sends what came, then the FIN
            return self.state == FRONTING  # keep our half open for the front's answer
        if self.state == RELAYING and self.dc is not None:
            self.dc.send_eof()
            return True
        return self.state == CONNECTING  # the FIN follows the pending bytes to the DC

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def pause_writing(self) -> None:
        peer = self.dc or self.front
        if peer is not None:
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.dc or self.front
        if peer is not None:
            peer.resume_reading()

    # -- handshake ------------------------------------------------------------------

    def handshake(self, data: bytes) -> None:
        server = self.server
        if self.state == CONNECTING:
            self.buffer_pending(self.decrypt_up(data))
            return
        if self.state == TLS_INIT:
            self.tls_init(data)
            return
        self.head += data
        if len(self.head) > MAX_EARLY:
            raise HandshakeRefused("oversized")
        modes = server.modes
        if "ee" in modes and faketls.looks_like_tls(bytes(self.head[:3])):
            if self.hello_buffer is None:
                self.hello_buffer = faketls.HelloBuffer()
                data = bytes(self.head)
            try:
                record = self.hello_buffer.feed(data)
            except BufferOverflow:
                raise HandshakeRefused("oversized") from None
            except ProtocolError:
                raise HandshakeRefused("not_tls") from None
            if record is None:
                return
            self.ee_hello(record, self.hello_buffer.rest)
            return
        if "classic" not in modes and "dd" not in modes:
            raise HandshakeRefused("not_tls")
        if len(self.head) < obfuscated2.INIT_LEN:
            return
        init = bytes(self.head[: obfuscated2.INIT_LEN])
        hint = server.users.hint_for(self.peer_ip)
        user, parsed = server.users.find_init(init, hint, server.now())
        mode = "dd" if parsed.tag is obfuscated2.ProtocolTag.PADDED else "classic"
        if mode not in modes:
            raise HandshakeRefused(f"{mode}_off")
        if server.replay.seen(init[8:16], server.now() + CLASSIC_REPLAY_SECONDS, server.now()):
            raise HandshakeRefused("replay")
        rest = bytes(self.head[obfuscated2.INIT_LEN :])
        self.head.clear()
        self.authenticated(user, parsed, mode, rest)

    def ee_hello(self, record: bytes, rest: bytes) -> None:
        server = self.server
        try:
            hello = faketls.parse_client_hello(record)
        except ProtocolError:
            raise HandshakeRefused("bad_hello") from None
        now = server.now()
        user, stamp = server.users.find_hello(hello, now, server.users.hint_for(self.peer_ip))
        if server.replay.seen(hello.random, stamp + server.users.window.past, now):
            raise HandshakeRefused("replay")
        refusal = user.refusal(now, self.address_key())
        if refusal is not None:
            server.metrics.refused.labels(user.name, refusal).inc()
            raise HandshakeRefused(refusal)
        server.claim(self, user)
        self.transport.write(
            faketls.build_server_answer(user.key, hello, payload_len=server.cert_len)
        )
        self.user = user
        self.tls = True
        self.records = faketls.RecordReader()
        self.head.clear()
        self.hello_buffer = None
        self.state = TLS_INIT
        self._count_in(user)
        if rest:
            self.tls_init(rest)

    def tls_init(self, data: bytes) -> None:
        assert self.records is not None and self.user is not None
        self.head += self.records.feed(data)
        if len(self.head) < obfuscated2.INIT_LEN:
            return
        init = bytes(self.head[: obfuscated2.INIT_LEN])
        try:
            parsed = obfuscated2.parse_init(init, self.user.key)
        except ProtocolError:
            self.fail("bad_init")  # the answer is out: fronting is no longer possible
            return
        rest = bytes(self.head[obfuscated2.INIT_LEN :])
        self.head.clear()
        self.client = parsed
        self.connect_dc("ee", rest)

    def address_key(self) -> bytes | None:
        if self.user_address is None and self.peer_ip:
            self.user_address = self.server.users.address_key(self.peer_ip)
        return self.user_address

    def _count_in(self, user: MTProtoUser) -> None:
        user.active += 1
        user.sessions.add(self)
        address = self.address_key()
        if address is not None:
            user.addresses[address] = user.addresses.get(address, 0) + 1
        self.server.metrics.active.labels(user.name).inc()

    def authenticated(
        self, user: MTProtoUser, parsed: obfuscated2.Init, mode: str, rest: bytes
    ) -> None:
        refusal = user.refusal(self.server.now(), self.address_key())
        if refusal is not None:
            self.server.metrics.refused.labels(user.name, refusal).inc()
            raise HandshakeRefused(refusal)
        self.server.claim(self, user)
        self.user = user
        self.client = parsed
        self._count_in(user)
        self.connect_dc(mode, rest)

    def connect_dc(self, mode: str, rest: bytes) -> None:
        assert self.client is not None and self.user is not None
        self.state = CONNECTING
        self.server.metrics.connections.labels(self.user.name, mode).inc()
        if rest:  # obfuscated2 bytes after the init (already out of TLS records)
            self.buffer_pending(self.client.decryptor.update(rest))
        self.task = self.server.loop.create_task(self._connect_dc(), name="mtproto-dc-connect")

    def buffer_pending(self, plain: bytes) -> None:
        self.pending += plain
        if len(self.pending) > MAX_EARLY:
            self.transport.pause_reading()

    def decrypt_up(self, data: bytes) -> bytes:
        """Client bytes (already out of TLS records for ee) to plaintext."""
        assert self.client is not None
        if self.records is not None:
            data = self.records.feed(data)
        return self.client.decryptor.update(data)

    async def _connect_dc(self) -> None:
        assert self.client is not None
        server = self.server
        client = self.client
        for endpoint in server.dc_endpoints(client.dc):
            try:
                transport, dc = await asyncio.wait_for(
                    server.open_connection(
                        lambda: DCConnection(self), endpoint.host, endpoint.port
                    ),
                    server.limits.connect_timeout,
                )
            except (OSError, TimeoutError):
                continue
            if self.state != CONNECTING:
                transport.abort()
                return
            self.dc = dc
            reply = client.reply_key_iv if server.settings.fast else None
            wire, dc_init = obfuscated2.generate_init(client.tag, client.dc, reply_key_iv=reply)
            dc.start(dc_init, fast=server.settings.fast)
            transport.write(wire)
            self.state = RELAYING
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            if self.pending:
                plain = bytes(self.pending)
                self.pending.clear()
                self.relay_plain_up(plain)
                self.transport.resume_reading()
            if self.client_eof:
                dc.send_eof()
            return
        if self.state == CONNECTING:
            self.fail("dc_unreachable")

    # -- relay --------------------------------------------------------------------------

    def relay_up(self, data: bytes) -> None:
        assert self.client is not None
        records = self.records
        if records is not None:
            try:
                data = records.feed(data)
            except ProtocolError:
                self.fail("bad_record")
                return
        self.relay_plain_up(self.client.decryptor.update(data))

    def relay_plain_up(self, plain: bytes) -> None:
        dc = self.dc
        user = self.user
        assert dc is not None and user is not None
        n = len(plain)
        self.bytes_up += n
        user.used += n
        user.unsynced += n
        if user.unsynced >= SYNC_BYTES:
            self.server.sync(user)
        dc.write(plain)
        if user.quota_bytes is not None and user.used > user.quota_bytes:
            self.server.metrics.refused.labels(user.name, "quota").inc()
            self.close()

    def relay_down(self, data: bytes) -> None:
        user = self.user
        assert user is not None
        n = len(data)
        self.bytes_down += n
        user.used += n
        user.unsynced += n
        if user.unsynced >= SYNC_BYTES:
            self.server.sync(user)
        self.touched = True
        if self.tls:
            data = faketls.encode_records(data)
        self.transport.write(data)
        if user.quota_bytes is not None and user.used > user.quota_bytes:
            self.server.metrics.refused.labels(user.name, "quota").inc()
            self.close()

    # -- failure, fronting, close -------------------------------------------------------

    def refuse(self, reason: str) -> None:
        """A handshake that did not authenticate: front it, so a probe sees the site."""
        server = self.server
        server.metrics.failures.labels(reason).inc()
        log.debug("MTProto handshake refused (%s)", reason)
        if self.user is not None or self.state not in (READING_HELLO,):
            self.close()
            return
        if server.front is None:
            self.state = HOLDING  # say nothing; the handshake timeout closes it
            return
        self.state = FRONTING
        server.metrics.fronted.inc()
        seen = bytes(self.hello_buffer.seen if self.hello_buffer is not None else self.head)
        self.head.clear()
        self.hello_buffer = None
        self.transport.pause_reading()
        self.task = server.loop.create_task(self._front(seen), name="mtproto-front")

    async def _front(self, seen: bytes) -> None:
        server = self.server
        front = server.front
        assert front is not None
        try:
            transport, proto = await asyncio.wait_for(
                server.loop.create_connection(
                    lambda: FrontConnection(self), front.host, front.port
                ),
                server.limits.connect_timeout,
            )
        except (OSError, TimeoutError):
            server.metrics.failures.labels("front_unreachable").inc()
            self.close()
            return
        if self.state != FRONTING:
            transport.abort()
            return
        self.front = proto
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        proto.send(seen)
        if self.client_eof:
            proto.send_eof()
        else:
            self.transport.resume_reading()

    def fail(self, reason: str) -> None:
        self.server.metrics.failures.labels(reason).inc()
        log.debug("MTProto connection closed (%s)", reason)
        self.close()

    def on_handshake_timeout(self) -> None:
        self.deadline = None
        if self.state in (READING_HELLO, TLS_INIT, CONNECTING, HOLDING):
            if self.state != HOLDING:
                self.server.metrics.failures.labels("timeout").inc()
            self.close()

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.dc is not None:
            self.dc.close()
        if self.front is not None:
            self.front.close()
        self.server.closed(self)


class DCConnection(asyncio.Protocol):
    """The node's own obfuscated2 connection to a data centre for one client."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: Any = None
        self.encrypt: Any = None
        self.decrypt: Any = None
        self.client_encrypt: Any = None
        self.fast = True

    def start(self, init: obfuscated2.Init, *, fast: bool) -> None:
        self.encrypt = init.encryptor.update
        self.fast = fast
        if not fast:
            assert self.client.client is not None
            self.decrypt = init.decryptor.update
            self.client_encrypt = self.client.client.encryptor.update

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def write(self, plain: bytes) -> None:
        self.transport.write(self.encrypt(plain))

    def data_received(self, data: bytes) -> None:
        if self.client.state != RELAYING:
            return
        if not self.fast:
            data = self.client_encrypt(self.decrypt(data))
        self.client.relay_down(data)

    def eof_received(self) -> bool:
        self.client.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and self.client.state == RELAYING:
            self.client.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def send_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            with contextlib.suppress(OSError):
                self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FrontConnection(asyncio.Protocol):
    """The connection to the real site for a client that did not authenticate."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            with contextlib.suppress(OSError):
                self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.client.touched = True
        if self.client.transport is not None:
            self.client.transport.write(data)

    def eof_received(self) -> bool:
        transport = self.client.transport
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError):
                transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class BannerView:
    """What the banner shows of an MTProto listener run by workers (the supervisor
    has no :class:`MTProtoServer`): the same attributes the banner reads."""

    settings: MTProtoSettings
    modes: frozenset[str]
    front: Endpoint | None
    users: UserTable
    bound: list[Endpoint]


def banner_view(settings: MTProtoSettings, state_dir: Path) -> BannerView:
    """Check the MTProto settings and resolve the users once, before workers start
    (so they all find the same generated secrets); ``bound`` is filled in later."""
    modes = checked_modes(settings)
    with state_lock(state_dir):
        users = UserTable(resolve_users(settings.users or DEFAULT_USERS, state_dir))
    return BannerView(settings, modes, front_of(settings), users, [])


@dataclass(frozen=True, slots=True)
class UserLink:
    name: str
    secret: ProxySecret


def user_secrets(server: MTProtoServer | BannerView) -> list[UserLink]:
    """Each user's secret in the form its link should carry (ee when on, else dd/classic)."""
    modes = server.modes
    out = []
    for user in server.users.users:
        if "ee" in modes and server.settings.domain:
            secret = ProxySecret(user.key, SecretMode.EE, server.settings.domain)
        elif "dd" in modes:
            secret = ProxySecret(user.key, SecretMode.DD)
        else:
            secret = ProxySecret(user.key)
        out.append(UserLink(user.name, secret))
    return out


def banner_lines(
    server: MTProtoServer | BannerView, node_settings: Any, *, shown: int = 5
) -> list[str]:
    """What ``resist node`` prints about its MTProto side: where, how, and the links."""
    modes = ",".join(sorted(server.modes))
    front = f", front {server.front}" if server.front else ", no front (failures held silent)"
    domain = f", domain {server.settings.domain}" if server.settings.domain else ""
    lines = [
        f"listening on mtproto://{endpoint} (modes {modes}{domain}{front})"
        for endpoint in server.bound
    ]
    if not server.bound:
        return lines
    first = server.bound[0]
    host = node_settings.public_host or first.host
    if not node_settings.public_host and host in ("0.0.0.0", "::"):
        lines.append("MTProto links: set --public-host to the address users reach this node at")
        return lines
    links = user_secrets(server)
    for item in links[:shown]:
        link = mtproto_links(host, first.port, item.secret)
        lines.append(f"MTProto user {item.name}: {link.tg}")
    if len(links) > shown:
        lines.append(f"... and {len(links) - shown} more MTProto users")
    if links and node_settings.qr:
        from resistance.links import qr_terminal

        lines.append(qr_terminal(mtproto_links(host, first.port, links[0].secret).https).rstrip())
    return lines
