"""The node's MTProto listener on real sockets, driven by real client code.

* A data-centre stand-in on 127.0.0.1 speaks obfuscated2 as a DC does (no
  secret) and echoes each MTProto packet back in the client's framing.
* Telethon's MTProxy connection classes (abridged, intermediate, randomized
  intermediate) drive classic and dd secrets through the node.
* Our fake-TLS client (resistance.proto.mtclient) drives ee secrets.
* Every hostile input ends at the front (a local TLS or TCP server), never at
  the DC, and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)

from resistance.config import Endpoint, MTProtoSettings, MTProtoUserSpec, NodeLimits
from resistance.node.metrics import NodeMetrics
from resistance.node.mtproto import MTProtoServer
from resistance.node.tlscert import ensure_certificate
from resistance.proto import faketls
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.mtclient import ProxyClient
from resistance.proto.obfuscated2 import FrameDecoder, ProtocolTag, encode_frame, parse_init

KEY_A = bytes.fromhex("0123456789abcdef0123456789abcdef")
KEY_B = bytes.fromhex("fedcba9876543210fedcba9876543210")
DOMAIN = "front.test"
WAIT = 10.0


# -- stand-ins ---------------------------------------------------------------------


@dataclass
class DataCentre:
    """An obfuscated2 DC stand-in that echoes packets; records what it saw."""

    server: asyncio.Server | None = None
    port: int = 0
    inits: list[tuple[ProtocolTag, int]] = field(default_factory=list)
    connections: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            init = parse_init(await asyncio.wait_for(reader.readexactly(64), WAIT))
            self.inits.append((init.tag, init.dc))
            decoder = FrameDecoder(init.tag)
            while data := await asyncio.wait_for(reader.read(65536), WAIT):
                for packet in decoder.feed(init.decryptor.update(data)):
                    reply = b"ECHO" + packet.payload
                    writer.write(init.encryptor.update(encode_frame(init.tag, reply)))
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


@dataclass
class Front:
    """The real site's stand-in: TLS (with a certificate) or a plain recorder."""

    tls: ssl.SSLContext | None = None
    server: asyncio.Server | None = None
    port: int = 0
    received: list[bytes] = field(default_factory=list)
    eofs: int = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        try:
            if self.tls is not None:
                request = await asyncio.wait_for(reader.read(4096), WAIT)
                got += request
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfront")
                await writer.drain()
            else:
                writer.write(b"FRONT SAYS HI")
                while data := await asyncio.wait_for(reader.read(65536), WAIT):
                    got += data
                self.eofs += 1
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.received.append(bytes(got))
            writer.close()


@dataclass
class World:
    dc: DataCentre
    front: Front
    server: MTProtoServer
    metrics: NodeMetrics
    port: int
    clock: list[float]

    def failures(self, reason: str) -> int:
        return self.server.metrics.failures.labels(reason).value

    def user_bytes(self, user: str) -> int:
        fam = self.server.metrics.bytes
        return fam.labels(user, "up").value + fam.labels(user, "down").value


async def make_world(
    tmp_path: Path,
    *,
    modes: frozenset[str] | None = None,
    users: tuple[MTProtoUserSpec, ...] = (
        MTProtoUserSpec("alice", KEY_A),
        MTProtoUserSpec("bob", KEY_B, max_connections=2),
    ),
    tls_front: bool = False,
    limits: NodeLimits | None = None,
) -> World:
    dc = DataCentre()
    await dc.start()
    ctx = None
    if tls_front:
        (tmp_path / "front").mkdir(exist_ok=True)
        cert, key, _ = ensure_certificate(tmp_path / "front", common_name=DOMAIN)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    front = Front(tls=ctx)
    await front.start()
    settings = MTProtoSettings(
        listen=(Endpoint("127.0.0.1", 0),),
        users=users,
        domain=DOMAIN,
        front=Endpoint("127.0.0.1", front.port),
        dcs={2: (Endpoint("127.0.0.1", dc.port),), 4: (Endpoint("127.0.0.1", dc.port),)},
        modes=modes,
    )
    clock = [time.time()]
    metrics = NodeMetrics()
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    server = MTProtoServer(
        settings,
        limits or NodeLimits(handshake_timeout=5.0),
        state_dir=state,
        metrics=metrics,
        now=lambda: clock[0],
    )
    await server.start()
    return World(dc, front, server, metrics, server.bound[0].port, clock)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, modes=frozenset({"classic", "dd", "ee"}))
    yield w
    await close_world(w)


