"""Freeze detection on live processes: a path that lets a download's first 16 KB through
and then stops (the connection open, the data gone, as TSPU does) is seen by the health
check's download from a canary, the ladder marks that transport failed with the byte
count, and the application's connections go through the other upstream."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.client.freeze import bulk_through
from resistance.client.upstreams import Upstream
from resistance.config import Endpoint
from resistance.probe.canary import CanaryRequestParser, answer
from tests.conftest import RunningNode
from tests.integration.test_connect import echo_through
from tests.integration.test_connect_directory import read_status, start_client, wait_for
from tests.integration.test_connect_tls_directory import banner_pin

FREEZE_AFTER = 16 * 1024


class Canary:
    """The registry canary's exchange on 127.0.0.1 (signature, then the bytes asked)."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            parser = CanaryRequestParser()
            try:
                while (request := parser.feed(conn.recv(65536))) is None:
                    pass
                conn.sendall(
                    answer(
                        self.key,
                        request.nonce,
                        request.upload_sha256,
                        request.download,
                        now=time.time(),
                    )
                )
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


class Freezer:
    """A TCP forwarder to ``target`` that passes the first FREEZE_AFTER bytes from the
    server, then drops the rest and keeps the connection open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frozen = 0
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.target, timeout=5)
            up.settimeout(None)
            self.socks += [conn, up]
            threading.Thread(target=self._pump, args=(conn, up, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, FREEZE_AFTER), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cap: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if cap is not None:
                    data = data[: max(0, cap - sent)]
                    if sent + len(data) >= cap:
                        self.frozen += 1 if sent < cap else 0
                if data:
                    dst.sendall(data)
                    sent += len(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


@pytest.fixture
def node(node_factory: Any, tmp_path: Path) -> RunningNode:
    node: RunningNode = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=tmp_path / "node",
    )  # fmt: skip
    return node


def test_a_frozen_path_is_seen_and_left(
    node: RunningNode, canary: Canary, tmp_path: Path, echo_server: Any
) -> None:
    freezer = Freezer(("127.0.0.1", node.port))
    state = tmp_path / "client"
    try:
        client = start_client(
            state,
            "--upstream", f"socks5://alice:secret@127.0.0.1:{freezer.port}",
            "--upstream", f"socks5://alice:secret@127.0.0.1:{node.port}",
            "--freeze-check", f"127.0.0.1:{canary.port}", "--network", "lab-freeze",
        )  # fmt: skip
        try:
            ladder = wait_for(
                lambda: (
                    {row["upstream"]: row for row in read_status(state).get("ladder", [])}.get(
                        f"127.0.0.1:{freezer.port}", {}
                    ).get("state")
                    == "failed"
                    and read_status(state)["ladder"]
                ),
                "the frozen path was never marked",
            )
            frozen = next(r for r in ladder if r["upstream"] == f"127.0.0.1:{freezer.port}")
            assert "frozen: a download stopped after" in frozen["error"]
            assert ladder[0]["upstream"] == f"127.0.0.1:{node.port}"
            assert ladder[0]["state"] == "works"
            # The application's connections (past the freeze size too) go the other way.
            for _ in range(3):
                echo_through(client, echo_server.port, bytes(range(256)) * 200)
        finally:
            client.stop()
    finally:
        freezer.close()


async def test_bulk_check_counts_through_plain_and_tls_and_names_the_freeze(
    node: RunningNode, canary: Canary
) -> None:
    source = Endpoint("127.0.0.1", canary.port)
    plain = Upstream("127.0.0.1", node.port, "alice", "secret")
    assert node.tls_port is not None
    tls = Upstream("127.0.0.1", node.tls_port, "alice", "secret", tls_sha256=banner_pin(node))
    for upstream in (plain, tls):
        whole = await bulk_through(upstream, source, stall=2.0)
        assert (whole.received, whole.frozen) == (whole.wanted, False), whole
    freezer = Freezer(("127.0.0.1", node.port))
    try:
        frozen = await asyncio.wait_for(
            bulk_through(Upstream("127.0.0.1", freezer.port, "alice", "secret"), source,
                         stall=0.5),
            30,
        )  # fmt: skip
    finally:
        freezer.close()
    assert frozen.frozen and frozen.stalled
    # the SOCKS5 reply (10 bytes) and the greeting's answers (4) count against the cap
    assert frozen.received == FREEZE_AFTER - 14
