"""Where the node may connect to: the egress policy.

A SOCKS5 proxy that dials whatever it is asked to is an open relay into the
operator's private space: the cloud metadata service at 169.254.169.254, the
host's own loopback services, the provider's internal network.  The node
therefore asks :class:`EgressPolicy` about every destination *after* name
resolution (so ``evil.example`` resolving to 127.0.0.1 is refused just like
127.0.0.1) and about every UDP datagram.  A refusal is answered with SOCKS5
reply code 0x02, "connection not allowed by ruleset" (:data:`REFUSED_REPLY`).

This module is pure: no sockets, no name resolution, no event loop.

Theory of operation
-------------------
``check(address, port)`` decides in this order:

1. the port: outside ``allow_ports`` (when given) or inside ``deny_ports``
   (SMTP 25 by default, so the node does not become a spam relay) is refused
   as ``"port-denied"``;
2. the operator's ``deny`` networks are refused as ``"operator-deny"``;
3. the operator's ``allow`` networks are allowed, overriding everything below
   (``--allow 127.0.0.0/8`` is how tests let a node reach loopback);
4. with ``only`` set, anything outside it is refused as ``"not-in-only"``
   (``--only telegram`` restricts the node to Telegram's published ranges);
5. the built-in special-purpose ranges below are refused with a short reason;
6. everything else is allowed (``"ok"``).

IPv6 addresses that carry an IPv4 destination are judged by that IPv4
address, so that no IPv6 spelling reaches what the IPv4 one may not:
IPv4-mapped ``::ffff:a.b.c.d`` and IPv4-compatible ``::a.b.c.d`` (a
dual-stack socket or the kernel's automatic tunnel dials a.b.c.d), NAT64
``64:ff9b::/96`` and the local-use ``64:ff9b:1::/48`` (RFC 6052, RFC 8215; the
IPv4 address is taken from the last 32 bits, the /96 format every deployed
translator uses), 6to4 ``2002:VVVV:VVVV::/48`` (RFC 3056) and Teredo
``2001::/32`` with its obfuscated client address in the last 32 bits
(RFC 4380).  Operator rules apply to both spellings: ``allow`` or ``deny`` of
127.0.0.0/8 also covers ``::ffff:127.0.0.1``, and a rule written as an
IPv4-mapped IPv6 network also covers the plain IPv4 form.  IPv6 rules still
apply to the IPv6 spelling (``--deny 2002::/16`` refuses all of 6to4), and a
deny of either spelling wins over an allow of the other.

The built-in ranges
-------------------
They follow the IANA "IPv4 Special-Purpose Address Registry" and "IPv6
Special-Purpose Address Registry" (RFC 6890 and its updates, as published in
2025), plus the IPv4 multicast block and the IANA "IPv6 Address Space"
registry, because the question the node asks is the registries' own column
"Globally Reachable": a public proxy has no business reaching a destination
that is not.  Every entry marked *False* is refused; entries marked *True*
inside a refused block (the PCP/TURN/DNS-SD anycast addresses, AMT, AS112,
ORCHIDv2, drone DETs) are carved out and allowed; the address-translation
entries marked *N/A* are judged by their embedded IPv4 address as above.

IPv4:

* ``this-network`` 0.0.0.0/8 -- "this host on this network"; Linux dials
  0.0.0.0 as loopback.
* ``private`` 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 -- RFC 1918, the
  operator's and the provider's internal networks.
* ``cgnat`` 100.64.0.0/10 -- RFC 6598 shared address space behind carrier NAT,
  also used by VPN overlays (Tailscale) and some clouds internally.
* ``loopback`` 127.0.0.0/8 -- services on the node's own host.
* ``link-local`` 169.254.0.0/16 -- includes the cloud metadata service
  169.254.169.254 that hands out instance credentials.
* ``reserved`` 192.0.0.0/24 (IETF protocol assignments, except the globally
  reachable anycast 192.0.0.9 and 192.0.0.10), 192.88.99.0/24 (deprecated 6to4
  relay anycast), 240.0.0.0/4 (reserved for future use).
* ``documentation`` 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 -- never
  routed; a request for them is a probe or a mistake.
* ``benchmarking`` 198.18.0.0/15 -- lab networks, often internal in practice.
* ``multicast`` 224.0.0.0/4 -- not a unicast destination; would let a client
  talk to local-segment services.
* ``broadcast`` 255.255.255.255 -- limited broadcast reaches the local segment.

IPv6:

* ``reserved`` everything outside global unicast 2000::/3 not listed below
  (the IANA IPv6 Address Space registry reserves it to the IETF; this takes in
  100::/64 discard-only, 100:0:0:1::/64 dummy prefix, 5f00::/16 SRv6 SIDs and
  the deprecated site-local fec0::/10), 2001::/23 IETF protocol assignments
  (including the deprecated ORCHID 2001:10::/28) except its globally reachable
  sub-blocks named above.
* ``unspecified`` ::/128, ``loopback`` ::1/128.
* ``benchmarking`` 2001:2::/48; ``documentation`` 2001:db8::/32, 3fff::/20.
* ``unique-local`` fc00::/7 -- the IPv6 counterpart of RFC 1918; includes
  the IPv6 cloud metadata endpoint fd00:ec2::254.
* ``link-local`` fe80::/10 and ``multicast`` ff00::/8, as for IPv4.

How it is fast
--------------
``check`` runs for every CONNECT and every UDP datagram, so nothing is scanned
at check time.  The constructor cuts each address family into disjoint
integer intervals on which every rule gives the same answer and stores, per
interval, the final :class:`Decision` (or, for the IPv6 translation ranges,
how to extract the embedded IPv4 address).  A check is one ``bisect`` over a
sorted list of interval starts plus a list index; decisions are shared
constants, so no check allocates.  Parsing of address strings is cached.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Final, TypeAlias

from resistance.errors import ConfigError

__all__ = [
    "ALLOWED",
    "REFUSED_REPLY",
    "SPECIAL_IPV4",
    "SPECIAL_IPV6",
    "Decision",
    "EgressPolicy",
    "PortRange",
    "load_networks",
    "parse_port_spec",
    "telegram_networks",
]

Network: TypeAlias = IPv4Network | IPv6Network
NetworkLike: TypeAlias = str | IPv4Network | IPv6Network
PortRange: TypeAlias = tuple[int, int]
PortLike: TypeAlias = int | PortRange

REFUSED_REPLY: Final = 0x02
"""SOCKS5 reply code for every refusal: "connection not allowed by ruleset"."""

_MAX_PORT: Final = 0xFFFF
_V4_BITS: Final = 32
_V6_BITS: Final = 128
_LOW32: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one destination.

    ``reason`` is a short constant string, safe to use as a metric label and
    free of any address: ``"ok"`` when allowed, otherwise what refused it.
    """

    allowed: bool
    reason: str


