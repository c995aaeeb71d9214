"""The translator's transport path in C (``_awg.c``) against the Python rewriter.

Datagrams go through real loopback UDP sockets into ``_awg.relay`` and what
comes out (forwarded, handed back to Python, dropped) is compared with what
:class:`resistance.vpn.amnezia.Rewriter` does with the same datagrams, which
the other tests check against amneziawg-go's rules and an independent
WireGuard responder.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.vpn import keys
from resistance.vpn.amnezia import BASE_SIZE, AmneziaParams, Rewriter, classify
from resistance.vpn.noise import MessageType
from resistance.vpn.translator import UDP_GRO, _address, _native_module

awg = _native_module()
pytestmark = pytest.mark.skipif(awg is None, reason="resistance.vpn._awg is not built here")

PARAMS = AmneziaParams.generate()
WG = keys.KeyPair.generate()
HANDSHAKE_SIZES = tuple(
    PARAMS.padding(t) + BASE_SIZE[t]
    for t in (MessageType.INITIATION, MessageType.RESPONSE, MessageType.COOKIE_REPLY)
)
INDEX = 0x1234ABCD


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[tuple[bytes, object]]:
    out = []
    while True:
        try:
            out.append(sock.recvfrom(70000))
        except BlockingIOError:
            return out


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """(sender, the socket relay reads, the socket it forwards to)."""
    trio = (udp(), udp(), udp())
    yield trio
    for sock in trio:
        sock.close()


def raw(sock: socket.socket) -> bytes:
    """A socket's own address as a raw sockaddr_in, as the C path reports sources."""
    host, port = sock.getsockname()
    family = struct.pack("=H", socket.AF_INET)
    return family + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)


def rewriter() -> Rewriter:
    r = Rewriter(PARAMS, wireguard_public=WG.public, amnezia_publics=list)
    r.wireguard_indices[INDEX] = None
    return r


def amnezia_transport(payload: bytes, *, index: int = INDEX, header: int | None = None) -> bytes:
    value = PARAMS.h4.pick() if header is None else header
    return os.urandom(PARAMS.s4) + struct.pack("<II", value, index) + payload


def relay_once(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
    datagrams: list[bytes],
    *,
    to_wireguard: bool,
    indices: dict[int, None] | None,
) -> tuple[list[tuple[bytes, bytes]], int, int, int, list[object], list[bytes]]:
    sender, middle, target = sockets
    for datagram in datagrams:
        sender.sendto(datagram, middle.getsockname())
    assert awg is not None
    tag = object()
    route = (middle.fileno(), raw(target), indices, tag)
    slow, received, sent, dropped, tags = awg.relay(
        middle.fileno(),
        to_wireguard,
        PARAMS.s4,
        PARAMS.h4.lo,
        PARAMS.h4.hi,
        HANDSHAKE_SIZES if to_wireguard else (-1, -1, -1),
        route,
        -1,
    )
    assert tags == ([tag] if sent else [])
    return slow, received, sent, dropped, tags, [d for d, _ in drain(target)]


def test_raw_addresses_read_back_as_python_gives_them() -> None:
    with udp() as sock:
        assert _address(raw(sock)) == sock.getsockname()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300).map(amnezia_transport),  # good transport
            st.binary(max_size=40),  # short or garbage
            st.binary(min_size=16, max_size=200).map(lambda p: amnezia_transport(p, index=7)),
            st.integers(0, 4).map(lambda h: amnezia_transport(b"x" * 20, header=h)),
            st.sampled_from(HANDSHAKE_SIZES).map(os.urandom),
        ),
        max_size=40,
    )
)
def test_amnezia_to_wireguard_is_what_the_rewriter_does(
    sockets: tuple[socket.socket, socket.socket, socket.socket], datagrams: list[bytes]
) -> None:
    python = rewriter()
    slow, received, sent, dropped, _, out = relay_once(
        sockets, datagrams, to_wireguard=True, indices=python.wireguard_indices
    )
    least = PARAMS.s4 + 32
    fast = [d for d in datagrams if len(d) >= least and len(d) not in HANDSHAKE_SIZES]
    expected = [python.to_wireguard(d) for d in fast]
    assert received == len(datagrams)
    assert out == [e for e in expected if e is not None]
    assert (sent, dropped) == (len(out), expected.count(None))
    assert [d for d, _ in slow] == [d for d in datagrams if d not in fast]
    assert all(_address(source) == sockets[0].getsockname() for _, source in slow)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=28, max_size=1500).map(lambda p: b"\x04\x00\x00\x00" + p),
            st.binary(max_size=200),
        ),
        max_size=40,
    )
)
def test_wireguard_to_amnezia_round_trips(
    sockets: tuple[socket.socket, socket.socket, socket.socket], datagrams: list[bytes]
) -> None:
    slow, received, sent, dropped, _, out = relay_once(
        sockets, datagrams, to_wireguard=False, indices=None
    )
    fast = [d for d in datagrams if len(d) >= 32 and d[:4] == b"\x04\x00\x00\x00"]
    assert (received, sent, dropped) == (len(datagrams), len(fast), 0)
    assert [d for d, _ in slow] == [d for d in datagrams if d not in fast]
    python = rewriter()
    for original, wire in zip(fast, out, strict=True):
        assert len(wire) == PARAMS.s4 + len(original)
        (header,) = struct.unpack_from("<I", wire, PARAMS.s4)
        assert header in PARAMS.h4
        python.wireguard_indices[int.from_bytes(original[4:8], "little")] = None
        # a size WireGuard's padding never makes can be a handshake's, and then the
        # bytes at that handshake's offset decide, as in amneziawg-go
        transport = classify(PARAMS, wire) is MessageType.TRANSPORT
        assert python.to_wireguard(wire) == (original if transport else None)


