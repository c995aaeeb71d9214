"""The nftables rules refuse exactly what the node's EgressPolicy refuses (IPv4)."""

from __future__ import annotations

from bisect import bisect_right
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.node.policy import SPECIAL_IPV4, EgressPolicy
from resistance.vpn import firewall


def _refused(ranges: list[tuple[IPv4Address, IPv4Address]], address: int) -> bool:
    starts = [int(lo) for lo, _ in ranges]
    i = bisect_right(starts, address) - 1
    return i >= 0 and address <= int(ranges[i][1])


DEFAULT = EgressPolicy()
DEFAULT_RANGES = firewall.refused_ipv4(DEFAULT)
ALLOWING = EgressPolicy(allow=["198.18.5.0/24", "10.1.0.0/16"], deny=["8.8.8.0/24"])
ALLOWING_RANGES = firewall.refused_ipv4(
    ALLOWING, [IPv4Network(n) for n in ("198.18.5.0/24", "10.1.0.0/16", "8.8.8.0/24")]
)

edges = st.sampled_from(
    [int(IPv4Network(c).network_address) + d for c, _ in SPECIAL_IPV4 for d in (-1, 0, 1)]
    + [int(IPv4Network(c).broadcast_address) + d for c, _ in SPECIAL_IPV4 for d in (-1, 0, 1)]
).filter(lambda v: 0 <= v < 2**32)
addresses = st.one_of(st.integers(0, 2**32 - 1), edges)


@given(addresses)
@settings(max_examples=500)
def test_default_rules_match_the_policy(address: int) -> None:
    allowed = DEFAULT.check(IPv4Address(address), 443).allowed
    assert _refused(DEFAULT_RANGES, address) == (not allowed)


@given(
    st.one_of(
        addresses, st.integers(int(IPv4Address("10.0.255.0")), int(IPv4Address("10.2.0.255")))
    )
)
@settings(max_examples=500)
def test_operator_rules_match_the_policy(address: int) -> None:
    allowed = ALLOWING.check(IPv4Address(address), 443).allowed
    assert _refused(ALLOWING_RANGES, address) == (not allowed)


def test_ruleset_names_the_dangerous_ranges_and_smtp() -> None:
    script = firewall.ruleset(
        interface="wg-resist",
        subnet=IPv4Network("10.66.0.0/24"),
        server_address=IPv4Address("10.66.0.1"),
        policy=DEFAULT,
    )
    for net in ("10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8", "100.64.0.0/10", "192.168.0.0/16"):
        assert net in script
    assert "elements = { 25 }" in script
    assert 'ip saddr 10.66.0.0/24 oifname != "wg-resist" masquerade' in script
    with_dns = firewall.ruleset(
        interface="wg-resist",
        subnet=IPv4Network("10.66.0.0/24"),
        server_address=IPv4Address("10.66.0.1"),
        policy=DEFAULT,
        dns_servers=["10.0.0.2", "10.66.0.1"],
    )
    assert "ip daddr { 10.0.0.2 } meta l4proto { tcp, udp } th dport 53 accept" in with_dns
    assert "ip daddr 10.66.0.1 meta l4proto { tcp, udp } th dport 53 accept" in with_dns
    assert script.startswith(
        "table inet resist_vpn_wg_resist {}\ndelete table inet resist_vpn_wg_resist"
    )
    assert firewall.denied_ports(EgressPolicy(deny_ports=[(6660, 6669), 25])) == [
        (25, 25),
        (6660, 6669),
    ]
