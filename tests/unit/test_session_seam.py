"""The node's session logic against a scripted network: no sockets.

What a session decides (credentials, the egress policy applied after name
resolution, which SOCKS5 reply each failure gets, timeouts, UDP ASSOCIATE's
datagram policy) is driven here through :mod:`resistance.node.fakenet`; the
same behaviour over real sockets is covered by tests/integration.  The
documentation range 203.0.113.0/24 stands for "the internet": the policy of
these tests allows it explicitly, and nothing is ever sent anywhere.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.config import NodeLimits, NodeSettings
from resistance.node.fakenet import (
    DialResult,
    MemorySession,
    ScriptedHost,
    ScriptedNetwork,
)
from resistance.node.policy import EgressPolicy
from resistance.node.session import ERRNO_REPLY
from resistance.node.users import UserDB
from resistance.proto.socks5 import (
    Address,
    Command,
    Reply,
    UdpDatagram,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
    parse_udp_datagram,
)

PUBLIC = "203.0.113.10"
PUBLIC2 = "203.0.113.20"
CLIENT = "203.0.113.99"
POLICY = EgressPolicy(allow=["203.0.113.0/24"])


def make_host(
    net: ScriptedNetwork, *, users: dict[str, str] | None = None, **settings_kw: Any
) -> ScriptedHost:
    limits = settings_kw.pop("limits", NodeLimits())
    node_settings = NodeSettings(limits=limits, **settings_kw)
    return ScriptedHost(
        loop=asyncio.get_running_loop(),
        net=net,
        settings=node_settings,
        policy=POLICY,
        users=UserDB(users) if users else None,
    )


def connect_to(host: ScriptedHost, address: Address, early: bytes = b"") -> MemorySession:
    session = MemorySession(host, CLIENT)
    session.feed(client_greeting(auth=False) + client_request(Command.CONNECT, address) + early)
    return session


def reply_of(session: MemorySession) -> tuple[Reply, Address]:
    data = bytes(session.to_client)
    assert data[:2] == b"\x05\x00", "the greeting is answered with no authentication"
    parsed = parse_reply(data[2:])
    assert parsed is not None, f"no complete reply in {data.hex()}"
    code, bound, end = parsed
    assert 2 + end == len(data), "nothing follows the reply"
    return code, bound


async def settle() -> None:
    """Let scripted dials and lookups run (each takes at most a few loop turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- the egress policy after resolution ---------------------------------------------------


async def test_name_resolving_to_private_address_is_refused_after_dns() -> None:
    net = ScriptedNetwork(names={"intranet.example": ["10.1.2.3"]})
    host = make_host(net)
    session = connect_to(host, Address.from_host("intranet.example", 443))
    await settle()
    assert net.lookups == [("intranet.example", 443, False)]
    assert reply_of(session)[0] is Reply.NOT_ALLOWED
    assert net.attempts == [], "a refused destination is never dialed"
    assert session.closed
    assert host.metrics.policy_refusals.labels("private").value == 1
    assert host.metrics.reply_by_code[Reply.NOT_ALLOWED].value == 1


async def test_only_the_allowed_addresses_of_a_name_are_dialed() -> None:
    net = ScriptedNetwork(
        names={"mixed.example": ["127.0.0.1", PUBLIC, "169.254.169.254"]},
        dials={(PUBLIC, 80): DialResult.CONNECTED},
    )
    host = make_host(net)
    session = connect_to(host, Address.from_host("mixed.example", 80), early=b"GET / HTTP/1.0\r\n")
    await settle()
    assert [a.sockaddr[0] for a in net.attempts] == [PUBLIC]
    code, bound = reply_of(session)
    assert code is Reply.SUCCEEDED
    stream = net.attempts[0].stream
    assert stream is not None and (bound.host, bound.port) == stream.getsockname()
    assert session.relayed is not None and session.relayed[0] is stream
    assert bytes(stream.received) == b"GET / HTTP/1.0\r\n", "early data goes on to the destination"


async def test_ipv4_mapped_and_nat64_forms_of_private_addresses_are_refused() -> None:
    net = ScriptedNetwork(names={"sneaky.example": ["::ffff:192.168.1.1", "64:ff9b::a00:1"]})
    host = make_host(net)
    session = connect_to(host, Address.from_host("sneaky.example", 443))
    await settle()
    assert reply_of(session)[0] is Reply.NOT_ALLOWED
    assert net.attempts == []


async def test_ip_literal_is_checked_without_a_lookup() -> None:
    net = ScriptedNetwork()
    host = make_host(net)
    session = connect_to(host, Address.from_ip("192.168.0.1", 22))
    assert reply_of(session)[0] is Reply.NOT_ALLOWED  # at once: no task for a literal
    assert net.lookups == [] and net.attempts == []


async def test_denied_port_is_refused_before_resolving() -> None:
    net = ScriptedNetwork(names={"mail.example": [PUBLIC]})
    host = make_host(net)
    session = connect_to(host, Address.from_host("mail.example", 25))
    await settle()
    assert reply_of(session)[0] is Reply.NOT_ALLOWED
    assert net.lookups == []


# -- reply codes for dial failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "reply"),
    [
        (DialResult.REFUSED, Reply.CONNECTION_REFUSED),
        (DialResult.NETWORK_UNREACHABLE, Reply.NETWORK_UNREACHABLE),
        (DialResult.HOST_UNREACHABLE, Reply.HOST_UNREACHABLE),
        (DialResult.TIMED_OUT, Reply.TTL_EXPIRED),
    ],
)
@pytest.mark.parametrize("at_once", [False, True])
async def test_dial_failure_reply_codes(result: DialResult, reply: Reply, at_once: bool) -> None:
    net = ScriptedNetwork(dials={PUBLIC: result}, at_once=at_once)
    host = make_host(net)
    session = connect_to(host, Address.from_ip(PUBLIC, 443))
    await settle()
    assert reply_of(session)[0] is reply
    assert session.closed and session.relayed is None
    assert host.metrics.reply_by_code[reply].value == 1


