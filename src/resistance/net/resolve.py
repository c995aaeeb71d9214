"""Endpoints by DNS name: what a name is, resolving it (bounded), and pinning an address.

A proxy may be registered by name (``proxy.example.net``) instead of an IP
literal.  The registry resolves the name when the operator registers, checks
every address it gets against its endpoint policy, proves control at those
addresses and keeps the ones proven.  A probe resolves the name again for
each measurement and *pins* one address for the whole measurement (every
connection of the check, its controls and its other transports dial that one
address, so a record changing mid-check cannot mix two servers): the first
address it resolved that is also a proven one.  When the name no longer
resolves to any proven address the probe dials nothing and records a failed
measurement naming what the name resolved to: an operator who moves the name
registers again, and the new address is proven before it counts.  From
inside a censored network, a poisoned answer (a sinkhole address) therefore
fails the inside vantages only: the verdict is "blocked", which is what the
name's users there see.

Resolution goes through a :data:`Resolver`, an async function from a name to
its addresses, so tests inject their own and never resolve real names.
:func:`system_resolver` is the default: the host's ``getaddrinfo``.
:class:`NameServerResolver` asks one DNS server of the operator's choice
(``--dns HOST:PORT``): a probe inside a censored network pointed at the
local ISP's resolver sees the answers its users get, poisoned or not.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from resistance.config import Endpoint, parse_endpoint
from resistance.errors import ConfigError, ResistanceError

#: An async function from a DNS name to its addresses (text, in the order given).
Resolver = Callable[[str], Awaitable[Sequence[str]]]

#: Addresses kept from one resolution: a name with more is cut to the first ones.
MAX_ADDRESSES: Final = 8
MAX_NAME: Final = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class ResolveError(ResistanceError):
    """A name that did not resolve (in time, or at all); the message says why."""


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_name(text: str) -> str:
    """A DNS host name in its canonical form (lower case, no final dot); ``ValueError``
    says why ``text`` is not one.  Internationalized names are given in their ASCII
    (``xn--``) form; a name whose last label is all digits is refused (it would read
    as a mistyped IPv4 address)."""
    name = text.lower().removesuffix(".")
    if not name or len(name) > MAX_NAME or not name.isascii():
        raise ValueError(f"a host name has 1-{MAX_NAME} ASCII characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError("a host name has at least two labels (name.tld)")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(
                f"label {label[:63]!r}: 1-63 letters, digits or hyphens, no hyphen at either end"
            )
    if labels[-1].isdigit():
        raise ValueError("the last label of a host name is not all digits")
    return name


async def system_resolver(name: str) -> list[str]:
    """The host's resolver (``getaddrinfo``): every address, IPv4 and IPv6, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]).partition("%")[0] for info in infos]


def dns_server(text: str) -> Endpoint:
    """``--dns``'s value: an IP literal, with a port (53 if none); :class:`ConfigError`."""
    endpoint = parse_endpoint(text, what="DNS server", default_port=53)
    if not is_ip_literal(endpoint.host):
        raise ConfigError(f"the DNS server is given by address, not {endpoint.host!r}")
    return endpoint


class NameServerResolver:
    """A :data:`Resolver` asking one DNS server for A and AAAA records (UDP, TCP when the
    answer is truncated; CNAME chains followed), never the host's configuration."""

    __slots__ = ("host", "lifetime", "port")

    def __init__(self, host: str, port: int = 53, *, lifetime: float = 5.0) -> None:
        self.host, self.port, self.lifetime = host, port, lifetime

    async def __call__(self, name: str) -> list[str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = self.lifetime

        async def ask(kind: str) -> list[str]:
            try:
                answer = await resolver.resolve(name, kind, search=False)
            except dns.resolver.NoAnswer:
                return []
            return [str(record.address) for record in answer]

        try:
            found = await asyncio.gather(ask("A"), ask("AAAA"))
        except dns.resolver.NXDOMAIN:
            raise socket.gaierror(socket.EAI_NONAME, "no such name") from None
        except dns.exception.Timeout:
            raise TimeoutError from None
        except dns.exception.DNSException as exc:  # SERVFAIL, REFUSED, a bad answer
            raise OSError(f"{type(exc).__name__} from {self.host}:{self.port}") from None
        return [*found[0], *found[1]]


async def resolve_all(
    name: str, resolver: Resolver, *, within: float, limit: int = MAX_ADDRESSES
) -> tuple[str, ...]:
    """Every address ``name`` resolves to (deduplicated, in order, at most ``limit``),
    within ``within`` seconds; raises :class:`ResolveError`."""
    try:
        async with asyncio.timeout(within):
            found = await resolver(name)
    except TimeoutError:
        raise ResolveError(f"{name} did not resolve within {within:g} s") from None
    except OSError as exc:  # socket.gaierror is an OSError
        raise ResolveError(f"{name} does not resolve: {exc.strerror or exc}") from None
    except UnicodeError:  # a label the IDNA codec refuses
        raise ResolveError(f"{name} is not a name the resolver takes") from None
    addresses: list[str] = []
    for text in found:
        try:
            address = str(ipaddress.ip_address(text))
        except ValueError:
            raise ResolveError(f"{name} resolved to {text[:60]!r}, not an address") from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ResolveError(f"{name} has no address")
    return tuple(addresses[:limit])


def pin(resolved: Sequence[str], proven: Sequence[str]) -> str | None:
    """The address a measurement dials: the first resolved one that is proven, if any."""
    allowed = set(proven)
    return next((address for address in resolved if address in allowed), None)