ALLOWED: Final = Decision(True, "ok")
_PORT_DENIED: Final = Decision(False, "port-denied")
_OPERATOR_DENY: Final = Decision(False, "operator-deny")
_NOT_IN_ONLY: Final = Decision(False, "not-in-only")
_INVALID_ADDRESS: Final = Decision(False, "invalid-address")

# --------------------------------------------------------------------------
# Built-in special-purpose ranges (see the module docstring for the why).
# Longest prefix wins, as in routing: a carve-out (reason None) inside a
# refused block allows its addresses again.

# How the IPv4 destination is embedded in an IPv6 address.
_PLAIN: Final = 0  # not a translation form
_LOW_BITS: Final = 1  # ::ffff:a.b.c.d, ::a.b.c.d, NAT64 /96: the last 32 bits
_SIX_TO_FOUR: Final = 2  # 2002:VVVV:VVVV::/48: bits 16..47
_TEREDO: Final = 3  # 2001:0:SSSS:SSSS:FFFF:PPPP:CCCC:CCCC: client = ~CCCCCCCC

SPECIAL_IPV4: Final[tuple[tuple[str, str | None], ...]] = (
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.0.9/32", None),  # Port Control Protocol anycast, globally reachable
    ("192.0.0.10/32", None),  # TURN anycast, globally reachable
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
)
"""IPv4 special-purpose networks and the reason they are refused (None: allowed)."""