async def test_silent_destination_gets_ttl_expired_at_the_connect_timeout() -> None:
    net = ScriptedNetwork(dials={PUBLIC: DialResult.SILENT})
    host = make_host(net, limits=NodeLimits(connect_timeout=7.0))
    session = connect_to(host, Address.from_ip(PUBLIC, 443))
    await settle()
    host.clock.advance(6.9)
    assert not session.closed and session.to_client == b"\x05\x00"
    host.clock.advance(0.2)
    assert reply_of(session)[0] is Reply.TTL_EXPIRED
    assert net.attempts[0].cancelled, "the pending connect is given up"
    assert session.closed


async def test_next_address_is_tried_after_a_failure() -> None:
    net = ScriptedNetwork(
        names={"two.example": [PUBLIC, PUBLIC2]},
        dials={PUBLIC: DialResult.REFUSED, PUBLIC2: DialResult.CONNECTED},
    )
    host = make_host(net)
    session = connect_to(host, Address.from_host("two.example", 443))
    await settle()
    assert [a.sockaddr[0] for a in net.attempts] == [PUBLIC, PUBLIC2]
    assert reply_of(session)[0] is Reply.SUCCEEDED
    assert session.relayed is not None and session.relayed[0] is net.attempts[1].stream


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(list(DialResult)), min_size=1, max_size=5).filter(
        lambda results: DialResult.SILENT not in results[:-1]
    ),
    st.booleans(),
)
def test_reply_follows_the_first_success_or_the_last_failure(
    results: list[DialResult], at_once: bool
) -> None:
    """Over any sequence of outcomes for a name's addresses: the session dials them
    in order, stops at the first that connects, and otherwise answers for the last."""
    ips = [f"203.0.113.{i + 1}" for i in range(len(results))]

    async def run() -> None:
        net = ScriptedNetwork(
            names={"many.example": ips}, dials=dict(zip(ips, results, strict=True)), at_once=at_once
        )
        host = make_host(net, limits=NodeLimits(connect_timeout=5.0))
        session = connect_to(host, Address.from_host("many.example", 443))
        await settle()
        host.clock.advance(5.0)  # a silent last address times out
        first_ok = next(
            (i for i, r in enumerate(results) if r is DialResult.CONNECTED), len(results) - 1
        )
        assert [a.sockaddr[0] for a in net.attempts] == ips[: first_ok + 1]
        code, _ = reply_of(session)
        last = results[first_ok]
        if last is DialResult.CONNECTED:
            assert code is Reply.SUCCEEDED and session.relayed is not None
        elif last is DialResult.SILENT:
            assert code is Reply.TTL_EXPIRED
        else:
            errnos = {
                DialResult.REFUSED: errno.ECONNREFUSED,
                DialResult.NETWORK_UNREACHABLE: errno.ENETUNREACH,
                DialResult.HOST_UNREACHABLE: errno.EHOSTUNREACH,
                DialResult.TIMED_OUT: errno.ETIMEDOUT,
            }
            assert code is ERRNO_REPLY[errnos[last]]
        session.close()
        assert len(host.ended) == 1, "the host hears of the end exactly once"

    asyncio.run(run())


# -- name resolution failures ---------------------------------------------------------------


async def test_unknown_name_gets_host_unreachable() -> None:
    net = ScriptedNetwork()
    host = make_host(net)
    session = connect_to(host, Address.from_host("nowhere.example", 443))
    await settle()
    assert reply_of(session)[0] is Reply.HOST_UNREACHABLE


