"""The client's ladder on live processes: a node's TLS port stops getting through (a
DPI box in front of it swallows TLS hellos), the client takes the plain port without the
application seeing an error, and remembers it for this network across a restart."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningNode
from tests.integration.test_connect import echo_through
from tests.integration.test_connect_directory import read_status, start_client, wait_for
from tests.integration.test_connect_tls_directory import banner_pin


class HelloEater:
    """A TCP forwarder on 127.0.0.1 that, once ``drop_tls`` is set, lets a connection
    open but swallows its TLS ClientHello and answers nothing (an on-path censor's drop);
    everything else is forwarded to ``target`` both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.drop_tls = False
        #: JA4 fingerprints of hellos to swallow (a hello rule), whatever ``drop_tls`` says.
        self.drop_fingerprints: set[str] = set()
        self.eaten = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.append(sock)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._keep(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            first = conn.recv(65536)
            if first[:1] == b"\x16" and (self.drop_tls or self._fingerprinted(first)):
                with self.lock:
                    self.eaten += 1
                while conn.recv(65536):  # swallow, never answer, until the client gives up
                    pass
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self._keep(upstream)
            upstream.sendall(first)
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
            self._pump(conn, upstream)
        except OSError:
            return

    def _fingerprinted(self, first: bytes) -> bool:
        from resistance.lab.dpi import HelloError, parse_client_hello

        try:
            return parse_client_hello(first).ja4() in self.drop_fingerprints
        except HelloError:
            return False

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for sock in self.socks:
                sock.close()


@pytest.fixture
def tls_node(node_factory: Any, tmp_path: Path) -> RunningNode:
    node: RunningNode = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=tmp_path / "node",
    )  # fmt: skip
    assert node.tls_port
    return node


@pytest.fixture
def eater(tls_node: RunningNode) -> Iterator[HelloEater]:
    assert tls_node.tls_port
    box = HelloEater(("127.0.0.1", tls_node.tls_port))
    yield box
    box.close()


def ladder_rows(state: Path) -> dict[str, dict[str, Any]]:
    return {row["transport"]: row for row in read_status(state).get("ladder", [])}


def test_a_blocked_tls_port_falls_to_plain_and_the_ladder_remembers(
    tls_node: RunningNode, eater: HelloEater, tmp_path: Path, echo_server: Any
) -> None:
    pin = banner_pin(tls_node)
    # The race delay is long so that a TLS handshake slowed by a loaded machine is not
    # beaten by plain SOCKS5 while nothing blocks it (this test is about the ladder,
    # not the race); a blocked hello still falls to plain within the 5 s budget.
    args = (
        "--race-after", "2.5",
        "--upstream", f"socks5s://alice:secret@127.0.0.1:{eater.port}#sha256={pin}",
        "--upstream", f"socks5://alice:secret@127.0.0.1:{tls_node.port}",
        "--network", "lab-mobile", "--dial-timeout", "3",
    )  # fmt: skip
    state = tmp_path / "client"
    client = start_client(state, *args)
    try:
        # Unblocked: the ladder's first rung (TLS, browser-like hello) carries the traffic.
        echo_through(client, echo_server.port)

        def tls_carries() -> bool:
            if (
                ladder_rows(state).get("tls", {}).get("state") == "works"
                and read_status(state)["active"] == f"127.0.0.1:{eater.port} (TLS)"
            ):
                return True
            # On a loaded machine one slow handshake can lose a race to plain SOCKS5:
            # an application keeps connecting, and each new connection tries TLS first.
            echo_through(client, echo_server.port)
            return False

        wait_for(tls_carries, "TLS never got through while nothing blocked it", seconds=45)
        # The censor starts eating TLS hellos: every request still succeeds.
        eater.drop_tls = True
        for _ in range(4):
            echo_through(client, echo_server.port, b"still here" * 100)
        rows = wait_for(
            lambda: (
                (r := ladder_rows(state)).get("tls", {}).get("state") == "failed"
                and r.get("socks5", {}).get("state") == "works"
                and r
            ),
            "the ladder did not learn that only plain SOCKS5 gets through",
        )
        assert eater.eaten >= 1
        status = read_status(state)
        assert status["network"] == "lab-mobile"
        assert [row["transport"] for row in status["ladder"]] == ["socks5", "tls"]
        assert rows["tls"]["error"]
    finally:
        client.stop()
    learned = json.loads((state / "ladder.json").read_text())["networks"]["lab-mobile"]
    by_transport = {key.split()[0]: entry for key, entry in learned.items()}
    assert by_transport["tls"]["fail_at"] > by_transport["tls"]["ok_at"] > 0
    assert by_transport["socks5"]["ok_at"] > by_transport["socks5"]["fail_at"]
    # A restart in the same network serves at once and keeps what it learned; a
    # client in another network learns that network's own entries beside them.
    (state / "connect-status.json").unlink()
    client = start_client(state, *args)
    try:
        echo_through(client, echo_server.port)
        wait_for(lambda: read_status(state).get("network") == "lab-mobile", "no status")
    finally:
        client.stop()
    (state / "connect-status.json").unlink()
    client = start_client(state, *args[:-4], "--network", "home-wifi")
    try:
        echo_through(client, echo_server.port)
        wait_for(lambda: read_status(state).get("network") == "home-wifi", "no status")
    finally:
        client.stop()
    networks = json.loads((state / "ladder.json").read_text())["networks"]
    assert set(networks) == {"lab-mobile", "home-wifi"}


def test_a_hello_rule_on_the_only_upstream_costs_a_race_not_a_dial_timeout(
    tls_node: RunningNode, eater: HelloEater, tmp_path: Path, echo_server: Any
) -> None:
    """A hello rule drops one of the client's hello variants, and the node behind it is
    the only upstream: the dial that sends that hello hangs, and is raced by the same
    upstream with the next variant after a second, so no request waits for the dial
    timeout (60 s here; the application's patience is 10 s)."""
    from resistance.client import hello
    from resistance.lab.dpi import hello_of, parse_client_hello

    pin = banner_pin(tls_node)
    blocked = parse_client_hello(hello_of(hello.variant(*hello.VARIANTS[0]), "x.example")).ja4()
    eater.drop_fingerprints.add(blocked)
    # The race delay is long so that a TLS handshake slowed by a loaded machine is not
    # beaten by plain SOCKS5 while nothing blocks it (this test is about the ladder,
    # not the race); a blocked hello still falls to plain within the 5 s budget.
    args = (
        "--race-after", "2.5",
        "--upstream", f"socks5s://alice:secret@127.0.0.1:{eater.port}#sha256={pin}",
        "--dial-timeout", "60",
    )  # fmt: skip
    client = start_client(tmp_path / "client", *args)
    # every variant comes round within len(VARIANTS) dials (health checks dial too)
    for _ in range(2 * len(hello.VARIANTS)):
        echo_through(client, echo_server.port)
    assert eater.eaten >= 1