SPECIAL_IPV6: Final[tuple[tuple[str, str | None, int], ...]] = (
    ("::/0", "reserved", _PLAIN),  # all that is not global unicast ...
    ("2000::/3", None, _PLAIN),  # ... and global unicast
    ("::/128", "unspecified", _PLAIN),
    ("::1/128", "loopback", _PLAIN),
    ("::/96", None, _LOW_BITS),  # IPv4-compatible (deprecated)
    ("::ffff:0:0/96", None, _LOW_BITS),  # IPv4-mapped
    ("64:ff9b::/96", None, _LOW_BITS),  # NAT64 well-known prefix
    ("64:ff9b:1::/48", None, _LOW_BITS),  # NAT64 local-use prefix
    ("100::/64", "reserved", _PLAIN),  # discard-only
    ("2001::/23", "reserved", _PLAIN),  # IETF protocol assignments
    ("2001::/32", None, _TEREDO),
    ("2001:1::1/128", None, _PLAIN),  # PCP anycast
    ("2001:1::2/128", None, _PLAIN),  # TURN anycast
    ("2001:1::3/128", None, _PLAIN),  # DNS-SD service registration anycast
    ("2001:2::/48", "benchmarking", _PLAIN),
    ("2001:3::/32", None, _PLAIN),  # AMT
    ("2001:4:112::/48", None, _PLAIN),  # AS112-v6
    ("2001:10::/28", "reserved", _PLAIN),  # deprecated ORCHID
    ("2001:20::/28", None, _PLAIN),  # ORCHIDv2
    ("2001:30::/28", None, _PLAIN),  # drone remote ID DETs
    ("2001:db8::/32", "documentation", _PLAIN),
    ("2002::/16", None, _SIX_TO_FOUR),
    ("3fff::/20", "documentation", _PLAIN),
    ("5f00::/16", "reserved", _PLAIN),  # SRv6 SIDs
    ("fc00::/7", "unique-local", _PLAIN),
    ("fe80::/10", "link-local", _PLAIN),
    ("fec0::/10", "reserved", _PLAIN),  # deprecated site-local
    ("ff00::/8", "multicast", _PLAIN),
)
"""IPv6 special-purpose networks: reason refused (None: allowed) and embedding."""


def _span(net: Network) -> tuple[int, int]:
    return int(net.network_address), int(net.broadcast_address)


@dataclass(frozen=True, slots=True)
class _Builtin:
    """The built-in ranges of one family as a partition: start -> (reason, embedding)."""

    starts: list[int]
    values: list[tuple[str | None, int]]

    @classmethod
    def build(cls, entries: Sequence[tuple[Network, str | None, int]], top: int) -> _Builtin:
        cuts = {0}
        for net, _, _ in entries:
            lo, hi = _span(net)
            cuts.add(lo)
            if hi < top:
                cuts.add(hi + 1)
        by_length = sorted(entries, key=lambda e: e[0].prefixlen, reverse=True)
        starts: list[int] = []
        values: list[tuple[str | None, int]] = []
        for cut in sorted(cuts):
            value: tuple[str | None, int] = (None, _PLAIN)
            for net, reason, embedding in by_length:
                lo, hi = _span(net)
                if lo <= cut <= hi:
                    value = (reason, embedding)
                    break
            if not values or values[-1] != value:
                starts.append(cut)
                values.append(value)
        return cls(starts, values)

    def at(self, address: int) -> tuple[str | None, int]:
        return self.values[bisect_right(self.starts, address) - 1]


_BUILTIN_V4: Final = _Builtin.build(
    [(IPv4Network(cidr), reason, _PLAIN) for cidr, reason in SPECIAL_IPV4], (1 << _V4_BITS) - 1
)
_BUILTIN_V6: Final = _Builtin.build(
    [(IPv6Network(cidr), reason, embedding) for cidr, reason, embedding in SPECIAL_IPV6],
    (1 << _V6_BITS) - 1,
)
_REFUSALS: Final[dict[str, Decision]] = {
    reason: Decision(False, reason)
    for reason in {r for _, r in SPECIAL_IPV4} | {r for _, r, _ in SPECIAL_IPV6}
    if reason is not None
}


