"""`resist node --workers 2 --mtproto-listen ...`: one node, two processes, one replay cache.

The kernel spreads new connections over the workers (``SO_REUSEPORT``), so a
replayed fake-TLS hello lands on either; it must be fronted whichever it
reaches, and after a restart too.  Each test holds its connections open while
it counts them per worker (psutil), so it knows both workers took part.
Everything runs on 127.0.0.1: a DC stand-in that echoes, a front that
greets, the node as a real process.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from resistance.errors import ProtocolError
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.mtclient import ProxyClient
from tests.conftest import RunningNode, launch_node
from tests.integration.test_mtproto_node import (
    DOMAIN,
    KEY_A,
    KEY_B,
    WAIT,
    Client,
    DataCentre,
    Front,
)
from tests.integration.test_node_workers import wait_for, workers_of

GREETING = b"FRONT SAYS HI"
ROUNDS = 24  # connections per check: all on one worker has odds of 2**-23


@dataclass
class Stands:
    dc: DataCentre
    front: Front


@pytest.fixture
async def stands() -> AsyncIterator[Stands]:
    dc, front = DataCentre(), Front()
    await dc.start()
    await front.start()
    yield Stands(dc, front)
    for server in (dc.server, front.server):
        if server is not None:
            server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_node(
    stands: Stands, state: Path, *extra: str, config: Path | None = None
) -> tuple[RunningNode, int]:
    args = [
        "--workers", "2",
        "--mtproto-listen", "127.0.0.1:0",
        "--mtproto-domain", DOMAIN,
        "--mtproto-front", f"127.0.0.1:{stands.front.port}",
        "--mtproto-dc", f"2=127.0.0.1:{stands.dc.port}",
        "--public-host", "127.0.0.1",
        *extra,
    ]  # fmt: skip
    if config is not None:
        args = ["--config", str(config), *args]
    else:
        args += ["--mtproto-user", f"alice:{KEY_A.hex()}"]
    node = await asyncio.to_thread(launch_node, args, state)
    line = ""
    for _ in range(200):
        line = next((x for x in node.banner if "listening on mtproto://" in x), "")
        if line:
            break
        await asyncio.sleep(0.05)
    m = re.search(r"mtproto://127\.0\.0\.1:(\d+)", line)
    assert m, node.banner
    assert await asyncio.to_thread(wait_for, lambda: len(workers_of(node)) == 2)
    return node, int(m.group(1))


def held_per_worker(node: RunningNode, port: int) -> list[int]:
    """Established client connections each worker holds on the MTProto port."""
    return [
        sum(
            1
            for c in w.net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
        for w in workers_of(node)
    ]


async def replay(port: int, hello: bytes) -> tuple[bytes, asyncio.StreamWriter]:
    """Send a recorded first flight on a new connection; the first answer bytes
    (the connection stays open, so it can be counted)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello)
    answer = await asyncio.wait_for(reader.readexactly(len(GREETING)), WAIT)
    return answer, writer


async def stop(node: RunningNode) -> int:
    return await asyncio.to_thread(node.stop)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


async def test_fresh_served_and_replays_fronted_on_every_worker(
    stands: Stands, tmp_path: Path
) -> None:
    metrics = free_port()
    node, port = await start_node(stands, tmp_path / "state", "--metrics", f"127.0.0.1:{metrics}")
    secret = ProxySecret(KEY_A, SecretMode.EE, DOMAIN)
    clients: list[Client] = []
    writers: list[asyncio.StreamWriter] = []
    try:
        for i in range(ROUNDS):
            client = Client(secret)
            await client.connect(port)
            clients.append(client)
            assert await client.roundtrip(b"hi%02d" % i) == b"ECHOhi%02d" % i
        served = held_per_worker(node, port)
        assert sum(served) == ROUNDS and all(served), served
        # The same hello again and again, on new connections: never served, always the front.
        for _ in range(ROUNDS):
            answer, writer = await replay(port, clients[0].first)
            writers.append(writer)
            assert answer == GREETING
        for client in clients:
            client.close()
        assert await asyncio.to_thread(wait_for, lambda: sum(held_per_worker(node, port)) == ROUNDS)
        fronted = held_per_worker(node, port)
        assert all(fronted), fronted  # the replays reached both workers
        assert stands.dc.connections == ROUNDS
        text = await asyncio.to_thread(scrape, metrics)
        assert f'resist_mtproto_handshake_failures_total{{reason="replay"}} {ROUNDS}.0' in text
        assert f'resist_mtproto_connections_total{{mode="ee",user="alice"}} {ROUNDS}.0' in text
    finally:
        for writer in writers:
            writer.close()
        assert await stop(node) == 0
    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == node.proc.pid]