async def test_name_without_usable_address_gets_host_unreachable() -> None:
    net = ScriptedNetwork(names={"empty.example": []})
    host = make_host(net)
    session = connect_to(host, Address.from_host("empty.example", 443))
    await settle()
    assert reply_of(session)[0] is Reply.HOST_UNREACHABLE


async def test_resolver_that_never_answers_is_bounded_by_the_dns_timeout() -> None:
    net = ScriptedNetwork(names={"slow.example": None})
    host = make_host(net, limits=NodeLimits(dns_timeout=0.01))
    session = connect_to(host, Address.from_host("slow.example", 443))
    task = session.task
    assert task is not None
    await asyncio.wait_for(task, 5)  # the session's own 0.01 s bound ends it first
    assert session.closed
    assert reply_of(session)[0] is Reply.HOST_UNREACHABLE
    assert session.task is None


async def test_client_leaving_during_resolution_cancels_it() -> None:
    net = ScriptedNetwork(names={"slow.example": None})
    host = make_host(net)
    session = connect_to(host, Address.from_host("slow.example", 443))
    await settle()
    task = session.task
    assert task is not None
    session.on_eof()  # a half-close after the request is not a goodbye
    assert not session.closed
    session.close()
    await settle()
    assert task.cancelled()
    assert len(host.ended) == 1


# -- handshake timeout and authentication ---------------------------------------------------


async def test_handshake_timeout_closes_a_stalled_client() -> None:
    host = make_host(ScriptedNetwork(), limits=NodeLimits(handshake_timeout=10.0))
    session = MemorySession(host, CLIENT)
    session.feed(b"\x05\x01")  # half a greeting, then nothing
    host.clock.advance(9.5)
    assert not session.closed
    host.clock.advance(1.0)
    assert session.closed
    assert session.to_client == b"", "a stalled client gets no answer"
    assert host.metrics.handshake_failures.labels("timeout").value == 1


async def test_a_completed_request_is_no_longer_under_the_handshake_timeout() -> None:
    net = ScriptedNetwork(dials={PUBLIC: DialResult.CONNECTED})
    host = make_host(net, limits=NodeLimits(handshake_timeout=10.0))
    session = connect_to(host, Address.from_ip(PUBLIC, 443))
    await settle()
    host.clock.advance(60.0)
    assert reply_of(session)[0] is Reply.SUCCEEDED
    assert not session.closed


async def test_wrong_password_is_refused_and_counted() -> None:
    net = ScriptedNetwork(dials={PUBLIC: DialResult.CONNECTED})
    host = make_host(net, users={"alice": "correct horse"})
    session = MemorySession(host, CLIENT)
    session.feed(
        client_greeting(auth=True)
        + client_auth(b"alice", b"wrong")
        + client_request(Command.CONNECT, Address.from_ip(PUBLIC, 443))
    )
    assert bytes(session.to_client) == b"\x05\x02\x01\x01"  # method 2, then auth failure
    assert session.closed
    assert net.attempts == [], "nothing is dialed for a client that failed to log in"
    assert host.metrics.auth_failures.labels("bad-credentials").value == 1


async def test_right_password_gets_through_and_bytes_count_for_the_user() -> None:
    net = ScriptedNetwork(dials={PUBLIC: DialResult.CONNECTED})
    host = make_host(net, users={"alice": "correct horse"})
    session = MemorySession(host, CLIENT)
    session.feed(
        client_greeting(auth=True)
        + client_auth(b"alice", b"correct horse")
        + client_request(Command.CONNECT, Address.from_ip(PUBLIC, 443))
        + b"hello"
    )
    await settle()
    data = bytes(session.to_client)
    assert data[:4] == b"\x05\x02\x01\x00"
    parsed = parse_reply(data[4:])
    assert parsed is not None and parsed[0] is Reply.SUCCEEDED
    assert session.user == "alice"
    session.close()
    assert host.metrics.user_bytes.labels("alice", "up").value == 5


async def test_no_acceptable_method_when_a_password_is_required() -> None:
    host = make_host(ScriptedNetwork(), users={"alice": "pw"})
    session = MemorySession(host, CLIENT)
    session.feed(client_greeting(auth=False))
    assert bytes(session.to_client) == b"\x05\xff"
    assert session.closed
    assert host.metrics.handshake_failures.labels("no-acceptable-method").value == 1


# -- UDP ASSOCIATE --------------------------------------------------------------------------


ANY_PORT = Address.from_ip("0.0.0.0", 0)


def associate(host: ScriptedHost, hint: Address = ANY_PORT) -> MemorySession:
    session = MemorySession(host, CLIENT)
    session.feed(client_greeting(auth=False) + client_request(Command.UDP_ASSOCIATE, hint))
    return session