class _IntervalSet:
    """A union of networks of one family, as sorted disjoint integer intervals."""

    __slots__ = ("ends", "starts")

    def __init__(self, nets: Iterable[Network]) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for lo, hi in sorted(_span(net) for net in nets):
            if self.ends and lo <= self.ends[-1] + 1:
                self.ends[-1] = max(self.ends[-1], hi)
            else:
                self.starts.append(lo)
                self.ends.append(hi)

    def __contains__(self, address: int) -> bool:
        i = bisect_right(self.starts, address) - 1
        return i >= 0 and address <= self.ends[i]

    def cuts(self, top: int) -> set[int]:
        return set(self.starts) | {hi + 1 for hi in self.ends if hi < top}


@dataclass(frozen=True, slots=True)
class _Embedded:
    """A v6 interval that is judged by its embedded IPv4 address.

    ``allow`` and ``only`` say whether the operator's IPv6 rules cover the
    IPv6 spelling itself (a covering IPv6 deny is stored as a plain refusal).
    """

    embedding: int
    allow: bool
    only: bool


@dataclass(frozen=True, slots=True)
class _V4Cell:
    """What each rule says on one IPv4 interval (needed to judge embeddings)."""

    deny: bool
    allow: bool
    only: bool
    builtin: Decision | None


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[bool, int] | None:
    """Parse an address string: (is IPv6, integer value), or None when invalid."""
    try:
        parsed = ip_address(text)
    except ValueError:
        return None
    return isinstance(parsed, IPv6Address), int(parsed)