async def close_world(w: World) -> None:
    await w.server.stop()
    for srv in (w.dc.server, w.front.server):
        if srv is not None:
            srv.close()


# -- clients -------------------------------------------------------------------------


class Client:
    """Our MTProto client over a real socket (any secret mode)."""

    def __init__(self, secret: ProxySecret, dc: int = 2) -> None:
        self.proto = ProxyClient(secret, dc)
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.decoder = FrameDecoder(self.proto.tag)
        self.first = b""

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.first = self.proto.start()
        self.writer.write(self.first)
        while not self.proto.established:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            if not data:
                raise ConnectionError("proxy closed during the handshake")
            self.decoder.feed(self.proto.receive(data))

    async def roundtrip(self, payload: bytes) -> bytes:
        self.writer.write(self.proto.send(encode_frame(self.proto.tag, payload)))
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            if not data:
                raise ConnectionError("proxy closed")
            packets = self.decoder.feed(self.proto.receive(data))
            if packets:
                return packets[0].payload

    def close(self) -> None:
        self.writer.close()


async def read_all(reader: asyncio.StreamReader, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    with contextlib.suppress(ConnectionError):
        while len(out) < limit:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            if not data:
                break
            out += data
    return bytes(out)


LOGGERS = collections.defaultdict(lambda: logging.getLogger("telethon-test"))


async def telethon_roundtrip(cls: type, port: int, secret_hex: str, payload: bytes) -> bytes:
    conn = cls("149.154.167.51", 443, 2, loggers=LOGGERS, proxy=("127.0.0.1", port, secret_hex))
    await conn.connect(timeout=WAIT)
    try:
        await conn.send(payload)
        reply: bytes = await asyncio.wait_for(conn.recv(), WAIT)
        return reply
    finally:
        await conn.disconnect()


# -- real clients through the node -----------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "secret", "mode"),
    [
        (ConnectionTcpMTProxyAbridged, KEY_A.hex(), "classic"),
        (ConnectionTcpMTProxyIntermediate, KEY_A.hex(), "classic"),
        (ConnectionTcpMTProxyRandomizedIntermediate, "dd" + KEY_B.hex(), "dd"),
    ],
)
async def test_telethon_through_node(world: World, cls: type, secret: str, mode: str) -> None:
    payload = os.urandom(4) * 100
    assert await telethon_roundtrip(cls, world.port, secret, payload) == b"ECHO" + payload
    user = "alice" if mode == "classic" else "bob"
    assert world.server.metrics.connections.labels(user, mode).value == 1
    assert world.dc.inits[-1][1] == 2


async def test_ee_client_through_node_big_transfer(world: World) -> None:
    client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN), dc=-4)
    await client.connect(world.port)
    for size in (4, 1000, 200_000):
        payload = os.urandom(size)
        assert await client.roundtrip(payload) == b"ECHO" + payload
    client.close()
    assert world.dc.inits == [(ProtocolTag.PADDED, -4)]
    assert world.front.received == []
    await asyncio.sleep(0)  # let the close arrive before counting bytes
    for _ in range(100):
        if not world.server.connections:
            break
        await asyncio.sleep(0.05)
    assert world.user_bytes("alice") >= 2 * 201_004


async def test_ee_answer_looks_like_tls13_and_records_stay_under_16k(world: World) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", world.port)
    proto = ProxyClient(ProxySecret(KEY_A, SecretMode.EE, DOMAIN), 2)
    writer.write(proto.start())
    raw = bytearray()
    while not proto.established:
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        raw += data
        proto.receive(data)
    assert raw[:3] == b"\x16\x03\x03"
    writer.write(proto.send(encode_frame(proto.tag, bytes(100_000))))
    got = bytearray()
    while len(got) < 100_000:
        got += await asyncio.wait_for(reader.read(65536), WAIT)
    pos = 0
    while pos + 5 <= len(got):
        assert got[pos : pos + 3] == b"\x17\x03\x03"
        (n,) = struct.unpack_from(">H", got, pos + 3)
        assert n <= 16384
        pos += 5 + n
    writer.close()


# -- hostile inputs: fronted, never served ---------------------------------------------


async def probe(port: int, data: bytes, *, eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if eof:
        writer.write_eof()
    answer = await read_all(reader)
    writer.close()
    return answer


async def wait_front(world: World, count: int) -> None:
    for _ in range(200):
        if len(world.front.received) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"front saw {len(world.front.received)} connections, wanted {count}")


