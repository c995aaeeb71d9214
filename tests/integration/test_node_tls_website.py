"""The node's TLS listener is an ordinary website to a browser or a censor's prober,
and still a SOCKS5 proxy to its clients (real sockets on loopback)."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import httpx
import pytest

from resistance.lab.censorwatch import browser_probe
from resistance.node import website
from tests.conftest import RunningNode


@pytest.fixture
def tls_node(node_factory: Any, tmp_path: Any) -> RunningNode:
    node: RunningNode = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=tmp_path / "node",
    )  # fmt: skip
    assert node.tls_port
    return node


def test_a_browser_gets_a_web_page(tls_node: RunningNode) -> None:
    answer = httpx.get(f"https://127.0.0.1:{tls_node.tls_port}/", verify=False, timeout=10)
    assert answer.status_code == 200 and answer.content == website.PAGE


def test_the_censors_active_prober_judges_it_a_website(tls_node: RunningNode) -> None:
    assert tls_node.tls_port
    ok, seen = browser_probe("127.0.0.1", tls_node.tls_port, None)
    assert ok, seen
    assert seen == "HTTP/1.1 200 OK"


def test_socks5_inside_tls_still_works(tls_node: RunningNode) -> None:
    assert tls_node.tls_port
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="www.example.net") as tls,
    ):
        tls.sendall(b"\x05\x01\x02")
        assert tls.recv(2) == b"\x05\x02"  # username/password chosen: the proxy answered