async def test_udp_associate_is_not_supported_when_disabled() -> None:
    host = make_host(ScriptedNetwork(), udp=False)
    session = associate(host)
    assert reply_of(session)[0] is Reply.COMMAND_NOT_SUPPORTED
    assert session.closed


async def test_udp_datagrams_pass_the_egress_policy() -> None:
    net = ScriptedNetwork()
    host = make_host(net)
    session = associate(host)
    code, bound = reply_of(session)
    assert code is Reply.SUCCEEDED
    relay_sock = net.datagram_sockets[0]
    assert (bound.host, bound.port) == relay_sock.getsockname()
    counter = host.metrics.udp_datagrams

    def datagram(ip: str, port: int, payload: bytes) -> bytes:
        return UdpDatagram(0, Address.from_ip(ip, port), payload).pack()

    net.deliver(relay_sock, datagram("10.0.0.53", 53, b"private"), (CLIENT, 5353))
    net.deliver(relay_sock, datagram(PUBLIC, 53, b"query"), (CLIENT, 5353))
    net.deliver(relay_sock, datagram(PUBLIC, 53, b"spoofed"), (PUBLIC2, 5353))
    assert counter.labels("up", "refused").value == 1
    assert counter.labels("up", "foreign-source").value == 1
    assert host.metrics.policy_refusals.labels("private").value == 1
    out = net.datagram_sockets[1]
    assert out.sent == [(b"query", (PUBLIC, 53))], "only the allowed datagram leaves"

    # Answers come back only from destinations the client has sent to.
    net.deliver(out, b"answer", (PUBLIC, 53))
    net.deliver(out, b"unasked", (PUBLIC2, 53))
    assert len(relay_sock.sent) == 1
    wrapped, to = relay_sock.sent[0]
    assert to == (CLIENT, 5353)
    back = parse_udp_datagram(wrapped)
    assert (back.address.host, back.address.port, back.payload) == (PUBLIC, 53, b"answer")
    assert counter.labels("down", "unsolicited").value == 1

    session.close()
    assert all(s.closed for s in net.datagram_sockets)
    assert not net.watched and not host.udp_associations


async def test_udp_names_are_resolved_then_checked() -> None:
    net = ScriptedNetwork(names={"dns.example": [PUBLIC], "internal.example": ["192.168.1.1"]})
    host = make_host(net)
    session = associate(host)
    relay_sock = net.datagram_sockets[0]

    def to_name(name: str) -> bytes:
        return UdpDatagram(0, Address.from_host(name, 53), b"q").pack()

    for name in ("dns.example", "internal.example"):
        net.deliver(relay_sock, to_name(name), (CLIENT, 5353))  # dropped while resolving
        await settle()
        net.deliver(relay_sock, to_name(name), (CLIENT, 5353))
    assert ("dns.example", None, True) in net.lookups
    assert net.datagram_sockets[1].sent == [(b"q", (PUBLIC, 53))]
    assert host.metrics.udp_datagrams.labels("up", "refused").value == 1
    assert host.metrics.udp_datagrams.labels("up", "resolving").value == 2
    session.close()


# -- BIND ------------------------------------------------------------------------------------


async def test_bind_accepts_only_the_announced_peer() -> None:
    net = ScriptedNetwork()
    host = make_host(net)
    session = MemorySession(host, CLIENT)
    session.feed(
        client_greeting(auth=False) + client_request(Command.BIND, Address.from_ip(PUBLIC, 20))
    )
    code, bound = reply_of(session)
    assert code is Reply.SUCCEEDED
    listener = net.listeners[0]
    assert (bound.host, bound.port) == listener.address()
    stranger = listener.arrive((PUBLIC2, 4000))
    assert stranger.closed and not listener.closed
    peer = listener.arrive(("::ffff:" + PUBLIC, 4001))  # the same host, IPv4-mapped
    assert not peer.closed and listener.closed
    second = parse_reply(bytes(session.to_client)[2 + 10 :])
    assert second is not None and second[0] is Reply.SUCCEEDED
    assert session.relayed is not None and session.relayed[0] is peer


async def test_bind_times_out_without_a_peer() -> None:
    net = ScriptedNetwork()
    host = make_host(net, limits=NodeLimits(bind_timeout=30.0))
    session = MemorySession(host, CLIENT)
    session.feed(
        client_greeting(auth=False) + client_request(Command.BIND, Address.from_ip(PUBLIC, 20))
    )
    host.clock.advance(31.0)
    assert session.closed and net.listeners[0].closed
    second = parse_reply(bytes(session.to_client)[2 + 10 :])
    assert second is not None and second[0] is Reply.TTL_EXPIRED
