"""The ladder's MTProto rung on live processes, all on 127.0.0.1: an app that speaks
obfuscated2 to a data centre through `resist connect` (SOCKS5, via python-socks) reaches
the lab's data-centre stand-in through a real `resist node --mtproto-listen` (fake-TLS ee
secret), re-framed by the client; what is not DC traffic skips the rung to plain SOCKS5."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from python_socks.sync import Proxy
from telethon.network.connection import ConnectionTcpObfuscated

from resistance.config import Endpoint
from resistance.lab import datacentre
from resistance.links import mtproto_links
from resistance.proto import obfuscated2
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.mtclient import ProxyClient
from resistance.proto.mtproto import check_res_pq, req_pq_multi
from tests.conftest import EchoServer, RunningNode
from tests.integration.socksclient import recv_exact
from tests.integration.test_connect_directory import read_status, start_client, wait_for
from tests.integration.test_mtproto_system import DOMAIN, free_port, start_mtproto_node

KEY = secrets.token_bytes(16)
WAIT = 10.0


@pytest.fixture(scope="module", autouse=True)
def _no_client_outlives_the_module() -> Iterator[None]:
    """Regression: these tests once left every `resist connect` they started running."""
    yield
    import psutil

    def is_client(process: psutil.Process) -> bool:
        try:
            argv = process.cmdline()
        except psutil.Error:  # gone, or a zombie
            return False
        return "connect" in argv and "resistance" in " ".join(argv)

    left = [p.pid for p in psutil.Process().children(recursive=True) if is_client(p)]
    for pid in left:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    assert not left, f"resist connect processes left running: {left}"


@pytest.fixture
async def dc() -> AsyncIterator[int]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield port
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
def front() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def mtproxy(tmp_path: Path, dc: int, front: EchoServer) -> Iterator[int]:
    running, port = start_mtproto_node(tmp_path / "mtnode", dc, front.port, {"alice": KEY})
    yield port
    running.stop()


def app_res_pq(client: RunningNode, dc_port: int) -> None:
    """What Telegram's app does with no proxy of its own: obfuscated2 (no secret) to DC 2,
    req_pq_multi, and the resPQ that must echo its nonce; through our SOCKS5 port."""
    proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}")
    sock = proxy.connect("127.0.0.1", dc_port, timeout=WAIT)
    sock.settimeout(WAIT)
    try:
        app = ProxyClient(None, 2, obfuscated2.ProtocolTag.PADDED)
        request = req_pq_multi(time.time())
        frame = obfuscated2.encode_frame(app.tag, request.serialize())
        sock.sendall(app.start() + app.send(frame))
        frames = obfuscated2.FrameDecoder(app.tag, max_packet=4096)
        for _ in range(50):  # bounded: a resPQ is one small packet
            data = sock.recv(4096)
            assert data, "the chain closed before the resPQ"
            packets = frames.feed(app.receive(data))
            if packets:
                check_res_pq(packets[0].payload, request)
                return
        raise AssertionError("no resPQ")
    finally:
        sock.close()


async def in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("mode", [SecretMode.EE, SecretMode.DD, SecretMode.CLASSIC])
async def test_an_apps_dc_connection_goes_over_the_mtproto_proxy(
    mtproxy: int, dc: int, tmp_path: Path, mode: SecretMode
) -> None:
    secret = ProxySecret(KEY, mode, DOMAIN if mode is SecretMode.EE else None)
    link = mtproto_links("127.0.0.1", mtproxy, secret).tg
    state = tmp_path / "client"
    # The MTProto proxy is the only upstream: nothing but the rung can reach the DC.
    client = await in_thread(
        start_client, state, "--upstream", link,
        "--telegram-range", "127.0.0.1/32", "--network", "lab", "--dial-timeout", "3",
    )  # fmt: skip
    for _ in range(3):  # several connections, each a fresh init and a fresh fake-TLS hello
        await in_thread(app_res_pq, client, dc)

    def learned() -> Any:
        rows = {r["transport"]: r for r in read_status(state).get("ladder", [])}
        return rows.get("mtproto-faketls", {}).get("state") == "works" and rows

    rows = await in_thread(wait_for, learned, "the ladder never saw the MTProto rung work")
    assert rows["mtproto-faketls"]["upstream"] == f"127.0.0.1:{mtproxy} (MTProto)"


LOGGERS = collections.defaultdict(lambda: logging.getLogger("telethon-test"))


async def test_telethon_through_resist_connect_reaches_the_dc_over_the_mtproto_proxy(
    mtproxy: int, dc: int, tmp_path: Path
) -> None:
    """Telethon's obfuscated TCP connection (abridged, and the DC index left random in
    its init) through our SOCKS5 port: the lab DC's address is named with --telegram-dc."""
    link = mtproto_links("127.0.0.1", mtproxy, ProxySecret(KEY, SecretMode.EE, DOMAIN)).tg
    client = await in_thread(
        start_client, tmp_path / "client", "--upstream", link,
        "--telegram-dc", "2=127.0.0.1", "--network", "lab", "--dial-timeout", "3",
    )  # fmt: skip
    proxy = {"proxy_type": "socks5", "addr": "127.0.0.1", "port": client.port}
    for _ in range(2):
        conn = ConnectionTcpObfuscated("127.0.0.1", dc, 2, loggers=LOGGERS, proxy=proxy)
        await conn.connect(timeout=WAIT)
        try:
            request = req_pq_multi(time.time())
            await conn.send(request.serialize())
            check_res_pq(await asyncio.wait_for(conn.recv(), WAIT), request)
        finally:
            await conn.disconnect()