async def test_replay_refused_after_a_restart(stands: Stands, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node, port = await start_node(stands, state)
    client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
    try:
        await client.connect(port)
        assert await client.roundtrip(b"once") == b"ECHOonce"
        client.close()
    finally:
        assert await stop(node) == 0
    node, port = await start_node(stands, state)
    writers = []
    try:
        for _ in range(ROUNDS):
            answer, writer = await replay(port, client.first)
            writers.append(writer)
            assert answer == GREETING
        assert all(held_per_worker(node, port))
        assert stands.dc.connections == 1
        fresh = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
        await fresh.connect(port)
        assert await fresh.roundtrip(b"new!") == b"ECHOnew!"
        fresh.close()
    finally:
        for writer in writers:
            writer.close()
        assert await stop(node) == 0


async def test_a_replacement_worker_still_refuses_replays(stands: Stands, tmp_path: Path) -> None:
    node, port = await start_node(stands, tmp_path / "state")
    try:
        client = Client(ProxySecret(KEY_A, SecretMode.EE, DOMAIN))
        await client.connect(port)
        assert await client.roundtrip(b"once") == b"ECHOonce"
        client.close()
        for victim in workers_of(node):  # each worker in turn dies and is replaced
            victim.kill()
            victim.wait(10)
            assert await asyncio.to_thread(
                wait_for,
                lambda v=victim: (
                    len(workers_of(node)) == 2  # type: ignore[misc]
                    and v.pid not in {w.pid for w in workers_of(node)}
                ),
            )
        writers = []
        for _ in range(ROUNDS // 2):
            answer, writer = await replay(port, client.first)
            writers.append(writer)
            assert answer == GREETING
        for writer in writers:
            writer.close()
        assert stands.dc.connections == 1
    finally:
        assert await stop(node) == 0


async def test_sigterm_drains_relays_in_every_worker(stands: Stands, tmp_path: Path) -> None:
    node, port = await start_node(stands, tmp_path / "state", "--drain-timeout", "30")
    secret = ProxySecret(KEY_A, SecretMode.EE, DOMAIN)
    clients = []
    try:
        for _ in range(ROUNDS // 2):
            client = Client(secret)
            await client.connect(port)
            clients.append(client)
            assert await client.roundtrip(b"up!!") == b"ECHOup!!"  # relaying, not in handshake
        assert all(held_per_worker(node, port))
        node.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(wait_for, lambda: "stopping" in node.stderr())
        # Established relays go on while the node drains; new clients are not taken.
        for i, client in enumerate(clients):
            assert await client.roundtrip(b"dr%02d" % i) == b"ECHOdr%02d" % i
        with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError)):
            late = Client(secret)
            await late.connect(port)
        assert node.proc.poll() is None
        for client in clients:
            client.close()
        assert await asyncio.to_thread(node.proc.wait, 20) == 0
    finally:
        await asyncio.to_thread(node.stop, signal.SIGKILL)


async def test_sighup_reaches_every_worker(stands: Stands, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\n[node.mtproto_users]\nalice = "{KEY_A.hex()}"\n')
    node, port = await start_node(stands, tmp_path / "state", config=config)
    try:
        bob = ProxySecret(KEY_B, SecretMode.EE, DOMAIN)
        writers = []
        for _ in range(4):  # not yet a user: fronted
            answer, writer = await replay(port, ProxyClient(bob, 2).start())
            writers.append(writer)
            assert answer == GREETING
        config.write_text(
            f'[node]\n[node.mtproto_users]\nalice = "{KEY_A.hex()}"\nbob = "{KEY_B.hex()}"\n'
        )
        node.proc.send_signal(signal.SIGHUP)
        assert await asyncio.to_thread(
            wait_for, lambda: node.stderr().count("MTProto users reloaded: 2") >= 2
        )
        clients = []
        for i in range(ROUNDS):
            client = Client(bob)
            await client.connect(port)
            clients.append(client)
            assert await client.roundtrip(b"bo%02d" % i) == b"ECHObo%02d" % i
        assert all(held_per_worker(node, port))
        for client in clients:
            client.close()
        for writer in writers:
            writer.close()
    finally:
        assert await stop(node) == 0


KEY_C = bytes(range(16))


async def test_user_connection_limit_holds_node_wide(stands: Stands, tmp_path: Path) -> None:
    node, port = await start_node(
        stands, tmp_path / "state", "--mtproto-user", f"cap:{KEY_C.hex()}:conns=4"
    )
    secret = ProxySecret(KEY_C, SecretMode.EE, DOMAIN)
    clients, writers = [], []
    try:
        for i in range(4):
            client = Client(secret)
            await client.connect(port)
            clients.append(client)
            assert await client.roundtrip(b"cap%d" % i) == b"ECHOcap%d" % i
        # Counted per worker, whichever worker holds fewer than 4 would serve these.
        for _ in range(ROUNDS // 2):
            answer, writer = await replay(port, ProxyClient(secret, 2).start())
            writers.append(writer)
            assert answer == GREETING
        clients.pop().close()
        served = False
        for _ in range(50):  # the freed place is taken again (once the close is seen)
            client = Client(secret)
            try:
                await client.connect(port)
                served = await client.roundtrip(b"back") == b"ECHOback"
            except (ConnectionError, TimeoutError, ProtocolError, OSError):
                client.writer.close()
                await asyncio.sleep(0.1)
                continue
            clients.append(client)
            break
        assert served
    finally:
        for c in clients:
            c.close()
        for writer in writers:
            writer.close()
        assert await stop(node) == 0


async def test_user_quota_holds_node_wide_and_across_a_restart(
    stands: Stands, tmp_path: Path
) -> None:
    quota = 3 << 20
    chunk = 256 * 1024
    state = tmp_path / "state"
    user = f"small:{KEY_C.hex()}:quota={quota}"
    node, port = await start_node(stands, state, "--mtproto-user", user)
    secret = ProxySecret(KEY_C, SecretMode.EE, DOMAIN)
    served = 0
    try:
        for _ in range(40):  # a new connection each time: both workers take part
            client = Client(secret)
            try:
                await client.connect(port)
                assert await client.roundtrip(bytes(chunk)) == b"ECHO" + bytes(chunk)
            except (ConnectionError, TimeoutError, ProtocolError, OSError, AssertionError):
                continue  # refused (fronted) or cut at the quota; a worker counting alone
                # would still serve the connections that reach it
            finally:
                client.writer.close()
            served += 1
    finally:
        assert await stop(node) == 0
    # Each round trip counts 2 chunks; workers add their bytes at least every MiB,
    # so the node overruns by less than a MiB per worker (per worker it would be 2x).
    assert quota <= served * 2 * chunk < quota + 2 * (1 << 20) + 2 * chunk, served
    node, port = await start_node(stands, state, "--mtproto-user", user)
    try:
        answer, writer = await replay(port, ProxyClient(secret, 2).start())
        writer.close()
        assert answer == GREETING
    finally:
        assert await stop(node) == 0


async def test_a_generated_secret_is_the_same_in_every_worker(
    stands: Stands, tmp_path: Path
) -> None:
    from resistance.proto.faketls import parse_secret

    config = tmp_path / "node.toml"
    config.write_text('[node]\n[node.mtproto_users]\ngen = ""\n')
    node, port = await start_node(stands, tmp_path / "state", config=config)
    clients = []
    try:
        line = next(x for x in node.banner if "MTProto user gen" in x)
        m = re.search(r"secret=(ee[0-9a-f]+)", line)
        assert m, line
        secret = parse_secret(m.group(1))
        for i in range(ROUNDS):
            client = Client(secret)
            await client.connect(port)
            clients.append(client)
            assert await client.roundtrip(b"gn%02d" % i) == b"ECHOgn%02d" % i
        assert all(held_per_worker(node, port))
    finally:
        for c in clients:
            c.close()
        assert await stop(node) == 0
