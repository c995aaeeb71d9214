"""UDP ASSOCIATE and BIND on a live node, at the byte level."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from resistance.proto.socks5 import (
    Address,
    AddressType,
    Command,
    Reply,
    UdpDatagram,
    parse_udp_datagram,
)
from tests.conftest import RunningNode
from tests.integration.socksclient import SocksFailure, handshake, read_reply, recv_exact


def associate(
    node: RunningNode, hint: Address, user: str | None = "alice"
) -> tuple[socket.socket, tuple[str, int]]:
    control = socket.create_connection((node.host, node.port), timeout=10)
    bound = handshake(control, Command.UDP_ASSOCIATE, hint, user=user)
    return control, (bound.host, bound.port)


def udp_client(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(3)
    return sock


def test_udp_round_trip_with_headers(node: RunningNode, udp_echo: Any) -> None:
    client = udp_client()
    control, relay = associate(node, Address.from_ip("0.0.0.0", 0))
    with control, client:
        assert relay[0] == "127.0.0.1"  # the address the client reached the node at
        target = Address.from_ip("127.0.0.1", udp_echo.port)
        client.sendto(UdpDatagram(0, target, b"call me").pack(), relay)
        data, source = client.recvfrom(65535)
        assert source == relay
        answer = parse_udp_datagram(data)
        assert answer.fragment == 0
        assert answer.address == target  # the header names the answer's source
        assert answer.payload == b"call me"


def test_udp_fragments_and_strangers_are_dropped(node: RunningNode, udp_echo: Any) -> None:
    client = udp_client()
    stranger = udp_client()
    control, relay = associate(node, Address.from_ip("0.0.0.0", 0))
    with control, client, stranger:
        target = Address.from_ip("127.0.0.1", udp_echo.port)
        client.sendto(UdpDatagram(1, target, b"fragment").pack(), relay)
        client.sendto(b"\x00\x00", relay)  # malformed
        client.sendto(UdpDatagram(0, target, b"first").pack(), relay)
        assert parse_udp_datagram(client.recvfrom(65535)[0]).payload == b"first"
        # The association is now tied to the client's port: another port is ignored.
        stranger.sendto(UdpDatagram(0, target, b"stranger").pack(), relay)
        stranger.settimeout(0.5)
        with pytest.raises(TimeoutError):
            stranger.recvfrom(65535)
        client.sendto(UdpDatagram(0, target, b"second").pack(), relay)
        assert parse_udp_datagram(client.recvfrom(65535)[0]).payload == b"second"


def test_udp_port_given_in_the_request_is_enforced(node: RunningNode, udp_echo: Any) -> None:
    client = udp_client()
    other = udp_client()
    control, relay = associate(node, Address.from_ip("127.0.0.1", client.getsockname()[1]))
    with control, client, other:
        target = Address.from_ip("127.0.0.1", udp_echo.port)
        other.sendto(UdpDatagram(0, target, b"not me").pack(), relay)
        other.settimeout(0.5)
        with pytest.raises(TimeoutError):
            other.recvfrom(65535)
        client.sendto(UdpDatagram(0, target, b"me").pack(), relay)
        assert parse_udp_datagram(client.recvfrom(65535)[0]).payload == b"me"


def test_udp_policy_is_checked_per_datagram(node_factory: Any, udp_echo: Any) -> None:
    node = node_factory("--user", "alice:secret")  # loopback not allowed
    client = udp_client()
    control, relay = associate(node, Address.from_ip("0.0.0.0", 0))
    with control, client:
        client.settimeout(0.5)
        client.sendto(
            UdpDatagram(0, Address.from_ip("127.0.0.1", udp_echo.port), b"x").pack(), relay
        )
        with pytest.raises(TimeoutError):
            client.recvfrom(65535)


def test_udp_association_ends_with_its_control_connection(node: RunningNode, udp_echo: Any) -> None:
    client = udp_client()
    control, relay = associate(node, Address.from_ip("0.0.0.0", 0))
    with client:
        target = Address.from_ip("127.0.0.1", udp_echo.port)
        client.sendto(UdpDatagram(0, target, b"alive").pack(), relay)
        assert parse_udp_datagram(client.recvfrom(65535)[0]).payload == b"alive"
        control.close()
        client.connect(relay)
        client.settimeout(0.3)
        # Once the node has closed the relay socket the kernel answers "port unreachable".
        for _ in range(50):
            try:
                client.send(UdpDatagram(0, target, b"gone?").pack())
                client.recv(65535)
            except ConnectionRefusedError:
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("the relay socket outlived its control connection")


def test_udp_over_ipv6(node_factory: Any) -> None:
    from tests.conftest import UdpEcho, has_ipv6_loopback

    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    node = node_factory("--user", "alice:secret", "--allow", "::1/128", listen="[::1]:0")
    echo = UdpEcho("::1")
    client = udp_client("::1")
    control, relay = associate(node, Address.from_ip("::", 0))
    with control, client:
        assert relay[0] == "::1"
        target = Address.from_ip("::1", echo.port)
        client.sendto(UdpDatagram(0, target, b"v6").pack(), relay)
        answer = parse_udp_datagram(client.recvfrom(65535)[0])
        assert answer.address.type is AddressType.IPV6
        assert answer.payload == b"v6"
    echo.close()


def test_bind_second_reply_names_the_peer(node: RunningNode) -> None:
    with socket.create_connection((node.host, node.port), timeout=10) as control:
        bound = handshake(control, Command.BIND, Address.from_ip("127.0.0.1", 0))
        assert bound.host == "127.0.0.1" and bound.port != 0
        with socket.create_connection((bound.host, bound.port), timeout=10) as peer:
            code, address = read_reply(control)
            assert code is Reply.SUCCEEDED
            assert address == Address.from_ip(*peer.getsockname()[:2])
            peer.sendall(b"from the server")
            assert recv_exact(control, 15) == b"from the server"
            control.sendall(b"from the client")
            assert recv_exact(peer, 15) == b"from the client"


def test_bind_times_out_with_ttl_expired(node_factory: Any, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[limits]\nbind_timeout = 1\n[users]\nalice = "secret"\n')
    node = node_factory("--config", str(config), "--allow", "127.0.0.0/8")
    with socket.create_connection((node.host, node.port), timeout=10) as control:
        handshake(control, Command.BIND, Address.from_ip("127.0.0.1", 0))
        code, _ = read_reply(control)
        assert code is Reply.TTL_EXPIRED
        assert control.recv(1) == b""


def test_bind_refuses_a_private_peer_unless_allowed(node_factory: Any) -> None:
    node = node_factory("--user", "alice:secret")
    with socket.create_connection((node.host, node.port), timeout=10) as control:
        with pytest.raises(SocksFailure) as failure:
            handshake(control, Command.BIND, Address.from_ip("10.1.2.3", 80))
        assert failure.value.reply is Reply.NOT_ALLOWED
