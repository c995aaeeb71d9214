"""A bridge node (``--upstream``) relays through an exit node (real processes on loopback).

The exit is an ordinary ``resist node`` whose users file holds one user per
bridge; the bridge dials it over SOCKS5 inside TLS (pinned) or plain SOCKS5,
fails over between those, and never shows its hop credentials.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resistance.config import Endpoint, MTProtoSettings, MTProtoUserSpec, NodeLimits
from resistance.node.metrics import NodeMetrics
from resistance.node.mtproto import MTProtoServer
from resistance.node.upstream import UpstreamNetwork, parse_upstream_url
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.socks5 import Address, Command, Reply
from tests.conftest import EchoServer, RunningNode
from tests.integration.socksclient import SocksFailure, handshake, open_socks, recv_exact
from tests.integration.test_connect_tls_directory import banner_pin
from tests.integration.test_mtproto_node import DOMAIN, KEY_A, Client, DataCentre

HOP_USER, HOP_PASSWORD = "bridge-one", "hop-Secret-7f3a"


def exit_config(path: Path, users: dict[str, str]) -> Path:
    lines = ["[node.users]", *(f'"{name}" = "{password}"' for name, password in users.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def exit_node(node_factory: Any, tmp_path: Path) -> tuple[RunningNode, Path]:
    config = exit_config(tmp_path / "exit.toml", {HOP_USER: HOP_PASSWORD})
    node = node_factory(
        "--config", str(config), "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=tmp_path / "exit",
    )  # fmt: skip
    assert node.tls_port
    return node, config


def tls_url(exit_: RunningNode, *, password: str = HOP_PASSWORD) -> str:
    return f"socks5s://{HOP_USER}:{password}@127.0.0.1:{exit_.tls_port}#sha256={banner_pin(exit_)}"


def plain_url(exit_: RunningNode) -> str:
    return f"socks5://{HOP_USER}:{HOP_PASSWORD}@127.0.0.1:{exit_.port}"


def start_bridge(node_factory: Any, tmp_path: Path, *upstreams: str) -> RunningNode:
    args = ["--user", "alice:secret", "--allow", "127.0.0.0/8", "-vv"]
    for url in upstreams:
        args += ["--upstream", url]
    node: RunningNode = node_factory(*args, state_dir=tmp_path / "bridge")
    return node


def echo_through(bridge: RunningNode, echo: EchoServer, size: int = 1 << 20) -> None:
    payload = os.urandom(size)
    with open_socks((bridge.host, bridge.port), echo.host, echo.port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = recv_exact(sock, size)
        sender.join(10)
    assert got == payload


class Silent:
    """A TCP listener that accepts and never answers: a hop the censor silently drops."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    s = Silent()
    yield s
    s.close()


def test_a_connection_through_the_bridge_crosses_the_tls_hop(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path], echo_server: EchoServer
) -> None:
    exit_, _ = exit_node
    bridge = start_bridge(node_factory, tmp_path, tls_url(exit_))
    assert any("bridge: everything goes through 1 upstream" in line for line in bridge.banner)
    echo_through(bridge, echo_server)
    # Through the exit indeed: stopped, nothing goes through the bridge.
    exit_.stop()
    with pytest.raises(SocksFailure):
        open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port).close()


def test_the_exit_applies_its_own_policy(
    node_factory: Any, tmp_path: Path, echo_server: EchoServer
) -> None:
    config = exit_config(tmp_path / "exit.toml", {HOP_USER: HOP_PASSWORD})
    exit_ = node_factory(
        "--config", str(config), "--allow", "127.0.0.0/8",
        "--deny-port", str(echo_server.port), state_dir=tmp_path / "exit",
    )  # fmt: skip
    bridge = start_bridge(node_factory, tmp_path, plain_url(exit_))
    with pytest.raises(SocksFailure) as refused:
        open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port)
    assert refused.value.reply is Reply.NOT_ALLOWED  # the exit's answer, passed on


def test_a_dropped_transport_fails_over_without_an_error_to_the_user(
    node_factory: Any,
    tmp_path: Path,
    exit_node: tuple[RunningNode, Path],
    echo_server: EchoServer,
    silent: Silent,
) -> None:
    exit_, _ = exit_node
    pin = banner_pin(exit_)
    dropped = f"socks5s://{HOP_USER}:{HOP_PASSWORD}@127.0.0.1:{silent.port}#sha256={pin}"
    bridge = start_bridge(node_factory, tmp_path, dropped, plain_url(exit_))
    for _ in range(3):  # the first waits out the dropped hop; the rest skip it
        echo_through(bridge, echo_server, 64 * 1024)
    bridge.stop()
    log = bridge.stderr()
    assert "failed" in log and "trying the next" in log
    assert HOP_PASSWORD not in log and "alice" not in log  # credentials are never logged