def test_strangers_cannot_use_a_route_and_only_initiations_reach_python(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    sender, middle, target = sockets
    assert awg is not None
    indices = {INDEX: None}
    routes = {raw(target): (target.fileno(), None, indices, "flow")}  # not the sender's
    initiation = os.urandom(HANDSHAKE_SIZES[0])
    for datagram in [amnezia_transport(b"p" * 56), os.urandom(500), initiation]:
        sender.sendto(datagram, middle.getsockname())
    slow, received, sent, dropped, tags = awg.relay(
        middle.fileno(),
        True,
        PARAMS.s4,
        PARAMS.h4.lo,
        PARAMS.h4.hi,
        HANDSHAKE_SIZES,
        routes,
        HANDSHAKE_SIZES[0],
    )
    assert (received, sent, dropped, tags) == (3, 0, 2, [])
    assert [d for d, _ in slow] == [initiation]
    # once the sender has a route, its transport goes through
    routes[raw(sender)] = (middle.fileno(), raw(target), indices, "flow")
    sender.sendto(amnezia_transport(b"q" * 56), middle.getsockname())
    slow, received, sent, dropped, tags = awg.relay(
        middle.fileno(),
        True,
        PARAMS.s4,
        PARAMS.h4.lo,
        PARAMS.h4.hi,
        HANDSHAKE_SIZES,
        routes,
        HANDSHAKE_SIZES[0],
    )
    assert (slow, received, sent, dropped, tags) == ([], 1, 1, 0, ["flow"])
    assert [d[8:] for d, _ in drain(target)] == [b"q" * 56]


@pytest.mark.parametrize(
    "routes",
    [(1, 2, 3), (0, "x", None, 0), (0, None, [], 0), "sender's: (0,)", "route"],
)
def test_malformed_routes_raise_not_crash(
    sockets: tuple[socket.socket, socket.socket, socket.socket], routes: object
) -> None:
    sender, middle, _ = sockets
    if routes == "sender's: (0,)":
        routes = {raw(sender): (0,)}
    sender.sendto(amnezia_transport(b"z" * 40), middle.getsockname())
    assert awg is not None
    with pytest.raises(TypeError):
        awg.relay(
            middle.fileno(),
            True,
            PARAMS.s4,
            PARAMS.h4.lo,
            PARAMS.h4.hi,
            HANDSHAKE_SIZES,
            routes,  # type: ignore[arg-type]
            -1,
        )


@pytest.mark.parametrize("size", [32, 1420, 4000, 30000])
def test_bursts_of_one_size_arrive_whole_and_in_order(
    sockets: tuple[socket.socket, socket.socket, socket.socket], size: int
) -> None:
    """What _awg.c sends as UDP GSO (equal sizes, one destination) arrives as datagrams."""
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    count = 150 if size < 30000 else 8
    # numbered, all of one size but the last, which is shorter
    plain = [
        b"\x04\x00\x00\x00" + n.to_bytes(4, "little") + os.urandom(size - 8) for n in range(count)
    ]
    plain.append(b"\x04\x00\x00\x00" + count.to_bytes(4, "little") + bytes(24))
    slow, received, sent, dropped, _, wire = relay_once(
        sockets, plain, to_wireguard=False, indices=None
    )
    assert (slow, received, sent, dropped) == ([], count + 1, count + 1, 0)
    assert [len(w) for w in wire] == [PARAMS.s4 + len(p) for p in plain]
    python = rewriter()
    for n, (original, datagram) in enumerate(zip(plain, wire, strict=True)):
        python.wireguard_indices[n] = None
        assert python.to_wireguard(datagram) == original
    # and back: the C path strips what it added
    indices = {n: None for n in range(count + 1)}
    slow, received, sent, dropped, _, back = relay_once(
        sockets, wire, to_wireguard=True, indices=indices
    )
    assert (received, sent, dropped) == (count + 1, count + 1, 0)
    assert back == plain


def test_transport_of_a_handshake_size_goes_to_python_which_classifies_it(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    """A transport message of a handshake's size: C hands it over, classify() sorts it.

    (Generated parameters make such sizes impossible for padded transport
    messages; these are made by hand.)  Whether it is a transport message or
    a handshake depends on the bytes at that handshake's padding offset, as in
    amneziawg-go: outside the handshake's H range, transport, rewritten; inside,
    a handshake, which fails mac1 and is dropped.
    """
    least = PARAMS.s4 + 32
    colliding: list[bytes] = []
    expected: list[bytes | None] = []
    for kind, size in zip(
        (MessageType.INITIATION, MessageType.RESPONSE, MessageType.COOKIE_REPLY),
        HANDSHAKE_SIZES,
        strict=True,
    ):
        if size < least:
            continue
        offset = PARAMS.padding(kind)
        if PARAMS.s4 - 4 < offset < PARAMS.s4 + 8:
            continue  # it would overlap the transport's own H4 value or receiver index
        for value, transport in ((PARAMS.h4.lo, True), (PARAMS.header(kind).lo, False)):
            datagram = bytearray(amnezia_transport(os.urandom(size - PARAMS.s4 - 8)))
            datagram[offset : offset + 4] = value.to_bytes(4, "little")
            colliding.append(bytes(datagram))
            expected.append(b"\x04\x00\x00\x00" + datagram[PARAMS.s4 + 4 :] if transport else None)
    python = rewriter()
    slow, received, sent, dropped, _, out = relay_once(
        sockets, colliding, to_wireguard=True, indices=python.wireguard_indices
    )
    assert (received, sent, dropped, out) == (len(colliding), 0, 0, [])
    assert [d for d, _ in slow] == colliding
    assert [python.to_wireguard(d) for d in colliding] == expected


def test_generated_parameters_keep_transport_sizes_off_handshake_sizes() -> None:
    for legacy in (False, True):
        for _ in range(200):
            params = AmneziaParams.generate(legacy=legacy)
            transport = params.s4 + 32
            sizes = [params.s1 + 148, params.s2 + 92] + ([] if legacy else [params.s3 + 64])
            assert all(s < transport or (s - transport) % 16 for s in sizes), params


def test_ipv6_sources_read_back_as_python_gives_them() -> None:
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    middle = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sender.bind(("::1", 0))
        middle.bind(("::1", 0))
        middle.setblocking(False)
        sender.sendto(b"\x01" * 148, middle.getsockname())
        assert awg is not None
        slow, *_ = awg.relay(
            middle.fileno(),
            True,
            PARAMS.s4,
            PARAMS.h4.lo,
            PARAMS.h4.hi,
            HANDSHAKE_SIZES,
            {},
            -1,
        )
        ((data, source),) = slow
        assert data == b"\x01" * 148
        assert _address(source) == sender.getsockname()
    finally:
        sender.close()
        middle.close()


def test_coalesced_reads_are_split_into_their_datagrams() -> None:
    """C -> C: one relay sends a burst as UDP GSO, the next reads it with UDP_GRO on."""
    socks = [udp() for _ in range(4)]
    sender, first, second, target = socks
    try:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        second.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        plain = [
            b"\x04\x00\x00\x00" + n.to_bytes(4, "little") + os.urandom(1400) for n in range(200)
        ]
        plain.append(b"\x04\x00\x00\x00" + (200).to_bytes(4, "little") + bytes(40))
        for datagram in plain:
            sender.sendto(datagram, first.getsockname())
        assert awg is not None
        hop = (first.fileno(), raw(second), None, "first")
        slow, received, sent, dropped, _ = awg.relay(
            first.fileno(), False, PARAMS.s4, PARAMS.h4.lo, PARAMS.h4.hi, (-1, -1, -1), hop, -1
        )
        assert (slow, received, sent, dropped) == ([], 201, 201, 0)
        indices = {n: None for n in range(201)}
        hop = (second.fileno(), raw(target), indices, "second")
        moved = 0
        while moved < 201:
            slow, received, sent, dropped, _ = awg.relay(
                second.fileno(), True, PARAMS.s4, PARAMS.h4.lo, PARAMS.h4.hi, HANDSHAKE_SIZES,
                hop, -1,
            )  # fmt: skip
            assert (slow, dropped, sent) == ([], 0, received) and received
            moved += received
        assert [d for d, _ in drain(target)] == plain
    finally:
        for sock in socks:
            sock.close()