async def test_random_bytes_reach_the_front(world: World) -> None:
    junk = b"\x01" + os.urandom(300)
    assert await probe(world.port, junk) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [junk] and world.dc.connections == 0
    assert world.failures("wrong_secret") == 1


async def test_truncated_init_reaches_the_front_with_its_eof(world: World) -> None:
    assert await probe(world.port, b"\x02" * 40) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [b"\x02" * 40] and world.front.eofs == 1
    assert world.failures("truncated") == 1 and world.dc.connections == 0


async def test_wrong_secret_hello_is_fronted(world: World) -> None:
    hello = faketls.build_client_hello(os.urandom(16), DOMAIN, world.clock[0])
    assert await probe(world.port, hello) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [hello] and world.failures("wrong_secret") == 1


@pytest.mark.parametrize(("skew", "reason"), [(-301, "stale"), (61, "future")])
async def test_stale_and_future_hellos_are_fronted(world: World, skew: int, reason: str) -> None:
    hello = faketls.build_client_hello(KEY_A, DOMAIN, world.clock[0] + skew)
    assert await probe(world.port, hello) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [hello] and world.failures(reason) == 1


async def test_replayed_hello_is_fronted(world: World) -> None:
    client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
    await client.connect(world.port)
    assert await client.roundtrip(b"ping") == b"ECHOping"
    assert await probe(world.port, client.first) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [client.first] and world.failures("replay") == 1
    client.close()


async def test_replay_cache_survives_a_restart(tmp_path: Path) -> None:
    w = await make_world(tmp_path)
    client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
    await client.connect(w.port)
    client.close()
    await close_world(w)
    w2 = await make_world(tmp_path)
    try:
        assert await probe(w2.port, client.first) == b"FRONT SAYS HI"
        assert w2.failures("replay") == 1
    finally:
        await close_world(w2)


async def test_browser_hello_gets_the_real_site(tmp_path: Path) -> None:
    w = await make_world(tmp_path, tls_front=True)
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "front" / "node-tls-cert.pem"))
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", w.port, ssl=ctx, server_hostname=DOMAIN
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: front.test\r\n\r\n")
        answer = await read_all(reader)
        assert answer.endswith(b"front")
        writer.close()
        assert w.failures("wrong_secret") == 1 and w.dc.connections == 0
    finally:
        await close_world(w)


async def test_oversized_record_closes_only_that_connection(world: World) -> None:
    client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
    await client.connect(world.port)
    assert await client.roundtrip(b"ping") == b"ECHOping"
    client.writer.write(b"\x17\x03\x03\x50\x00" + bytes(100))
    assert await read_all(client.reader) == b""
    other = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
    await other.connect(world.port)
    assert await other.roundtrip(b"pong") == b"ECHOpong"
    other.close()
    assert world.failures("bad_record") == 1


async def test_oversized_hello_is_fronted(world: World) -> None:
    record = b"\x16\x03\x01\x40\x00" + bytes(100)
    assert await probe(world.port, record) == b"FRONT SAYS HI"
    await wait_front(world, 1)
    assert world.front.received == [record] and world.failures("oversized") == 1


async def test_modes_off_are_fronted(tmp_path: Path) -> None:
    w = await make_world(tmp_path)  # domain set: ee only by default
    try:
        payload = os.urandom(8)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
            await telethon_roundtrip(ConnectionTcpMTProxyIntermediate, w.port, KEY_A.hex(), payload)
        await wait_front(w, 1)
        assert w.dc.connections == 0 and w.failures("not_tls") == 1
    finally:
        await close_world(w)


async def test_user_limits(tmp_path: Path) -> None:
    users = (
        MTProtoUserSpec("cap", KEY_A, max_connections=1),
        MTProtoUserSpec("old", KEY_B, expires=time.time() - 10),
        MTProtoUserSpec("small", bytes(range(16)), quota_bytes=5000),
    )
    w = await make_world(tmp_path, users=users)
    try:
        first = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
        await first.connect(w.port)
        second = ProxySecret(KEY_A, SecretMode.EE, DOMAIN)
        with pytest.raises(Exception):  # noqa: B017 - fronted: the front's bytes are no answer
            await Client(second).connect(w.port)
        first.close()
        with pytest.raises(Exception):  # noqa: B017
            await Client(ProxySecret(KEY_B, SecretMode.EE, DOMAIN)).connect(w.port)
        small = Client(ProxySecret(bytes(range(16)), SecretMode.EE, DOMAIN))
        await small.connect(w.port)
        with pytest.raises((ConnectionError, TimeoutError)):
            for _ in range(10):
                await small.roundtrip(bytes(1000))
        assert w.server.metrics.refused.labels("cap", "user_connections").value == 1
        assert w.server.metrics.refused.labels("old", "expired").value == 1
        assert w.server.metrics.refused.labels("small", "quota").value == 1
    finally:
        await close_world(w)


