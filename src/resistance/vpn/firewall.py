"""The VPN's nftables table: forwarding, masquerade and the egress policy.

A VPN client must not reach what a SOCKS client of the node may not: the
server's private networks, its loopback, the cloud metadata service, and the
rest of the special-purpose ranges, nor send SMTP.  The rules are generated
from the node's own :class:`EgressPolicy` (built with the operator's
``--allow``/``--deny``), so both services refuse exactly the same IPv4
destinations and ports.  The one exception is port 53 of the DNS servers
the operator hands to clients (``--dns``), which may be a private resolver.

How the ranges are taken from the policy: the policy is constant between
consecutive boundaries of its built-in ranges and of the operator's
networks, so asking ``policy.check`` at every boundary and merging the
refused stretches gives the exact refused set as nftables intervals.  Ports
are taken the same way from ``policy.check_port``.

The tunnel is IPv4 only (clients get no IPv6 address or route through the
server), so IPv6 from clients is dropped outright rather than judged.

Everything lives in one table, ``inet resist_vpn_<interface>``, replaced as a
whole (``nft -f`` of a file that deletes and re-creates it in one
transaction) and deleted by ``resist vpn down``; no other table is touched.
A drop in this table holds whatever other tables accept.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, summarize_address_range
from typing import Final

from resistance.node.policy import SPECIAL_IPV4, EgressPolicy

_TOP4: Final = (1 << 32) - 1


def table_name(interface: str) -> str:
    return "resist_vpn_" + "".join(c if c.isalnum() else "_" for c in interface)


def refused_ipv4(
    policy: EgressPolicy, extra: Iterable[IPv4Network] = ()
) -> list[tuple[IPv4Address, IPv4Address]]:
    """The IPv4 destinations ``policy`` refuses, as merged inclusive ranges.

    ``extra`` lists the operator's networks: their edges are boundaries of
    the policy too.
    """
    cuts = {0}
    for net in [IPv4Network(cidr) for cidr, _ in SPECIAL_IPV4] + list(extra):
        cuts.add(int(net.network_address))
        if int(net.broadcast_address) < _TOP4:
            cuts.add(int(net.broadcast_address) + 1)
    ordered = sorted(cuts)
    ranges: list[tuple[int, int]] = []
    for i, start in enumerate(ordered):
        end = ordered[i + 1] - 1 if i + 1 < len(ordered) else _TOP4
        # Any open port: only the address decides here (ports are a separate rule).
        if policy.check(IPv4Address(start), 443).allowed:
            continue
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return [(IPv4Address(lo), IPv4Address(hi)) for lo, hi in ranges]


def denied_ports(policy: EgressPolicy) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for port in range(65536):
        if policy.check_port(port).allowed:
            continue
        if ranges and ranges[-1][1] + 1 == port:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def _interval_elements(ranges: list[tuple[IPv4Address, IPv4Address]]) -> str:
    parts: list[str] = []
    for lo, hi in ranges:
        parts.extend(str(net) for net in summarize_address_range(lo, hi))
    return ", ".join(parts)


def ruleset(
    *,
    interface: str,
    subnet: IPv4Network,
    server_address: IPv4Address,
    policy: EgressPolicy,
    operator_networks: Iterable[IPv4Network] = (),
    dns_servers: Iterable[str] = (),
) -> str:
    """The ``nft -f`` script that (re)creates the VPN's table."""
    table = table_name(interface)
    refused = refused_ipv4(policy, operator_networks)
    ports = denied_ports(policy)
    iif = f'iifname "{interface}"'
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
    ]
    if refused:
        lines += [
            "  set refused4 {",
            "    type ipv4_addr; flags interval",
            f"    elements = {{ {_interval_elements(refused)} }}",
            "  }",
        ]
    if ports:
        elements = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ports)
        lines += [
            "  set denied_ports {",
            "    type inet_service; flags interval",
            f"    elements = {{ {elements} }}",
            "  }",
        ]
    dns = sorted({d for d in dns_servers if ":" not in d} - {str(server_address)})
    dns_on_server = str(server_address) in dns_servers
    forward = [
        f"    {iif} meta nfproto ipv6 drop",
    ]
    if dns:
        # The DNS servers the operator gave clients may sit in private space (a VPC resolver).
        forward.append(
            f"    {iif} ip daddr {{ {', '.join(dns)} }} meta l4proto {{ tcp, udp }} "
            "th dport 53 accept"
        )
    if refused:
        forward.append(f"    {iif} ip daddr @refused4 drop")
    if ports:
        forward.append(f"    {iif} meta l4proto {{ tcp, udp }} th dport @denied_ports drop")
    forward += [
        f"    {iif} accept",
        f'    oifname "{interface}" ct state established,related accept',
        f'    oifname "{interface}" drop',
    ]
    inbound = [
        f"    {iif} ct state established,related accept",
        f"    {iif} ip daddr {server_address} icmp type echo-request accept",
    ]
    if dns_on_server:
        inbound.append(
            f"    {iif} ip daddr {server_address} meta l4proto {{ tcp, udp }} th dport 53 accept"
        )
    inbound.append(f"    {iif} meta nfproto ipv6 drop")
    if refused:
        inbound.append(f"    {iif} ip daddr @refused4 drop")
    lines += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *forward,
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        *inbound,
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    ip saddr {subnet} oifname != "{interface}" masquerade',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def delete_script(interface: str) -> str:
    """Delete the table if it exists (creating an empty one first makes it idempotent)."""
    table = table_name(interface)
    return f"table inet {table} {{}}\ndelete table inet {table}\n"
