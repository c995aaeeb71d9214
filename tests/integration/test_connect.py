"""`resist connect` over live nodes: failover before the application notices."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resistance.proto.socks5 import Address, UdpDatagram, parse_udp_datagram
from tests.conftest import RunningNode, launch_node
from tests.integration.socksclient import open_socks, recv_exact
from tests.integration.test_udp_bind import associate, udp_client


@pytest.fixture
def client_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningNode] = []

    def start(*upstreams: RunningNode | str, extra: tuple[str, ...] = ()) -> RunningNode:
        args: list[str] = []
        for up in upstreams:
            url = up if isinstance(up, str) else f"socks5://alice:secret@{up.url_host}:{up.port}"
            args += ["--upstream", url]
        client = launch_node(
            [*args, "--check-interval", "0.5", *extra],
            tmp_path / f"client{len(started)}",
            command="connect",
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()


@pytest.fixture
def three_nodes(node_factory: Any) -> list[RunningNode]:
    return [
        node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", "--allow", "::1/128")
        for _ in range(3)
    ]


def echo_through(client: RunningNode, echo_port: int, payload: bytes = b"hello") -> None:
    with open_socks((client.host, client.port), "127.0.0.1", echo_port, user=None) as s:
        s.sendall(payload)
        assert recv_exact(s, len(payload)) == payload


def status(client: RunningNode, state_dir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    path = state_dir / "connect-status.json"
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_traffic_flows_and_survives_the_active_node_dying(
    client_factory: Any, three_nodes: list[RunningNode], echo_server: Any, tmp_path: Path
) -> None:
    client = client_factory(*three_nodes)
    assert f"Telegram: tg://socks?server=127.0.0.1&port={client.port}" in client.banner
    for _ in range(5):
        echo_through(client, echo_server.port)
    active = status(client, tmp_path / "client0")
    deadline = time.monotonic() + 10
    while active["active"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
        active = status(client, tmp_path / "client0")
    labels = [f"127.0.0.1:{n.port}" for n in three_nodes]
    in_use = three_nodes[labels.index(active["active"])]
    in_use.stop()
    # The very next connections succeed: the failed dial is retried elsewhere.
    for _ in range(10):
        echo_through(client, echo_server.port)
    # Down to the last node, still no error for the application.
    for node in three_nodes:
        if node is not in_use:
            node.stop()
            break
    for _ in range(5):
        echo_through(client, echo_server.port)


def test_an_upstream_with_bad_credentials_or_refusing_policy_is_skipped(
    client_factory: Any, node_factory: Any, echo_server: Any
) -> None:
    refusing = node_factory("--user", "alice:secret")  # may not reach loopback
    working = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8")
    client = client_factory(
        f"socks5://alice:wrong@127.0.0.1:{working.port}",
        refusing,
        working,
    )
    for _ in range(5):
        echo_through(client, echo_server.port, b"x" * 1000)


def test_all_upstreams_down_gives_one_clean_error(client_factory: Any, node_factory: Any) -> None:
    node = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8")
    client = client_factory(node)
    node.stop()
    from tests.integration.socksclient import SocksFailure

    with pytest.raises(SocksFailure):
        open_socks((client.host, client.port), "127.0.0.1", 9, user=None)
    assert client.proc.poll() is None


def test_udp_through_the_client(client_factory: Any, node: RunningNode, udp_echo: Any) -> None:
    client = client_factory(node)
    udp = udp_client()
    control, relay = associate(client, Address.from_ip("0.0.0.0", 0), user=None)
    with control, udp:
        target = Address.from_ip("127.0.0.1", udp_echo.port)
        for payload in (b"call", b"x" * 1200):
            udp.sendto(UdpDatagram(0, target, payload).pack(), relay)
            answer = parse_udp_datagram(udp.recvfrom(65535)[0])
            assert answer.payload == payload
            assert answer.address == target


def test_real_applications_through_the_client(
    client_factory: Any, node: RunningNode, tmp_path: Path, echo_server: Any
) -> None:
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "file").write_bytes(b"through the block\n" * 1000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"), **k
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = client_factory(node)
        url = f"http://127.0.0.1:{server.server_address[1]}/file"
        done = subprocess.run(
            ["curl", "-s", "--socks5-hostname", f"127.0.0.1:{client.port}", url],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0 and done.stdout == b"through the block\n" * 1000
        if shutil.which("proxychains4"):
            conf = tmp_path / "pc.conf"
            conf.write_text(
                "strict_chain\ntcp_read_time_out 15000\n"
                f"[ProxyList]\nsocks5 127.0.0.1 {client.port}\n"
            )
            done = subprocess.run(
                ["proxychains4", "-q", "-f", str(conf), "curl", "-s", url],
                capture_output=True,
                timeout=30,
            )
            assert done.returncode == 0 and done.stdout == b"through the block\n" * 1000
    finally:
        server.shutdown()
        server.server_close()


def test_status_command(client_factory: Any, node: RunningNode, tmp_path: Path) -> None:
    client = client_factory(node)
    state = tmp_path / "client0"
    deadline = time.monotonic() + 10
    while True:
        data = status(client, state)
        if data["upstreams"][0]["successes"]:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    done = subprocess.run(
        [sys.executable, "-m", "resistance", "connect", "status", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert f"127.0.0.1:{node.port}" in done.stdout
    assert "secret" not in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "resistance", "connect", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "is `resist connect` running there?" in missing.stderr


def test_a_hanging_upstream_is_raced_not_waited_for(
    client_factory: Any, node: RunningNode, echo_server: Any
) -> None:
    """A censor that drops packets makes a dial hang; the client must not wait it out."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        silent_url = f"socks5://alice:secret@127.0.0.1:{silent.getsockname()[1]}"
        # The dial timeout is far longer than the application's patience below, so
        # only the race can make these connections succeed.
        client = client_factory(silent_url, node, extra=("--dial-timeout", "60"))
        for _ in range(3):
            echo_through(client, echo_server.port)


def test_socks5_inside_tls_with_a_pinned_certificate(
    client_factory: Any, node_factory: Any, tmp_path: Path, echo_server: Any
) -> None:
    import hashlib as _hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tests.integration.test_node_ops import make_certificate

    cert, key = make_certificate(tmp_path)
    node = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8",
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-listen", "127.0.0.1:0",
    )  # fmt: skip
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    pin = _hashlib.sha256(der).hexdigest()
    good = f"socks5s://alice:secret@127.0.0.1:{node.tls_port}#sha256={pin}"
    client = client_factory(good)
    payload = bytes(range(256)) * 2000
    for _ in range(3):
        echo_through(client, echo_server.port, payload)
    # A wrong pin is refused; the next upstream (plain) carries the traffic.
    wrong = f"socks5s://alice:secret@127.0.0.1:{node.tls_port}#sha256={'0' * 64}"
    client = client_factory(wrong, node)
    for _ in range(3):
        echo_through(client, echo_server.port)
    state = Path(str(client.stderr_path)).parent
    deadline = time.monotonic() + 10
    while True:
        rows = status(client, state)["upstreams"]
        errors = " ".join(r["last_error"] for r in rows)
        if "does not match its pin" in errors:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    # A socks5s URL without a pin is a configuration error.
    done = subprocess.run(
        [sys.executable, "-m", "resistance", "connect", "--state-dir", str(tmp_path / "x"),
         "--upstream", f"socks5s://alice:secret@127.0.0.1:{node.tls_port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "#sha256=" in done.stderr