class HelloDropper:
    """A TCP forwarder in front of the exit's TLS port that drops the flows of one
    ClientHello fingerprint (the first it sees), as the censor's hello rule does:
    it reads each flow's hello, holds the flows carrying the dropped JA4 silent and
    relays the others."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[str] = []
        self.dropped: str | None = None
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        from resistance.lab.dpi import parse_client_hello

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            data = b""
            while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            ja4 = parse_client_hello(data).ja4()
            self.seen.append(ja4)
            if self.dropped is None:
                self.dropped = ja4
            if ja4 == self.dropped:
                self.held.append(conn)  # silent: the bridge's handshake times out
                continue
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.sendall(data)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_dropped_hello_on_the_hop_costs_one_attempt_not_the_connection(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path], echo_server: EchoServer
) -> None:
    """The only hop is TLS and the censor drops the hello the bridge sends first: the
    bridge dials again with another hello for the same connection, and the user's
    connection goes through (after one HOP_TIMEOUT), no error reaching it."""
    exit_, _ = exit_node
    dropper = HelloDropper(("127.0.0.1", exit_.tls_port or 0))
    try:
        url = f"socks5s://{HOP_USER}:{HOP_PASSWORD}@127.0.0.1:{dropper.port}#sha256="
        bridge = start_bridge(node_factory, tmp_path, url + banner_pin(exit_))
        echo_through(bridge, echo_server, 64 * 1024)
        for _ in range(3):  # later connections pass over the dropped hello
            echo_through(bridge, echo_server, 4096)
        assert dropper.seen.count(dropper.dropped) == 1, dropper.seen
        assert len(set(dropper.seen)) > 1
        bridge.stop()
        log = bridge.stderr()
        assert "trying another hello" in log and "trying the next" not in log
    finally:
        dropper.close()


def test_a_revoked_bridge_credential_is_refused_at_once(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path], echo_server: EchoServer
) -> None:
    exit_, config = exit_node
    bridge = start_bridge(node_factory, tmp_path, tls_url(exit_), plain_url(exit_))
    echo_through(bridge, echo_server, 4096)
    exit_config(config, {"another-bridge": "other-Secret-1"})
    exit_.proc.send_signal(signal.SIGHUP)
    deadline_tries = 50
    for _ in range(deadline_tries):  # SIGHUP is asynchronous; the reload takes a moment
        try:
            open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port).close()
        except SocksFailure as exc:
            assert exc.reply is Reply.GENERAL_FAILURE
            break
        threading.Event().wait(0.1)
    else:
        pytest.fail("the exit kept serving a revoked bridge")
    assert exit_.proc.poll() is None  # no restart


def test_sighup_reloads_the_upstreams_without_dropping_sessions(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path], echo_server: EchoServer
) -> None:
    """The bridge's config names exit A; a session is open through it.  The config
    then names exit B (which refuses the echo port) and the bridge gets SIGHUP:
    new connections go through B (its refusal comes back), the session through A
    keeps echoing, and a config with a bad URL keeps the running list."""
    exit_a, _ = exit_node
    config_b = exit_config(tmp_path / "exit-b.toml", {HOP_USER: HOP_PASSWORD})
    exit_b = node_factory(
        "--config", str(config_b), "--allow", "127.0.0.0/8",
        "--deny-port", str(echo_server.port), state_dir=tmp_path / "exit-b",
    )  # fmt: skip
    bridge_config = tmp_path / "bridge.toml"
    bridge_config.write_text(f'[node]\nupstream = ["{plain_url(exit_a)}"]\n')
    bridge = node_factory(
        "--config", str(bridge_config), "--user", "alice:secret", "--allow", "127.0.0.0/8",
        "-vv", state_dir=tmp_path / "bridge",
    )  # fmt: skip
    with open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port) as session:
        session.sendall(b"before")
        assert recv_exact(session, 6) == b"before"
        bridge_config.write_text(f'[node]\nupstream = ["{plain_url(exit_b)}"]\n')
        bridge.proc.send_signal(signal.SIGHUP)
        for _ in range(50):  # SIGHUP is asynchronous; the reload takes a moment
            try:
                open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port).close()
            except SocksFailure as exc:
                assert exc.reply is Reply.NOT_ALLOWED  # exit B's own policy answered
                break
            threading.Event().wait(0.1)
        else:
            pytest.fail("the bridge kept its old upstream after SIGHUP")
        session.sendall(b"after")  # the established session never noticed
        assert recv_exact(session, 5) == b"after"
        bridge_config.write_text('[node]\nupstream = ["socks5s://no-pin@127.0.0.1:1"]\n')
        bridge.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if "upstream reload failed" in bridge.stderr():
                break
            threading.Event().wait(0.1)
        with pytest.raises(SocksFailure) as still_b:
            open_socks((bridge.host, bridge.port), echo_server.host, echo_server.port)
        assert still_b.value.reply is Reply.NOT_ALLOWED
        session.sendall(b"still")
        assert recv_exact(session, 5) == b"still"
    assert bridge.proc.poll() is None


def test_udp_and_bind_are_refused_on_a_bridge(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path]
) -> None:
    exit_, _ = exit_node
    bridge = start_bridge(node_factory, tmp_path, tls_url(exit_))
    for command in (Command.UDP_ASSOCIATE, Command.BIND):
        with socket.create_connection((bridge.host, bridge.port), timeout=10) as sock:
            with pytest.raises(SocksFailure) as refused:
                handshake(sock, command, Address.from_host("127.0.0.1", 9))
            assert refused.value.reply is Reply.COMMAND_NOT_SUPPORTED


def test_a_server_that_speaks_first_is_heard_through_both_hops(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path]
) -> None:
    exit_, _ = exit_node
    banner = b"SSH-2.0-stand-in\r\n"
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(banner)
                conn.recv(1)

    greeter = threading.Thread(target=greet, daemon=True)
    greeter.start()
    try:
        for url in (tls_url(exit_), plain_url(exit_)):
            bridge = start_bridge(node_factory, tmp_path / url[:7].replace(":", ""), url)
            with open_socks((bridge.host, bridge.port), "127.0.0.1", port) as sock:
                assert recv_exact(sock, len(banner)) == banner
            bridge.stop()
    finally:
        server.close()


async def test_mtproto_data_centre_connections_go_through_the_exit(
    node_factory: Any, tmp_path: Path, exit_node: tuple[RunningNode, Path], silent: Silent
) -> None:
    """A Telegram-like client (fake-TLS) through the bridge's MTProto listener reaches
    the DC stand-in via the exit, the first (dropped) transport failed over."""
    exit_, _ = exit_node
    dc = DataCentre()
    await dc.start()
    pin = banner_pin(exit_)
    dropped = f"socks5s://{HOP_USER}:{HOP_PASSWORD}@127.0.0.1:{silent.port}#sha256={pin}"
    net = UpstreamNetwork(
        [parse_upstream_url(dropped), parse_upstream_url(tls_url(exit_))],
        loop=asyncio.get_running_loop(),
        hop_timeout=2.0,
    )
    settings = MTProtoSettings(
        listen=(Endpoint("127.0.0.1", 0),),
        users=(MTProtoUserSpec("alice", KEY_A),),
        domain=DOMAIN,
        front=Endpoint("127.0.0.1", 9),
        dcs={2: (Endpoint("127.0.0.1", dc.port),)},
    )
    (tmp_path / "mt").mkdir()
    server = MTProtoServer(
        settings,
        NodeLimits(handshake_timeout=10.0),
        state_dir=tmp_path / "mt",
        metrics=NodeMetrics(),
        open_connection=net.open_transport,
    )
    await server.start()
    try:
        for _ in range(2):
            client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN), dc=2)
            await client.connect(server.bound[0].port)
            payload = os.urandom(50_000)
            assert await client.roundtrip(payload) == b"ECHO" + payload
            client.close()
        assert dc.connections == 2  # both reached the DC, the first after failing over
        assert net.pool.active is not None and net.pool.active.port == exit_.tls_port
    finally:
        await server.stop()
        net.close()
        assert dc.server is not None
        dc.server.close()


async def test_a_hello_dropped_after_warming_never_holds_a_connection_for_a_hop_timeout(
    exit_node: tuple[RunningNode, Path], echo_server: EchoServer
) -> None:
    """The censor starts dropping the hello the bridge's hop last carried while the
    bridge is in use (the story's step 15): the warm connections being made with it
    hang, and so does a fresh dial that takes it.  Each user connection must still go
    through in about HELLO_RACE, not wait a hop timeout for a hanging handshake: the
    user's resist connect gives a connection 5 s in all, and failed the application's
    request when the bridge waited for a warm handshake and then dialed serially.

    The hop timeout here is far longer than the test's own bound on each connection, so
    a connection that waits for a hanging handshake fails the test whatever the load."""
    from resistance.client.hello import VARIANTS
    from resistance.node import upstream as upstream_module

    exit_, _ = exit_node
    dropper = HelloDropper(("127.0.0.1", exit_.tls_port or 0))
    dropper.dropped = "none yet"
    url = f"socks5s://{HOP_USER}:{HOP_PASSWORD}@127.0.0.1:{dropper.port}#sha256="
    hop = parse_upstream_url(url + banner_pin(exit_))
    net = UpstreamNetwork([hop], loop=asyncio.get_running_loop(), hop_timeout=60.0)
    target = Address.from_host(echo_server.host, echo_server.port)
    bound = 30.0  # < hop_timeout: only a connection that waited on a dropped hello hits it

    async def echo() -> None:
        dialed = await asyncio.wait_for(net.connect(target), bound)
        assert dialed.transport is not None
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        dialed.transport.set_protocol(protocol)
        protocol.connection_made(dialed.transport)
        dialed.transport.resume_reading()
        dialed.transport.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        dialed.transport.close()

    try:
        await echo()  # warms the hop
        for _ in range(100):
            if len(net.warm.get(hop, [])) == upstream_module.WARM_SIZE:
                break
            await asyncio.sleep(0.05)
        dropper.dropped = dropper.seen[-1]  # the hello the hop carried last
        met = dropper.seen.count(dropper.dropped)
        # The hop's hellos take the variants in turn: within two turns' connections (and
        # their warm refills) the dropped one is met again, by a warm handshake or a dial.
        # Connections come in bursts (the application's, the Telegram client's and the
        # probes' through the bridge): more at once than there are warm ones.
        burst = upstream_module.WARM_SIZE + 2
        bursts = 0
        while bursts < 2 * len(VARIANTS) and dropper.seen.count(dropper.dropped) == met:
            await asyncio.gather(*(echo() for _ in range(burst)))
            bursts += 1
        assert dropper.seen.count(dropper.dropped) > met, dropper.seen
        for _ in range(2):  # and after it
            await asyncio.gather(*(echo() for _ in range(burst)))
    finally:
        net.close()
        dropper.close()
    await asyncio.sleep(0.1)


async def test_warm_tls_connections_spare_the_handshake_and_go_cold_when_idle(
    exit_node: tuple[RunningNode, Path], echo_server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a connection over the TLS hop the bridge keeps WARM_SIZE connections
    with the handshake done; the next connection takes one (one round trip, no
    handshake), unused ones are closed after WARM_IDLE and replaced only while the
    bridge is in use, and close() ends them all."""
    from resistance.node import upstream as upstream_module

    monkeypatch.setattr(upstream_module, "WARM_IDLE", 0.5)
    exit_, _ = exit_node
    hop = parse_upstream_url(tls_url(exit_))
    net = UpstreamNetwork([hop], loop=asyncio.get_running_loop(), hop_timeout=5.0)
    target = Address.from_host(echo_server.host, echo_server.port)

    async def warm_count(n: int) -> list[Any]:
        for _ in range(100):
            stock = [w for w in net.warm.get(hop, []) if w.alive()]
            if len(stock) == n:
                return stock
            await asyncio.sleep(0.05)
        pytest.fail(f"expected {n} warm connections, have {net.warm.get(hop)}")

    async def echo() -> None:
        dialed = await net.connect(target)
        assert dialed.transport is not None
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        dialed.transport.set_protocol(protocol)
        protocol.connection_made(dialed.transport)
        dialed.transport.resume_reading()
        dialed.transport.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        dialed.transport.close()

    try:
        await echo()  # cold: pays the handshake, then warms the hop
        assert net.warm_hits == 0
        first = await warm_count(upstream_module.WARM_SIZE)
        await echo()
        assert net.warm_hits == 1  # went out on a warm connection
        assert sum(1 for w in first if w.alive()) >= 1
        # Unused, they are closed after WARM_IDLE and replaced while the bridge is in use.
        await asyncio.sleep(1.2)
        again = await warm_count(upstream_module.WARM_SIZE)
        assert not set(again) & set(first) and not any(w.alive() for w in first)
        # Idle for longer than WARM_KEEP: the bridge goes cold.
        monkeypatch.setattr(upstream_module, "WARM_KEEP", 0.0)
        await asyncio.sleep(1.2)
        await warm_count(0)
        assert not net.warming.get(hop)
        await echo()
        await warm_count(upstream_module.WARM_SIZE)
    finally:
        net.close()
    assert not net.warm and not net.expiries
    await asyncio.sleep(0.1)