async def test_thousand_half_open_handshakes(tmp_path: Path) -> None:
    limits = NodeLimits(handshake_timeout=2.0, max_connections_per_ip=5000)
    w = await make_world(tmp_path, limits=limits)
    try:
        process = psutil.Process()
        rss_before = process.memory_info().rss
        socks = []
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", w.port), timeout=WAIT)
            s.send(b"\x16\x03\x01\x02\x00" + bytes(i % 300))  # a hello that never ends
            socks.append(s)
        for _ in range(100):
            if len(w.server.connections) >= 1000:
                break
            await asyncio.sleep(0.05)
        assert len(w.server.connections) == 1000
        buffered = sum(len(c.head) for c in w.server.connections)
        assert buffered <= 1000 * 600
        client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
        await client.connect(w.port)  # still serving
        assert await client.roundtrip(b"live") == b"ECHOlive"
        client.close()
        for _ in range(200):  # the handshake timeout closes them all
            if not w.server.connections:
                break
            await asyncio.sleep(0.05)
        assert not w.server.connections
        assert w.failures("timeout") == 1000
        assert process.memory_info().rss - rss_before < 64 * 1024 * 1024
        assert w.dc.connections == 1 and w.front.received == []
        for s in socks:
            s.close()
    finally:
        await close_world(w)


# -- the command line: banner link, SIGHUP reload, SIGTERM -----------------------------


async def test_resist_node_mtproto_cli(tmp_path: Path) -> None:
    import re
    import signal

    from resistance.proto.faketls import parse_secret
    from tests.conftest import launch_node

    dc = DataCentre()
    await dc.start()
    front = Front()
    await front.start()
    conf = tmp_path / "node.toml"
    conf.write_text('[node]\n[node.mtproto_users]\nalice = ""\n')
    node = await asyncio.to_thread(
        launch_node,
        [
            "--config", str(conf),
            "--mtproto-listen", "127.0.0.1:0",
            "--mtproto-domain", DOMAIN,
            "--mtproto-front", f"127.0.0.1:{front.port}",
            "--mtproto-dc", f"2=127.0.0.1:{dc.port}",
            "--public-host", "127.0.0.1",
        ],
        tmp_path / "state",
    )  # fmt: skip
    try:
        for _ in range(100):
            if any("MTProto user alice" in line for line in node.banner):
                break
            await asyncio.sleep(0.05)
        line = next(line for line in node.banner if "MTProto user alice" in line)
        m = re.search(r"tg://proxy\?server=127\.0\.0\.1&port=(\d+)&secret=(ee[0-9a-f]+)", line)
        assert m, line
        port, secret = int(m.group(1)), parse_secret(m.group(2))
        assert secret.domain == DOMAIN
        client = Client(secret)
        await client.connect(port)
        assert await client.roundtrip(b"cli!") == b"ECHOcli!"
        # SIGHUP: a new user with a given key works without a restart; alice keeps hers.
        conf.write_text(f'[node]\n[node.mtproto_users]\nalice = ""\nbob = "{KEY_B.hex()}"\n')
        node.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "MTProto users reloaded" in node.stderr():
                break
            await asyncio.sleep(0.05)
        bob = Client(ProxySecret(KEY_B, SecretMode.EE, DOMAIN))
        await bob.connect(port)
        assert await bob.roundtrip(b"bob!") == b"ECHObob!"
        assert await client.roundtrip(b"more") == b"ECHOmore"  # established ones go on
        assert await probe(port, b"GET / HTTP/1.1\r\n\r\n") == b"FRONT SAYS HI"
        client.close()
        bob.close()
        assert "127.0.0.1" not in node.stderr().replace(f"127.0.0.1:{port}", "")
        assert await asyncio.to_thread(node.stop) == 0
        usage = (tmp_path / "state" / "mtproto-usage.json").read_text()
        assert '"alice"' in usage and '"bob"' in usage
    finally:
        await asyncio.to_thread(node.stop, signal.SIGKILL)
        for srv in (dc.server, front.server):
            if srv is not None:
                srv.close()
