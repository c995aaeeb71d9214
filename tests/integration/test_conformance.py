"""Every RFC 1928 reply code, provoked on a live node and checked byte for byte.

Codes that need an unreachable network, a dropped SYN or a refused private
destination are provoked inside a namespace that has only loopback, so a
connection the node should not make goes nowhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resistance.proto.socks5 import Address, Command, client_request
from tests.conftest import RunningNode, launch_node
from tests.integration.netns import can_make_namespaces, exec_prefix, loopback_namespace, run

EXCHANGE = Path(__file__).with_name("socks_exchange.py")
GREETING = "050102/2"
AUTH = "0105616c69636506736563726574/2"  # alice / secret
FAILURE_TAIL = "000100000000" + "0000"  # RSV, ATYP=1, 0.0.0.0, port 0

needs_netns = pytest.mark.skipif(not can_make_namespaces(), reason="needs root and iproute2")


def request_hex(command: Command, host: str, port: int) -> str:
    return client_request(command, Address.from_host(host, port)).hex() + "/10"


def exchange(node: RunningNode, *steps: str, namespace: str | None = None) -> dict[str, Any]:
    prefix = list(exec_prefix(namespace)) if namespace else []
    done = subprocess.run(
        [*prefix, sys.executable, str(EXCHANGE), node.host, str(node.port), *steps],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def connect_reply(node: RunningNode, host: str, port: int, **kw: Any) -> dict[str, Any]:
    return exchange(node, GREETING, AUTH, request_hex(Command.CONNECT, host, port), **kw)


def assert_failure(result: dict[str, Any], code: int) -> None:
    assert result["replies"][:2] == ["0502", "0100"]
    assert result["replies"][2] == f"05{code:02x}" + FAILURE_TAIL
    assert result["eof"], "the node must close after a failure reply"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- on the host's loopback -------------------------------------------------------


def test_succeeded_carries_the_outbound_address(node: RunningNode, echo_server: Any) -> None:
    result = exchange(
        node,
        GREETING,
        AUTH,
        request_hex(Command.CONNECT, "127.0.0.1", echo_server.port),
        "70696e67/4",
    )
    assert result["replies"][:2] == ["0502", "0100"]
    reply = bytes.fromhex(result["replies"][2])
    assert reply[:4] == b"\x05\x00\x00\x01"
    assert reply[4:8] == bytes([127, 0, 0, 1])
    assert int.from_bytes(reply[8:10], "big") != 0
    assert result["replies"][3] == "70696e67"  # "ping" echoed through the relay


def test_connection_refused(node: RunningNode) -> None:
    assert_failure(connect_reply(node, "127.0.0.1", closed_port()), 0x05)


def test_loopback_is_not_allowed_by_default(node_factory: Any) -> None:
    node = node_factory("--user", "alice:secret")
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(1)
        port = target.getsockname()[1]
        for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1", "::1"):
            assert_failure(connect_reply(node, host, port), 0x02)
        target.settimeout(0.2)
        with pytest.raises(TimeoutError):
            target.accept()  # nothing ever knocked


def test_command_not_supported(node: RunningNode) -> None:
    result = exchange(node, GREETING, AUTH, "0504000100000000" + "0050/10")
    assert_failure(result, 0x07)


def test_bind_and_udp_can_be_switched_off(node_factory: Any) -> None:
    node = node_factory("--user", "alice:secret", "--no-bind", "--no-udp")
    assert_failure(exchange(node, GREETING, AUTH, request_hex(Command.BIND, "0.0.0.0", 0)), 0x07)
    assert_failure(
        exchange(node, GREETING, AUTH, request_hex(Command.UDP_ASSOCIATE, "0.0.0.0", 0)), 0x07
    )


def test_address_type_not_supported(node: RunningNode) -> None:
    result = exchange(node, GREETING, AUTH, "05010005" + "00" * 6 + "/10")
    assert_failure(result, 0x08)


def test_no_acceptable_method_and_bad_password(node: RunningNode) -> None:
    result = exchange(node, "050100/2")
    assert result["replies"] == ["05ff"] and result["eof"]
    result = exchange(node, GREETING, "0105616c69636505777267676f/2")
    assert result["replies"] == ["0502", "0101"] and result["eof"]


def test_smtp_is_refused_before_any_dial(node: RunningNode) -> None:
    # 127.0.0.0/8 is allowed on this node, so only the port rule can refuse.
    assert_failure(connect_reply(node, "127.0.0.1", 25), 0x02)


# -- inside a namespace that has only loopback ----------------------------------


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not can_make_namespaces():
        pytest.skip("needs root and iproute2")
    with loopback_namespace("conf") as ns:
        run("ip", "-n", ns, "route", "add", "unreachable", "203.0.113.0/24")
        nodes: list[RunningNode] = []

        def start(*args: str) -> RunningNode:
            n = launch_node(
                ["--user", "alice:secret", *args],
                tmp_path_factory.mktemp("node"),
                prefix=exec_prefix(ns),
            )
            nodes.append(n)
            return n

        yield ns, start
        for n in nodes:
            n.stop()


@needs_netns
def test_network_unreachable(isolated: Any) -> None:
    ns, start = isolated
    node = start("--allow", "2001:db8::/32", "--allow", "198.51.100.0/24")
    assert_failure(connect_reply(node, "2001:db8::1", 80, namespace=ns), 0x03)
    assert_failure(connect_reply(node, "198.51.100.1", 80, namespace=ns), 0x03)


@needs_netns
def test_host_unreachable(isolated: Any) -> None:
    ns, start = isolated
    node = start("--allow", "203.0.113.0/24")
    assert_failure(connect_reply(node, "203.0.113.5", 80, namespace=ns), 0x04)
    # A name that cannot be resolved (no resolver is reachable from here).
    assert_failure(connect_reply(node, "nonexistent.invalid", 80, namespace=ns), 0x04)


@needs_netns
def test_ttl_expired_when_the_connect_times_out(isolated: Any) -> None:
    ns, start = isolated
    run("ip", "netns", "exec", ns, "nft", "-f", "-", input=DROP_PORT_9)
    node = start("--allow", "127.0.0.0/8", "--connect-timeout", "1")
    result = connect_reply(node, "127.0.0.1", 9, namespace=ns)
    # The only reply is the failure: never "succeeded" before the connect is up.
    assert_failure(result, 0x06)


DROP_PORT_9 = """
table inet resisttest {
    chain out {
        type filter hook output priority 0;
        tcp dport 9 drop
    }
}
"""


@needs_netns
def test_general_failure_for_an_impossible_connect(isolated: Any) -> None:
    ns, start = isolated
    # A link-local IPv6 address without a scope cannot be connected to (EINVAL).
    node = start("--allow", "fe80::/10")
    assert_failure(connect_reply(node, "fe80::1", 80, namespace=ns), 0x01)


REFUSED_BY_DEFAULT = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.255",
    "255.255.255.255",
    "240.0.0.1",
    "198.18.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::a00:1",
    "64:ff9b:1::c0a8:101",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
]


@needs_netns
def test_private_and_reserved_destinations_are_refused(isolated: Any) -> None:
    ns, start = isolated
    node = start()
    for host in REFUSED_BY_DEFAULT:
        result = connect_reply(node, host, 80, namespace=ns)
        assert result["replies"][2:3] == ["0502" + FAILURE_TAIL], host
    # A name that resolves to loopback is refused on its resolved address.
    assert_failure(connect_reply(node, "localhost", 80, namespace=ns), 0x02)
    # SMTP is refused on any address.
    assert_failure(connect_reply(node, "192.0.2.1", 25, namespace=ns), 0x02)


@needs_netns
def test_only_telegram_refuses_everything_else(isolated: Any) -> None:
    ns, start = isolated
    node = start("--only", "telegram")
    # Outside Telegram's ranges: refused by policy, nothing dialed.
    assert_failure(connect_reply(node, "8.8.8.8", 443, namespace=ns), 0x02)
    # Inside them: allowed, and the dial fails here only because there is no route.
    assert_failure(connect_reply(node, "149.154.167.51", 443, namespace=ns), 0x03)
    assert_failure(connect_reply(node, "2001:b28:f23d::a", 443, namespace=ns), 0x03)
