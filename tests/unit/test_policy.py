"""Tests of the egress policy: a pure function, so nothing here dials or resolves."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.node.policy import (
    ALLOWED,
    REFUSED_REPLY,
    SPECIAL_IPV4,
    SPECIAL_IPV6,
    Decision,
    EgressPolicy,
    load_networks,
    parse_port_spec,
    telegram_networks,
)

DEFAULT = EgressPolicy()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that tries to open a socket or resolve a name."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the policy tests must not touch the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    yield


# -- address helpers ---------------------------------------------------------


def v4(text: str) -> int:
    return int(IPv4Address(text))


def mapped(a: int) -> IPv6Address:
    return IPv6Address((0xFFFF << 32) | a)


def compatible(a: int) -> IPv6Address:
    return IPv6Address(a)


def nat64(a: int) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b::")) | a)


def nat64_local(a: int, subnet: int = 0) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b:1::")) | (subnet << 32) | a)


def six_to_four(a: int, host: int = 1) -> IPv6Address:
    return IPv6Address((0x2002 << 112) | (a << 80) | host)


def teredo(client: int, server: str = "65.54.227.120", port: int = 40000) -> IPv6Address:
    """A Teredo address (RFC 4380): the client address and port are stored inverted."""
    return IPv6Address(
        (0x20010000 << 96)
        | (v4(server) << 64)
        | (0x8000 << 48)
        | ((port ^ 0xFFFF) << 32)
        | (client ^ 0xFFFFFFFF)
    )


def verdict(policy: EgressPolicy, address: str | IPv4Address | IPv6Address, port: int = 443) -> str:
    return policy.check(address, port).reason


# -- built-in ranges -----------------------------------------------------------

# (address, reason): the first and last address of every range and the
# addresses just outside it, whatever they are.
IPV4_EDGES = [
    ("0.0.0.0", "this-network"),
    ("0.255.255.255", "this-network"),
    ("1.0.0.0", "ok"),
    ("9.255.255.255", "ok"),
    ("10.0.0.0", "private"),
    ("10.255.255.255", "private"),
    ("11.0.0.0", "ok"),
    ("100.63.255.255", "ok"),
    ("100.64.0.0", "cgnat"),
    ("100.127.255.255", "cgnat"),
    ("100.128.0.0", "ok"),
    ("126.255.255.255", "ok"),
    ("127.0.0.0", "loopback"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.255", "loopback"),
    ("128.0.0.0", "ok"),
    ("169.253.255.255", "ok"),
    ("169.254.0.0", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.255.255", "link-local"),
    ("169.255.0.0", "ok"),
    ("172.15.255.255", "ok"),
    ("172.16.0.0", "private"),
    ("172.31.255.255", "private"),
    ("172.32.0.0", "ok"),
    ("191.255.255.255", "ok"),
    ("192.0.0.0", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.0.0.9", "ok"),  # PCP anycast: globally reachable per IANA
    ("192.0.0.10", "ok"),  # TURN anycast: globally reachable per IANA
    ("192.0.0.11", "reserved"),
    ("192.0.0.170", "reserved"),
    ("192.0.0.255", "reserved"),
    ("192.0.1.0", "ok"),
    ("192.0.1.255", "ok"),
    ("192.0.2.0", "documentation"),
    ("192.0.2.255", "documentation"),
    ("192.0.3.0", "ok"),
    ("192.31.196.1", "ok"),  # AS112-v4: globally reachable
    ("192.52.193.1", "ok"),  # AMT: globally reachable
    ("192.88.98.255", "ok"),
    ("192.88.99.0", "reserved"),
    ("192.88.99.255", "reserved"),
    ("192.88.100.0", "ok"),
    ("192.167.255.255", "ok"),
    ("192.168.0.0", "private"),
    ("192.168.255.255", "private"),
    ("192.169.0.0", "ok"),
    ("198.17.255.255", "ok"),
    ("198.18.0.0", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.20.0.0", "ok"),
    ("198.51.99.255", "ok"),
    ("198.51.100.0", "documentation"),
    ("198.51.100.255", "documentation"),
    ("198.51.101.0", "ok"),
    ("203.0.112.255", "ok"),
    ("203.0.113.0", "documentation"),
    ("203.0.113.255", "documentation"),
    ("203.0.114.0", "ok"),
    ("223.255.255.255", "ok"),
    ("224.0.0.0", "multicast"),
    ("239.255.255.255", "multicast"),
    ("240.0.0.0", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("8.8.8.8", "ok"),
    ("149.154.167.50", "ok"),
]

IPV6_EDGES = [
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::2", "this-network"),  # IPv4-compatible ::0.0.0.2
    ("::7f00:1", "loopback"),  # IPv4-compatible ::127.0.0.1
    ("::8.8.8.8", "ok"),
    ("::1:0:0:0", "reserved"),  # ::/8 outside the translation forms
    ("::ffff:0.0.0.0", "this-network"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:8.8.8.8", "ok"),
    ("::ffff:255.255.255.255", "broadcast"),
    ("::ffff:ffff", "broadcast"),  # last IPv4-compatible address
    ("::1:0:0", "reserved"),  # just past it
    ("::fffe:ffff:ffff", "reserved"),  # just before IPv4-mapped
    ("::ffff:0:0:0", "reserved"),  # SIIT ::ffff:0:a.b.c.d is no translation form here
    ("64:ff9b::", "this-network"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("64:ff9b::808:808", "ok"),
    ("64:ff9b::ffff:ffff", "broadcast"),
    ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("64:ff9b::1:0:0", "reserved"),  # just past the /96
    ("64:ff9b:1::a00:1", "private"),
    ("64:ff9b:1::808:808", "ok"),
    ("64:ff9b:1:ffff:ffff:ffff:7f00:1", "loopback"),
    ("64:ff9b:2::808:808", "reserved"),
    ("ff::", "reserved"),
    ("100::", "reserved"),
    ("100::ffff:ffff:ffff:ffff", "reserved"),
    ("100:0:0:1::", "reserved"),
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("2000::", "ok"),
    ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ok"),
    ("2001:1::1", "ok"),
    ("2001:1::2", "ok"),
    ("2001:1::3", "ok"),
    ("2001:1::4", "reserved"),
    ("2001:2::", "benchmarking"),
    ("2001:2:0:ffff:ffff:ffff:ffff:ffff", "benchmarking"),
    ("2001:2:1::", "reserved"),
    ("2001:3::1", "ok"),
    ("2001:4:112::1", "ok"),
    ("2001:4:113::1", "reserved"),
    ("2001:10::", "reserved"),
    ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("2001:20::1", "ok"),
    ("2001:30::1", "ok"),
    ("2001:40::1", "reserved"),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("2001:200::", "ok"),
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "ok"),
    ("2001:db8::", "documentation"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("2001:db9::", "ok"),
    ("2001:4860:4860::8888", "ok"),
    ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ok"),
    ("2002:808:808::1", "ok"),
    ("2002:7f00:1::", "loopback"),
    ("2002:a9fe:a9fe::1", "link-local"),
    ("2002:c0a8:101::1", "private"),
    ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "broadcast"),
    ("2003::", "ok"),
    ("3ffe:ffff::", "ok"),
    ("3fff::", "documentation"),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "documentation"),
    ("3fff:1000::", "ok"),
    ("4000::", "reserved"),
    ("5f00::1", "reserved"),
    ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("fc00::", "unique-local"),
    ("fd00:ec2::254", "unique-local"),  # AWS IPv6 metadata service
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "unique-local"),
    ("fe00::", "reserved"),
    ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("fe80::", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link-local"),
    ("fec0::", "reserved"),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "reserved"),
    ("ff00::", "multicast"),
    ("ff02::1", "multicast"),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast"),
]


@pytest.mark.parametrize(("address", "reason"), IPV4_EDGES + IPV6_EDGES)
def test_builtin_ranges(address: str, reason: str) -> None:
    decision = DEFAULT.check(address, 443)
    assert decision == Decision(reason == "ok", reason)
    # An address object gets the same answer as its text.
    assert DEFAULT.check(ip_address(address), 443) == decision


def test_teredo_edges_are_judged_by_their_inverted_client() -> None:
    # Client bits all zero invert to 255.255.255.255, all one to 0.0.0.0.
    assert DEFAULT.check("2001::", 443).reason == "broadcast"
    assert DEFAULT.check("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", 443).reason == "this-network"
    assert DEFAULT.check("2001:0:ffff:ffff:ffff:ffff:f7f7:f7f7", 443) == ALLOWED
    assert DEFAULT.check("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 443) == ALLOWED
    assert DEFAULT.check("2001:1::", 443).reason == "reserved"


SPECIAL_NETWORKS: list[IPv4Network | IPv6Network] = [
    *(IPv4Network(cidr) for cidr, _ in SPECIAL_IPV4),
    *(IPv6Network(cidr) for cidr, _, _ in SPECIAL_IPV6),
]
_V4_TABLE = [(IPv4Network(cidr), reason) for cidr, reason in SPECIAL_IPV4]
_V6_TABLE = [(IPv6Network(cidr), reason, embedding) for cidr, reason, embedding in SPECIAL_IPV6]


def reference_reason(address: IPv4Address | IPv6Address) -> str:
    """The default policy's answer by a slow longest-prefix scan of the registry tables.

    Embedded IPv4 addresses are taken out with the standard library's own
    decoders (``sixtofour``, ``teredo``), independently of the module.
    """
    if isinstance(address, IPv4Address):
        matches4 = [(net, reason) for net, reason in _V4_TABLE if address in net]
        if not matches4:
            return "ok"
        return max(matches4, key=lambda m: m[0].prefixlen)[1] or "ok"
    matches6 = [(net, r, e) for net, r, e in _V6_TABLE if address in net]
    _, reason, embedding = max(matches6, key=lambda m: m[0].prefixlen)
    if not embedding:
        return reason or "ok"
    if address.sixtofour is not None:
        return reference_reason(address.sixtofour)
    if address.teredo is not None:
        return reference_reason(address.teredo[1])
    return reference_reason(IPv4Address(int(address) & 0xFFFFFFFF))


@pytest.mark.parametrize("network", SPECIAL_NETWORKS, ids=str)
def test_every_special_network_at_its_edges(network: IPv4Network | IPv6Network) -> None:
    """First and last address of each registry entry, and the ones just outside."""
    first, last = int(network.network_address), int(network.broadcast_address)
    top = (1 << network.max_prefixlen) - 1
    for value in (first - 1, first, first + 1, last - 1, last, last + 1):
        if 0 <= value <= top:
            address = IPv4Address(value) if network.version == 4 else IPv6Address(value)
            assert verdict(DEFAULT, address) == reference_reason(address), str(address)


def test_reference_agrees_with_the_hand_written_edges() -> None:
    for text, reason in IPV4_EDGES + IPV6_EDGES:
        assert reference_reason(ip_address(text.split("%")[0])) == reason, text


def test_name_resolving_to_loopback_is_refused() -> None:
    """The node checks what a name resolved to, never the name itself."""
    fake_dns = {"rebind.example": ["127.0.0.1", "::1", "::ffff:127.0.0.1"]}
    for resolved in fake_dns["rebind.example"]:
        assert DEFAULT.check(resolved, 80) == Decision(False, "loopback")
    # A name passed by mistake is never taken for an address.
    assert DEFAULT.check("rebind.example", 80) == Decision(False, "invalid-address")


@pytest.mark.parametrize(
    "text", ["", "localhost", "1.2.3", "01.2.3.4", "1.2.3.4/32", "::g", " 1.2.3.4"]
)
def test_invalid_address_text_is_refused(text: str) -> None:
    assert DEFAULT.check(text, 443) == Decision(False, "invalid-address")


def test_translation_forms_of_loopback_and_metadata() -> None:
    loopback, metadata = v4("127.0.0.1"), v4("169.254.169.254")
    for form in (mapped, compatible, nat64, nat64_local, six_to_four, teredo):
        assert DEFAULT.check(form(loopback), 80).reason == "loopback", form.__name__
        assert DEFAULT.check(form(metadata), 80).reason == "link-local", form.__name__
        assert DEFAULT.check(form(v4("8.8.8.8")), 80) == ALLOWED, form.__name__
    assert DEFAULT.check("64:ff9b::7f00:1", 80).reason == "loopback"
    assert DEFAULT.check("64:ff9b::a9fe:a9fe", 80).reason == "link-local"
    assert DEFAULT.check("::ffff:127.0.0.1", 80).reason == "loopback"


def test_teredo_uses_client_not_server() -> None:
    # RFC 4380's example: server 65.54.227.120, client 192.0.2.45 (documentation).
    assert str(teredo(v4("192.0.2.45"))).startswith("2001:0:4136:e378:8000:")
    assert DEFAULT.check(teredo(v4("192.0.2.45")), 80).reason == "documentation"
    assert DEFAULT.check(teredo(v4("8.8.8.8"), server="127.0.0.1"), 80) == ALLOWED
    assert DEFAULT.check("2001:0:4136:e378:8000:63bf:80ff:fffe", 80).reason == "loopback"


def test_refusal_reply_code() -> None:
    assert REFUSED_REPLY == 0x02


# -- operator rules --------------------------------------------------------------


def test_allow_overrides_builtin_for_every_spelling() -> None:
    policy = EgressPolicy(allow=["127.0.0.0/8"])
    for address in ("127.0.0.1", "127.255.255.255", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
        assert policy.check(address, 8080) == ALLOWED, address
    assert policy.check(six_to_four(v4("127.0.0.1")), 80) == ALLOWED
    assert policy.check("126.255.255.255", 80) == ALLOWED
    assert policy.check("::1", 8080).reason == "loopback"  # IPv6 loopback is another network
    assert policy.check("10.0.0.1", 8080).reason == "private"


def test_allow_ipv6_loopback() -> None:
    policy = EgressPolicy(allow=[IPv6Network("::1/128")])
    assert policy.check("::1", 80) == ALLOWED
    assert policy.check("127.0.0.1", 80).reason == "loopback"


def test_deny_applies_to_every_spelling() -> None:
    policy = EgressPolicy(deny=["8.8.8.0/24"])
    for form in (mapped, compatible, nat64, nat64_local, six_to_four, teredo):
        assert policy.check(form(v4("8.8.8.8")), 53).reason == "operator-deny", form.__name__
    assert policy.check("8.8.8.8", 53).reason == "operator-deny"
    assert policy.check("8.8.9.0", 53) == ALLOWED
    assert policy.check("8.8.7.255", 53) == ALLOWED


def test_deny_beats_allow() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert policy.check("10.0.255.255", 80) == ALLOWED
    assert policy.check("10.1.0.0", 80).reason == "operator-deny"
    assert policy.check("10.1.255.255", 80).reason == "operator-deny"
    assert policy.check("10.2.0.0", 80) == ALLOWED
    assert policy.check("::ffff:10.1.2.3", 80).reason == "operator-deny"


def test_ipv4_deny_beats_ipv6_allow_of_a_translation_prefix() -> None:
    policy = EgressPolicy(allow=["64:ff9b::/96"], deny=["10.0.0.0/8"])
    assert policy.check("64:ff9b::a00:1", 80).reason == "operator-deny"
    # The explicit allow of the prefix lets the operator reach the rest.
    assert policy.check("64:ff9b::7f00:1", 80) == ALLOWED
    assert policy.check("127.0.0.1", 80).reason == "loopback"


def test_ipv6_deny_of_a_translation_prefix() -> None:
    policy = EgressPolicy(deny=["2002::/16"], allow=["8.8.8.8/32"])
    assert policy.check(six_to_four(v4("8.8.8.8")), 80).reason == "operator-deny"
    assert policy.check("8.8.8.8", 80) == ALLOWED
    assert policy.check(mapped(v4("8.8.8.8")), 80) == ALLOWED


def test_mapped_rule_covers_plain_ipv4() -> None:
    policy = EgressPolicy(deny=["::ffff:8.8.8.0/120"], allow=["::ffff:127.0.0.1/128"])
    assert policy.check("8.8.8.8", 80).reason == "operator-deny"
    assert policy.check("8.8.9.8", 80) == ALLOWED
    assert policy.check("127.0.0.1", 80) == ALLOWED
    assert policy.check("127.0.0.2", 80).reason == "loopback"


def test_only_restricts_and_allow_overrides_it() -> None:
    policy = EgressPolicy(only=["10.0.0.0/8", "2a00::/16"], allow=["127.0.0.0/8"])
    assert policy.check("8.8.8.8", 80).reason == "not-in-only"
    assert policy.check("10.0.0.1", 80).reason == "private"  # only does not lift built-ins
    assert policy.check("127.0.0.1", 80) == ALLOWED
    assert policy.check("2a00:1450::1", 80) == ALLOWED
    assert policy.check("2a01::1", 80).reason == "not-in-only"
    assert policy.check("::ffff:8.8.8.8", 80).reason == "not-in-only"


def test_only_given_as_ipv6_translation_prefix() -> None:
    policy = EgressPolicy(only=["64:ff9b::/96"])
    assert policy.check("64:ff9b::808:808", 80) == ALLOWED
    assert policy.check("64:ff9b::7f00:1", 80).reason == "loopback"
    assert policy.check("8.8.8.8", 80).reason == "not-in-only"


def test_empty_only_refuses_everything() -> None:
    policy = EgressPolicy(only=[])
    assert policy.check("8.8.8.8", 80).reason == "not-in-only"
    assert policy.check("2001:4860::1", 80).reason == "not-in-only"


def test_operator_networks_as_objects() -> None:
    policy = EgressPolicy(deny=[IPv4Network("1.1.1.0/24"), IPv6Network("2606:4700::/32")])
    assert policy.check(IPv4Address("1.1.1.1"), 80).reason == "operator-deny"
    assert policy.check(IPv6Address("2606:4700::1111"), 80).reason == "operator-deny"


@pytest.mark.parametrize(
    "bad", ["10.0.0.1/8", "10.0.0.0/33", "banana", "", "::1/129", "10.0.0.0/8,10.1.0.0/16"]
)
def test_bad_operator_network_is_one_line_config_error(bad: str) -> None:
    for kwargs in ({"allow": [bad]}, {"deny": [bad]}):
        with pytest.raises(ConfigError) as caught:
            EgressPolicy.from_options(**kwargs)
        message = str(caught.value)
        assert "\n" not in message
        assert repr(bad) in message
    with pytest.raises(ConfigError):
        EgressPolicy(only=[bad])


def test_host_bits_error_suggests_the_network() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 10\.0\.0\.0/8\?"):
        EgressPolicy.from_options(allow=["10.0.0.1/8"])


# -- ports ---------------------------------------------------------------------


def test_smtp_denied_by_default() -> None:
    assert DEFAULT.check("8.8.8.8", 25) == Decision(False, "port-denied")
    assert DEFAULT.check("8.8.8.8", 24) == ALLOWED
    assert DEFAULT.check("8.8.8.8", 26) == ALLOWED
    assert DEFAULT.check_port(25) == Decision(False, "port-denied")
    assert DEFAULT.check_port(443) == ALLOWED
    assert EgressPolicy.from_options().check("8.8.8.8", 25).reason == "port-denied"


def test_port_rule_comes_before_address_rules() -> None:
    policy = EgressPolicy(allow=["127.0.0.0/8"])
    assert policy.check("127.0.0.1", 25).reason == "port-denied"
    assert policy.check("not an address", 25).reason == "port-denied"


def test_deny_port_ranges() -> None:
    policy = EgressPolicy(deny_ports=[25, (6660, 6669)])
    assert policy.check_port(6659) == ALLOWED
    assert policy.check_port(6660).reason == "port-denied"
    assert policy.check_port(6665).reason == "port-denied"
    assert policy.check_port(6669).reason == "port-denied"
    assert policy.check_port(6670) == ALLOWED
    assert policy.check_port(25).reason == "port-denied"


def test_empty_deny_ports_allows_smtp() -> None:
    assert EgressPolicy(deny_ports=()).check("8.8.8.8", 25) == ALLOWED
    assert EgressPolicy.from_options(deny_ports=[]).check_port(25) == ALLOWED


def test_allow_ports_and_deny_wins() -> None:
    policy = EgressPolicy(allow_ports=[80, 443, (5222, 5223), 25])
    assert policy.check_port(80) == ALLOWED
    assert policy.check_port(81).reason == "port-denied"
    assert policy.check_port(442).reason == "port-denied"
    assert policy.check_port(443) == ALLOWED
    assert policy.check_port(5222) == ALLOWED
    assert policy.check_port(5223) == ALLOWED
    assert policy.check_port(5224).reason == "port-denied"
    assert policy.check_port(25).reason == "port-denied"  # still in deny_ports
    assert policy.check("149.154.167.50", 8080).reason == "port-denied"


def test_ports_from_options_as_text() -> None:
    policy = EgressPolicy.from_options(allow_ports=["443", "1000-2000"], deny_ports=["1500"])
    assert policy.check_port(443) == ALLOWED
    assert policy.check_port(1000) == ALLOWED
    assert policy.check_port(1499) == ALLOWED
    assert policy.check_port(1500).reason == "port-denied"
    assert policy.check_port(2000) == ALLOWED
    assert policy.check_port(2001).reason == "port-denied"
    assert policy.check_port(25).reason == "port-denied"


@pytest.mark.parametrize("port", [-1, 65536, 1 << 20, -65536])
def test_out_of_range_port_is_refused(port: int) -> None:
    assert DEFAULT.check("8.8.8.8", port).reason == "port-denied"
    assert DEFAULT.check_port(port).reason == "port-denied"


def test_edge_ports() -> None:
    assert DEFAULT.check_port(0) == ALLOWED
    assert DEFAULT.check_port(65535) == ALLOWED


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("25", (25, 25)), ("6660-6669", (6660, 6669)), (" 443 ", (443, 443)), ("0-65535", (0, 65535))],
)
def test_parse_port_spec(spec: str, expected: tuple[int, int]) -> None:
    assert parse_port_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "-",
        "25-",
        "-25",
        "65536",
        "6669-6660",
        "+25",
        "0x19",
        "25 - 26",
        "2 5",
        "٢٥",
        "1-2-3",
        "a",
    ],
)
def test_parse_port_spec_rejects(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_port_spec(spec)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("bad", [[-1], [65536], [(10, 5)], [(0, 70000)]])
def test_bad_port_rules_raise_config_error(bad: list[int | tuple[int, int]]) -> None:
    with pytest.raises(ConfigError):
        EgressPolicy(deny_ports=bad)
    with pytest.raises(ConfigError):
        EgressPolicy(allow_ports=bad)


# -- the telegram preset ---------------------------------------------------------------

TELEGRAM_CIDRS = [
    "91.108.56.0/22",
    "91.108.4.0/22",
    "91.108.8.0/22",
    "91.108.16.0/22",
    "91.108.12.0/22",
    "149.154.160.0/20",
    "91.105.192.0/23",
    "91.108.20.0/22",
    "185.76.151.0/24",
    "2001:b28:f23d::/48",
    "2001:b28:f23f::/48",
    "2001:67c:4e8::/48",
    "2001:b28:f23c::/48",
    "2a0a:f280::/32",
    "95.161.64.0/20",
]

TELEGRAM = EgressPolicy.from_options(only_presets=["telegram"])


def test_shipped_telegram_list() -> None:
    assert sorted(map(str, telegram_networks())) == sorted(TELEGRAM_CIDRS)
    # Callers get their own list.
    telegram_networks().clear()
    assert len(telegram_networks()) == len(TELEGRAM_CIDRS)


@pytest.mark.parametrize(
    "address",
    [
        "149.154.175.50",  # DC1
        "149.154.167.51",  # DC2
        "95.161.76.100",  # DC2 as some clients have it, outside the published list
        "149.154.175.100",  # DC3
        "149.154.167.91",  # DC4
        "91.108.56.130",  # DC5
        "149.154.160.0",
        "149.154.175.255",
        "91.105.192.0",
        "91.105.193.255",
        "185.76.151.1",
        "2001:b28:f23d:f001::a",
        "2001:67c:4e8:f002::a",
        "2001:b28:f23f:f005::a",
        "2a0a:f280:ffff:ffff:ffff:ffff:ffff:ffff",
        "::ffff:149.154.167.50",
        "64:ff9b::959a:a732",  # NAT64 of 149.154.167.50
        "64:ff9b::5fa1:4c64",  # NAT64 of 95.161.76.100
    ],
)
def test_telegram_preset_allows_telegram(address: str) -> None:
    assert TELEGRAM.check(address, 443) == ALLOWED


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "149.154.159.255",
        "149.154.176.0",
        "91.105.191.255",
        "91.105.194.0",
        "95.161.63.255",
        "95.161.80.0",
        "185.76.150.255",
        "185.76.152.0",
        "2001:b28:f23e::1",
        "2a0a:f27f:ffff:ffff:ffff:ffff:ffff:ffff",
        "2a0a:f281::",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "127.0.0.1",
        "10.0.0.1",
    ],
)
def test_telegram_preset_refuses_the_rest(address: str) -> None:
    assert TELEGRAM.check(address, 443) == Decision(False, "not-in-only")


def test_telegram_preset_still_denies_smtp() -> None:
    assert TELEGRAM.check("149.154.167.50", 25).reason == "port-denied"


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match=r"unknown --only preset 'whatsapp'.*telegram"):
        EgressPolicy.from_options(only_presets=["whatsapp"])


def test_preset_name_is_case_insensitive() -> None:
    assert EgressPolicy.from_options(only_presets=["Telegram"]).check("8.8.8.8", 443).reason == (
        "not-in-only"
    )


# -- load_networks -----------------------------------------------------------------

HTML_404 = """<!DOCTYPE html>
<html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body>
</html>
"""


def test_load_networks_rejects_an_html_page() -> None:
    with pytest.raises(ConfigError, match=r"^mirror/cidr\.txt:1: not a CIDR network") as caught:
        load_networks(HTML_404, source="mirror/cidr.txt")
    assert "\n" not in str(caught.value)


def test_load_networks_names_the_bad_line() -> None:
    text = "# comment\n91.108.56.0/22\n\n149.154.160.0/33\n"
    with pytest.raises(ConfigError, match=r"^list:4: .*149\.154\.160\.0/33"):
        load_networks(text, source="list")


@pytest.mark.parametrize(
    "line",
    ["banana", "10.0.0.1/8", "1.2.3.4/33", "2001:db8::/129", "1.2.3.4 5.6.7.8", "<p>", "x" * 500],
)
def test_load_networks_rejects_bad_lines(line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_networks(f"10.0.0.0/8\n{line}\n", source="s")
    message = str(caught.value)
    assert message.startswith("s:2: ")
    assert len(message) < 120


def test_load_networks_accepts_comments_blanks_and_crlf() -> None:
    text = "# Telegram\r\n91.108.56.0/22 # DC5\r\n\r\n   2001:b28:f23d::/48\r\n1.2.3.4\r\n"
    assert load_networks(text, source="s") == [
        ip_network("91.108.56.0/22"),
        ip_network("2001:b28:f23d::/48"),
        ip_network("1.2.3.4/32"),
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_load_networks_rejects_an_empty_list(text: str) -> None:
    with pytest.raises(ConfigError, match="no networks"):
        load_networks(text, source="s")


# -- properties -------------------------------------------------------------------

POLICIES = [
    DEFAULT,
    EgressPolicy(allow=["127.0.0.0/8", "10.9.0.0/16"], deny=["8.8.0.0/16", "10.9.9.0/24"]),
    TELEGRAM,
    EgressPolicy(only=["0.0.0.0/1"], allow=["169.254.169.254/32"]),
]
ipv4_ints = st.integers(min_value=0, max_value=(1 << 32) - 1)


@given(a=ipv4_ints, policy=st.sampled_from(POLICIES))
def test_ipv6_spellings_of_an_ipv4_address_get_its_verdict(a: int, policy: EgressPolicy) -> None:
    expected = policy.check(IPv4Address(a), 443)
    for form in (mapped, nat64, nat64_local, six_to_four, teredo):
        assert policy.check(form(a), 443) == expected, form.__name__
    assert policy.check(str(mapped(a)), 443) == expected
    assert policy.check(str(nat64(a)), 443) == expected
    if a > 1:  # :: and ::1 are IPv6 addresses of their own
        assert policy.check(compatible(a), 443) == expected


@given(
    address=st.ip_addresses(),
    port=st.integers(min_value=0, max_value=65535),
    policy=st.sampled_from(POLICIES),
)
def test_check_never_raises_and_text_agrees(
    address: IPv4Address | IPv6Address, port: int, policy: EgressPolicy
) -> None:
    decision = policy.check(address, port)
    assert isinstance(decision, Decision)
    assert decision.allowed == (decision.reason == "ok")
    assert policy.check(str(address), port) == decision
    if not policy.check_port(port).allowed:
        assert decision.reason == "port-denied"


@given(text=st.text(max_size=60), port=st.integers())
def test_check_never_raises_on_any_text_or_port(text: str, port: int) -> None:
    assert isinstance(DEFAULT.check(text, port), Decision)


near_special = st.sampled_from(SPECIAL_NETWORKS).flatmap(lambda net: st.ip_addresses(network=net))


@given(address=st.one_of(st.ip_addresses(), near_special))
def test_agrees_with_a_linear_scan_of_the_registry(address: IPv4Address | IPv6Address) -> None:
    """The bisect tables give what a slow longest-prefix scan gives."""
    assert verdict(DEFAULT, address) == reference_reason(address)


@given(
    a=ipv4_ints,
    allow=st.lists(st.tuples(ipv4_ints, st.integers(8, 32)), max_size=3),
    deny=st.lists(st.tuples(ipv4_ints, st.integers(8, 32)), max_size=3),
)
def test_operator_rules_agree_with_a_linear_scan(
    a: int, allow: list[tuple[int, int]], deny: list[tuple[int, int]]
) -> None:
    allow_nets = [IPv4Network((n, p), strict=False) for n, p in allow]
    deny_nets = [IPv4Network((n, p), strict=False) for n, p in deny]
    policy = EgressPolicy(allow=allow_nets, deny=deny_nets)
    address = IPv4Address(a)
    if any(address in n for n in deny_nets):
        expected = "operator-deny"
    elif any(address in n for n in allow_nets):
        expected = "ok"
    else:
        expected = DEFAULT.check(address, 443).reason
    assert policy.check(address, 443).reason == expected
    assert policy.check(mapped(a), 443).reason == expected


def test_module_is_pure() -> None:
    """Importing the policy pulls in no socket or event loop (checked in a fresh interpreter)."""
    code = (
        "import sys, resistance.node.policy; "
        "print(sorted(m for m in ('socket', 'asyncio', 'selectors', 'ssl') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