async def test_what_is_not_dc_traffic_skips_the_rung_without_an_error(
    mtproxy: int, tmp_path: Path, node: RunningNode, echo_server: Any
) -> None:
    link = mtproto_links("127.0.0.1", mtproxy, ProxySecret(KEY, SecretMode.EE, DOMAIN)).tg
    client = await in_thread(
        start_client, tmp_path / "client", "--upstream", link,
        "--upstream", f"socks5://alice:secret@127.0.0.1:{node.port}",
        "--telegram-range", "127.0.0.1/32", "--network", "lab", "--dial-timeout", "3",
    )  # fmt: skip

    def http_like() -> None:
        proxy = Proxy.from_url(f"socks5://127.0.0.1:{client.port}")
        # A "data-centre" address (the test's range) but HTTP, as the app's HTTP transport:
        # not an obfuscated2 init, so it goes by plain SOCKS5 to the echo server.
        sock = proxy.connect("127.0.0.1", echo_server.port, timeout=WAIT)
        sock.settimeout(WAIT)
        with sock:
            payload = b"POST /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".ljust(200, b"x")
            sock.sendall(payload[:10])  # the decision waits for 64 bytes
            sock.sendall(payload[10:])
            assert recv_exact(sock, len(payload)) == payload

    await in_thread(http_like)


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts and never answers: a censor dropping the proxy's packets."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("block", ["reset", "drop"])
async def test_a_blocked_mtproto_proxy_falls_to_the_next_transport_unseen(
    dc: int, tmp_path: Path, node: RunningNode, silent: int, block: str
) -> None:
    # "reset": nothing listens, refused at once; "drop": the hello goes unanswered and
    # the dial is raced by the next transport after a second.
    blocked = free_port() if block == "reset" else silent
    link = mtproto_links("127.0.0.1", blocked, ProxySecret(KEY, SecretMode.EE, DOMAIN)).tg
    state = tmp_path / "client"
    client = await in_thread(
        start_client, state, "--upstream", link,
        "--upstream", f"socks5://alice:secret@127.0.0.1:{node.port}",
        "--telegram-range", "127.0.0.1/32", "--network", "lab", "--dial-timeout", "3",
    )  # fmt: skip
    for _ in range(2):  # the app's init is passed on unchanged: the DC reads it itself
        await in_thread(app_res_pq, client, dc)

    def learned() -> Any:
        rows = {r["transport"]: r for r in read_status(state).get("ladder", [])}
        ok = rows.get("socks5", {}).get("state") == "works"
        return ok and rows.get("mtproto-faketls", {}).get("state") == "failed" and rows

    rows = await in_thread(wait_for, learned, "the ladder did not learn the rung is blocked")
    assert rows["mtproto-faketls"]["error"]