class EgressPolicy:
    """Decides whether the node may open a connection or send a datagram.

    Built once from the operator's settings; immutable afterwards, so one
    instance is shared by every connection.  See the module docstring for the
    order in which rules apply and for the built-in ranges.
    """

    __slots__ = ("_ports", "_v4_cells", "_v4_decisions", "_v4_starts", "_v6", "_v6_starts")

    def __init__(
        self,
        *,
        allow: Iterable[NetworkLike] = (),
        deny: Iterable[NetworkLike] = (),
        allow_ports: Iterable[PortLike] | None = None,
        deny_ports: Iterable[PortLike] = (25,),
        only: Iterable[NetworkLike] | None = None,
    ) -> None:
        allow4, allow6 = _split_families(allow, "allow")
        deny4, deny6 = _split_families(deny, "deny")
        if only is None:
            only4: _IntervalSet | None = None
            only6: _IntervalSet | None = None
        else:
            only4, only6 = _split_families(only, "only")
        self._ports = _port_table(allow_ports, deny_ports)
        self._build_v4(allow4, deny4, only4)
        self._build_v6(allow6, deny6, only6)

    @classmethod
    def from_options(
        cls,
        *,
        allow: Iterable[NetworkLike] = (),
        deny: Iterable[NetworkLike] = (),
        allow_ports: Iterable[PortLike | str] | None = None,
        deny_ports: Iterable[PortLike | str] | None = None,
        only_presets: Iterable[str] = (),
    ) -> EgressPolicy:
        """Build a policy from command-line style options.

        Ports may be given as ``"25"`` or ``"6660-6669"``.  ``deny_ports=None``
        keeps the default (SMTP 25); a given list replaces it.  ``only_presets``
        names destination sets (``"telegram"``); several are joined.  Any bad
        value raises :class:`ConfigError` with a one-line message.
        """
        only: list[Network] | None = None
        for preset in only_presets:
            loader = _PRESETS.get(preset.strip().lower())
            if loader is None:
                known = ", ".join(sorted(_PRESETS))
                raise ConfigError(f"unknown --only preset {preset!r} (known: {known})")
            only = (only or []) + loader()
        return cls(
            allow=allow,
            deny=deny,
            allow_ports=None if allow_ports is None else _ports_from_options(allow_ports),
            deny_ports=(25,) if deny_ports is None else _ports_from_options(deny_ports),
            only=only,
        )

    def check(self, address: IPv4Address | IPv6Address | str, port: int) -> Decision:
        """Decide on one destination: an IP address (never a name) and a port."""
        if not 0 <= port <= _MAX_PORT or self._ports[port]:
            return _PORT_DENIED
        if isinstance(address, IPv4Address):
            value = int(address)
        elif isinstance(address, IPv6Address):
            return self._check_v6(int(address))
        else:
            parsed = _parse(address)
            if parsed is None:
                return _INVALID_ADDRESS
            is_v6, value = parsed
            if is_v6:
                return self._check_v6(value)
        return self._v4_decisions[bisect_right(self._v4_starts, value) - 1]

    def check_port(self, port: int) -> Decision:
        """Decide on the port alone, e.g. before resolving a name."""
        if not 0 <= port <= _MAX_PORT or self._ports[port]:
            return _PORT_DENIED
        return ALLOWED

    # -- internals ---------------------------------------------------------

    def _check_v6(self, value: int) -> Decision:
        entry = self._v6[bisect_right(self._v6_starts, value) - 1]
        if isinstance(entry, Decision):
            return entry
        embedding = entry.embedding
        if embedding == _LOW_BITS:
            v4 = value & _LOW32
        elif embedding == _SIX_TO_FOUR:
            v4 = (value >> 80) & _LOW32
        else:
            v4 = (value & _LOW32) ^ _LOW32
        i = bisect_right(self._v4_starts, v4) - 1
        if not (entry.allow or entry.only):
            return self._v4_decisions[i]
        cell = self._v4_cells[i]
        if cell.deny:
            return _OPERATOR_DENY
        if entry.allow or cell.allow:
            return ALLOWED
        # Here the IPv6 spelling lies inside ``only``: only the built-ins remain.
        return cell.builtin or ALLOWED

    def _build_v4(self, allow: _IntervalSet, deny: _IntervalSet, only: _IntervalSet | None) -> None:
        top = (1 << _V4_BITS) - 1
        cuts = set(_BUILTIN_V4.starts) | allow.cuts(top) | deny.cuts(top)
        if only is not None:
            cuts |= only.cuts(top)
        self._v4_starts: list[int] = []
        self._v4_decisions: list[Decision] = []
        self._v4_cells: list[_V4Cell] = []
        for cut in sorted(cuts):
            reason, _ = _BUILTIN_V4.at(cut)
            cell = _V4Cell(
                deny=cut in deny,
                allow=cut in allow,
                only=only is None or cut in only,
                builtin=None if reason is None else _REFUSALS[reason],
            )
            if self._v4_cells and self._v4_cells[-1] == cell:
                continue
            self._v4_starts.append(cut)
            self._v4_cells.append(cell)
            self._v4_decisions.append(_decide(cell.deny, cell.allow, cell.only, cell.builtin))

    def _build_v6(self, allow: _IntervalSet, deny: _IntervalSet, only: _IntervalSet | None) -> None:
        top = (1 << _V6_BITS) - 1
        cuts = set(_BUILTIN_V6.starts) | allow.cuts(top) | deny.cuts(top)
        if only is not None:
            cuts |= only.cuts(top)
        self._v6_starts: list[int] = []
        self._v6: list[Decision | _Embedded] = []
        for cut in sorted(cuts):
            reason, embedding = _BUILTIN_V6.at(cut)
            in_deny, in_allow = cut in deny, cut in allow
            entry: Decision | _Embedded
            if embedding == _PLAIN:
                builtin = None if reason is None else _REFUSALS[reason]
                in_only = only is None or cut in only
                entry = _decide(in_deny, in_allow, in_only, builtin)
            elif in_deny:
                entry = _OPERATOR_DENY
            else:
                entry = _Embedded(embedding, in_allow, only is not None and cut in only)
            if self._v6 and self._v6[-1] == entry:
                continue
            self._v6_starts.append(cut)
            self._v6.append(entry)


def _decide(deny: bool, allow: bool, only: bool, builtin: Decision | None) -> Decision:
    if deny:
        return _OPERATOR_DENY
    if allow:
        return ALLOWED
    if not only:
        return _NOT_IN_ONLY
    return builtin or ALLOWED


# --------------------------------------------------------------------------
# Networks and ports from configuration.

