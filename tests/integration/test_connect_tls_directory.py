"""`resist connect` reaching nodes' TLS listeners with pins taken from a signed directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.keys import public_key_text
from resistance.proto.socks5 import Address, UdpDatagram, parse_udp_datagram
from tests.conftest import RunningNode
from tests.integration.socksclient import SocksFailure, open_socks
from tests.integration.test_connect import echo_through
from tests.integration.test_connect_directory import (
    listing,
    read_status,
    signed_file,
    start_client,
    wait_for,
)
from tests.integration.test_udp_bind import associate, udp_client

PIN_LINE = re.compile(r"TLS certificate sha256 ([0-9a-f]{64})")


def banner_pin(node: RunningNode) -> str:
    for line in node.banner:
        if m := PIN_LINE.search(line):
            return m.group(1)
    raise AssertionError(f"no certificate pin in the banner: {node.banner}")


@pytest.fixture
def tls_node(node_factory: Any, tmp_path: Path) -> tuple[RunningNode, Path]:
    state = tmp_path / "tls-node"
    node = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=state,
    )  # fmt: skip
    assert node.tls_port
    return node, state


def tls_listing(node: RunningNode, state: Path, *, pin: str | None = None) -> dict[str, Any]:
    entry = listing(node, state)
    entry["tls"] = {"port": node.tls_port, "sha256": pin or banner_pin(node)}
    return entry


def client_for(
    tmp_path: Path, entries: list[dict[str, Any]], *args: str, name: str = "client"
) -> tuple[RunningNode, Path]:
    authority = Ed25519PrivateKey.generate()
    directory = signed_file(tmp_path / f"{name}.json", entries, [authority], serial=5)
    state = tmp_path / name
    trust = public_key_text(authority.public_key())
    return start_client(state, "--directory", str(directory), "--trust", trust, *args), state


def rows_by_label(state: Path) -> dict[str, dict[str, Any]]:
    return {r["upstream"]: r for r in read_status(state)["upstreams"]}


def test_auto_prefers_the_pinned_tls_listener_and_keeps_plain_for_udp(
    tls_node: tuple[RunningNode, Path], tmp_path: Path, echo_server: Any, udp_echo: Any
) -> None:
    node, state = tls_node
    client, client_state = client_for(tmp_path, [tls_listing(node, state)])
    try:
        assert "2 upstreams (1 over TLS)" in client.banner[0]
        payload = bytes(range(256)) * 1000
        for _ in range(3):
            echo_through(client, echo_server.port, payload)
        tls_label = f"127.0.0.1:{node.tls_port} (TLS)"
        plain_label = f"127.0.0.1:{node.port}"
        # The connections went through TLS, and the health check proved over TLS that
        # the listener is the node the directory names (its signature covers the pin).
        status = wait_for(
            lambda: (
                (s := read_status(client_state))["active"] == tls_label
                and (row := {r["upstream"]: r for r in s["upstreams"]}[tls_label])["successes"] >= 4
                and not row["last_error"]
                and s
            ),
            "the TLS upstream was not the one in use",
        )
        assert status["dial_failures"] == 0
        # UDP cannot go through TLS: the plain port of the same node carries it.
        udp = udp_client()
        control, relay = associate(client, Address.from_ip("0.0.0.0", 0), user=None)
        with control, udp:
            target = Address.from_ip("127.0.0.1", udp_echo.port)
            udp.sendto(UdpDatagram(0, target, b"over udp").pack(), relay)
            assert parse_udp_datagram(udp.recvfrom(65535)[0]).payload == b"over udp"
        assert rows_by_label(client_state)[plain_label]["failures"] == 0
    finally:
        client.stop()


def test_a_wrong_pin_in_the_directory_fails_over(
    tls_node: tuple[RunningNode, Path], tmp_path: Path, echo_server: Any
) -> None:
    node, state = tls_node
    wrong = "ab" * 32
    client, client_state = client_for(tmp_path, [tls_listing(node, state, pin=wrong)])
    try:
        for _ in range(3):
            echo_through(client, echo_server.port)  # the plain port takes over at once
        rows = wait_for(
            lambda: (
                (r := rows_by_label(client_state))
                and "does not match its pin" in r[f"127.0.0.1:{node.tls_port} (TLS)"]["last_error"]
                and r
            ),
            "the wrong pin was never reported",
        )
        assert rows[f"127.0.0.1:{node.port}"]["successes"] >= 1
    finally:
        client.stop()
    # With --transport tls there is no plain port to fall back to: nothing gets through.
    client, _ = client_for(
        tmp_path, [tls_listing(node, state, pin=wrong)], "--transport", "tls", name="strict"
    )
    try:
        with pytest.raises(SocksFailure):
            open_socks((client.host, client.port), "127.0.0.1", echo_server.port, user=None)
    finally:
        client.stop()


def test_transport_choices(
    tls_node: tuple[RunningNode, Path], node_factory: Any, tmp_path: Path, echo_server: Any
) -> None:
    node, state = tls_node
    plain_state = tmp_path / "plain-node"
    plain = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", state_dir=plain_state)
    entries = [tls_listing(node, state), listing(plain, plain_state)]
    client, _ = client_for(tmp_path, entries, "--transport", "tls", name="tls-only")
    try:
        assert "1 upstream (1 over TLS)" in client.banner[0]  # the plain-only node is skipped
        echo_through(client, echo_server.port)
    finally:
        client.stop()
    client, _ = client_for(tmp_path, entries, "--transport", "plain", name="plain-only")
    try:
        assert "2 upstreams" in client.banner[0] and "TLS" not in client.banner[0]
        echo_through(client, echo_server.port)
    finally:
        client.stop()
