"""The client's pure parts: the SOCKS5 client machine and the upstream order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.client.upstreams import BACKOFF_MAX, Upstream, UpstreamPool
from resistance.errors import ConfigError, ProtocolError
from resistance.proto.socks5 import (
    Address,
    ClientConnection,
    Command,
    Established,
    Reply,
    UpstreamRefused,
    pack_reply,
)

OK = b"\x05\x02" + b"\x01\x00" + pack_reply(Reply.SUCCEEDED, Address.from_ip("10.0.0.1", 4242))


def feed_all(machine: ClientConnection, data: bytes, step: int) -> Established | None:
    result = None
    for i in range(0, len(data), step):
        got = machine.receive_data(data[i : i + step])
        if got is not None:
            assert result is None
            result = got
    return result


@pytest.mark.parametrize("step", [1, 2, 3, 100])
def test_client_whole_bytewise_and_trailing(step: int) -> None:
    machine = ClientConnection("alice", "secret")
    sent = machine.start(Command.CONNECT, Address.from_host("example.org", 443))
    assert sent == (
        b"\x05\x01\x02" + b"\x01\x05alice\x06secret" + b"\x05\x01\x00\x03\x0bexample.org\x01\xbb"
    )
    result = feed_all(machine, OK + b"early", step)
    assert result == Established(Address.from_ip("10.0.0.1", 4242))
    assert machine.take_early_data() == b"early"


def test_client_without_credentials_offers_only_no_auth() -> None:
    machine = ClientConnection()
    assert machine.start(Command.UDP_ASSOCIATE, Address.from_ip("0.0.0.0", 0)).startswith(
        b"\x05\x01\x00\x05\x03\x00"
    )
    assert machine.receive_data(b"\x05\x00" + pack_reply(Reply.SUCCEEDED)) is not None


@pytest.mark.parametrize(
    "answer, code",
    [
        (b"\x05\xff", None),
        (b"\x05\x02\x01\x01", None),
        (b"\x05\x02\x01\x00" + pack_reply(Reply.NOT_ALLOWED), Reply.NOT_ALLOWED),
        (b"\x05\x02\x01\x00" + pack_reply(Reply.TTL_EXPIRED), Reply.TTL_EXPIRED),
    ],
)
def test_client_refusals_carry_the_code(answer: bytes, code: Reply | None) -> None:
    machine = ClientConnection("a", "b")
    with pytest.raises(UpstreamRefused) as refused:
        machine.receive_data(answer)
    assert refused.value.code is code


def test_client_rejects_a_non_socks_server() -> None:
    with pytest.raises(ProtocolError):
        ClientConnection("a", "b").receive_data(b"HTTP/1.1 400 Bad Request\r\n")


@given(st.lists(st.binary(max_size=40), max_size=20), st.booleans())
def test_client_fuzz(chunks: list[bytes], auth: bool) -> None:
    machine = ClientConnection("a", "b") if auth else ClientConnection()
    try:
        for chunk in chunks:
            machine.receive_data(chunk)
    except ProtocolError:
        pass


# -- the pool ------------------------------------------------------------------------------

A, B, C = (Upstream("127.0.0.1", p, "u", "p") for p in (1, 2, 3))


def test_order_is_sticky_then_by_latency_then_given() -> None:
    pool = UpstreamPool([A, B, C])
    assert pool.order(now=0) == [A, B, C]
    pool.succeeded(C, 0.010, now=0)
    pool.succeeded(B, 0.050, now=0)
    assert pool.order(now=0) == [C, B, A]  # measured before untested, fast first
    pool.used(B)
    assert pool.order(now=0)[0] == B  # the one in use stays first while it works
    pool.failed(B, "refused", now=0)
    assert pool.active is None
    assert pool.order(now=0) == [C, A, B]  # resting last
    assert pool.order(now=10) == [C, B, A]  # after its rest it competes again


def test_backoff_doubles_and_is_capped() -> None:
    pool = UpstreamPool([A])
    rests = []
    for _ in range(12):
        pool.failed(A, "down", now=0)
        rests.append(pool.health[A].down_until)
    assert rests[:4] == [2.0, 4.0, 8.0, 16.0]
    assert rests[-1] == BACKOFF_MAX
    pool.succeeded(A, 0.01, now=1)
    assert pool.health[A].available(1)


def test_switches_are_counted_and_replace_keeps_health() -> None:
    pool = UpstreamPool([A, B])
    pool.used(A)
    pool.used(B)
    pool.used(B)
    assert pool.switches == 1
    pool.succeeded(B, 0.2, now=0)
    pool.replace([B, C, B])
    assert pool.upstreams == [B, C]
    assert pool.health[B].latency == 0.2
    assert pool.active == B


def test_moving_off_an_active_upstream_that_failed_is_a_switch() -> None:
    # The lab found this: a blocked active upstream fails (it loses the race),
    # which clears ``active``; the connection then goes through B.  That is a
    # switch, and status must count it.
    pool = UpstreamPool([A, B])
    pool.used(A)
    pool.failed(A, "slower than another upstream", now=0)
    assert pool.active is None
    pool.used(B)
    assert (pool.active, pool.switches) == (B, 1)
    pool.failed(B, "reset", now=1)
    pool.used(B)  # back on the same one: no switch
    assert pool.switches == 1


def test_upstream_urls() -> None:
    up = Upstream.from_url("socks5://al%40ice:pw@[::1]:1080")
    assert (up.host, up.port, up.username, up.password, up.label) == (
        "::1",
        1080,
        "al@ice",
        "pw",
        "[::1]:1080",
    )
    with pytest.raises(ConfigError):
        Upstream.from_url("socks5s://a:b@127.0.0.1:443")


def test_blocked_proxies_are_skipped_only_where_blocked() -> None:
    from resistance.client.directory import upstreams_from, usable

    assert usable("functional", None) and usable("untested", "RU")
    assert not usable("down", None) and not usable("down", "IR")
    assert not usable("blocked:RU", None)  # unknown location: the safe guess
    assert not usable("blocked:RU", "ru")
    assert usable("blocked:RU", "IR")
    document = {
        "proxies": [
            {
                "endpoint": {"host": "192.0.2.1", "port": 1080},
                "protocols": ["socks5"],
                "credentials": [{"username": "u", "password": "p"}],
                "status": status,
            }
            for status in ("functional", "blocked:RU", "down")
        ]
    }
    assert len(upstreams_from(document, country="RU")) == 1
    assert len(upstreams_from(document, country="IR")) == 2


def test_a_node_blocked_by_its_plain_ports_fingerprint_keeps_its_tls_listener() -> None:
    """The probes inside saw SOCKS5 fail and TLS get through: TLS stays listed there;
    a node whose every transport failed, or with no such measurement, does not."""
    from resistance.client.directory import upstreams_from

    def entry(host: str, reach: dict[str, dict[str, str]]) -> dict[str, object]:
        return {
            "endpoint": {"host": host, "port": 1080},
            "protocols": ["socks5"],
            "credentials": [{"username": "u", "password": "p"}],
            "tls": {"port": 443, "sha256": "ab" * 32},
            "status": "blocked:RU",
            "measurements": {"reach": reach},
        }

    document = {
        "proxies": [
            entry("192.0.2.1", {"in-ru": {"socks5": "blocked-fingerprint", "tls": "ok"}}),
            entry("192.0.2.2", {"in-ru": {"socks5": "blocked-ip", "tls": "blocked-ip"}}),
            entry("192.0.2.3", {"nl": {"socks5": "ok", "tls": "ok"}}),
            entry("192.0.2.4", {}),
        ]
    }
    found = upstreams_from(document, country="RU")
    assert [(u.host, u.port, u.tls_sha256 is not None) for u in found] == [("192.0.2.1", 443, True)]
    assert len(upstreams_from(document, country="IR")) == 8
