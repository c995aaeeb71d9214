"""The DNS-server resolver (``--dns``) against a DNS server the test runs on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resistance.errors import ConfigError
from resistance.net.resolve import NameServerResolver, ResolveError, dns_server, resolve_all
from tests.dns_responder import DnsResponder


@pytest.fixture
def responder() -> Iterator[DnsResponder]:
    server = DnsResponder({
        "dual.example": ["192.0.2.1", "2001:db8::1", "192.0.2.2"],
        "v4.example": ["192.0.2.3"],
        "alias.example": "v4.example",
        "silent.example": None,
    })  # fmt: skip
    yield server
    server.close()


async def test_addresses_of_both_families_come_from_the_chosen_server(
    responder: DnsResponder,
) -> None:
    resolver = NameServerResolver("127.0.0.1", responder.port, lifetime=2)
    found = await resolve_all("dual.example", resolver, within=3)
    # IPv4 first, then IPv6 (a record set has no order of its own)
    assert set(found[:2]) == {"192.0.2.1", "192.0.2.2"} and found[2] == "2001:db8::1"
    assert await resolve_all("v4.example", resolver, within=3) == ("192.0.2.3",)
    assert await resolve_all("alias.example", resolver, within=3) == ("192.0.2.3",)
    assert ("dual.example", "A") in responder.asked and ("dual.example", "AAAA") in responder.asked
    responder.table["v4.example"] = ["192.0.2.4"]  # the record changes: asked again, no cache
    assert await resolve_all("v4.example", resolver, within=3) == ("192.0.2.4",)


async def test_unknown_and_silent_names_fail_in_bounded_time(responder: DnsResponder) -> None:
    resolver = NameServerResolver("127.0.0.1", responder.port, lifetime=0.3)
    with pytest.raises(ResolveError, match="does not resolve"):
        await resolve_all("missing.example", resolver, within=3)
    with pytest.raises(ResolveError, match="did not resolve"):
        await resolve_all("silent.example", resolver, within=3)
    with pytest.raises(ResolveError, match=r"did not resolve within 0\.1 s"):
        await resolve_all(
            "silent.example", NameServerResolver("127.0.0.1", responder.port), within=0.1
        )


def test_the_dns_option_takes_an_address() -> None:
    assert (dns_server("127.0.0.1").host, dns_server("127.0.0.1").port) == ("127.0.0.1", 53)
    assert dns_server("[::1]:5353").port == 5353
    with pytest.raises(ConfigError, match="by address"):
        dns_server("dns.example:53")