_MAPPED: Final = IPv6Network("::ffff:0:0/96")


def _to_network(value: NetworkLike, what: str) -> Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    text = value.strip()
    try:
        return ip_network(text)
    except ValueError as exc:
        hint = ""
        try:
            hint = f"; did you mean {ip_network(text, strict=False)}?"
        except ValueError:
            pass
        raise ConfigError(f"{what}: {value!r} is not a CIDR network ({exc}){hint}") from None


def _split_families(values: Iterable[NetworkLike], what: str) -> tuple[_IntervalSet, _IntervalSet]:
    """Coerce operator networks; an IPv4-mapped IPv6 rule also covers plain IPv4."""
    v4: list[Network] = []
    v6: list[Network] = []
    for value in values:
        net = _to_network(value, what)
        if isinstance(net, IPv4Network):
            v4.append(net)
            continue
        v6.append(net)
        if net.prefixlen >= _MAPPED.prefixlen and net.subnet_of(_MAPPED):
            lo = int(net.network_address) & _LOW32
            v4.append(IPv4Network((lo, net.prefixlen - _MAPPED.prefixlen)))
    return _IntervalSet(v4), _IntervalSet(v6)


_PORT_SPEC: Final = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?", re.ASCII)


def parse_port_spec(spec: str) -> PortRange:
    """Parse ``"25"`` or ``"6660-6669"`` into an inclusive (low, high) range."""
    match = _PORT_SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f"bad port {spec!r}: expected a port like 25 or a range like 6660-6669")
    low = int(match[1])
    high = low if match[2] is None else int(match[2])
    return _check_range((low, high), spec)


def _check_range(port_range: PortRange, shown: object) -> PortRange:
    low, high = port_range
    if not (0 <= low <= _MAX_PORT and 0 <= high <= _MAX_PORT):
        raise ConfigError(f"bad port {shown!r}: ports are 0..{_MAX_PORT}")
    if low > high:
        raise ConfigError(f"bad port range {shown!r}: {low} is above {high}")
    return port_range


def _port_range(value: PortLike) -> PortRange:
    if isinstance(value, tuple):
        return _check_range(value, value)
    return _check_range((value, value), value)


def _ports_from_options(values: Iterable[PortLike | str]) -> list[PortRange]:
    return [parse_port_spec(v) if isinstance(v, str) else _port_range(v) for v in values]


def _port_table(allow: Iterable[PortLike] | None, deny: Iterable[PortLike]) -> bytearray:
    """One byte per port, non-zero when refused: a check is a single index."""
    table = bytearray(_MAX_PORT + 1)
    if allow is not None:
        table = bytearray(b"\x01" * (_MAX_PORT + 1))
        for value in allow:
            low, high = _port_range(value)
            table[low : high + 1] = bytes(high - low + 1)
    for value in deny:
        low, high = _port_range(value)
        table[low : high + 1] = b"\x01" * (high - low + 1)
    return table


# --------------------------------------------------------------------------
# Network lists and presets.


def load_networks(text: str, *, source: str) -> list[Network]:
    """Parse a list of CIDR networks, one per line; ``#`` starts a comment.

    Every line is validated: a bad line (or a list with no networks at all)
    raises :class:`ConfigError` naming ``source`` and the line, so that a
    mirror that saved an HTML error page as the list stops the node instead
    of silently narrowing or widening what it reaches.
    """
    networks: list[Network] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            networks.append(ip_network(line))
        except ValueError:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise ConfigError(f"{source}:{number}: not a CIDR network: {shown!r}") from None
    if not networks:
        raise ConfigError(f"{source}: no networks in the list")
    return networks


@cache
def _telegram_networks() -> tuple[Network, ...]:
    resource = resources.files("resistance").joinpath("data").joinpath("telegram_cidr.txt")
    return tuple(load_networks(resource.read_text(encoding="utf-8"), source=str(resource)))


def telegram_networks() -> list[Network]:
    """Telegram's published ranges (core.telegram.org/resources/cidr.txt) and DC2's network."""
    return list(_telegram_networks())


_PRESETS: Final[dict[str, Callable[[], list[Network]]]] = {
    "telegram": telegram_networks,
}
