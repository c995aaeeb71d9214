"""AmneziaWG's wire format and the WireGuard <-> AmneziaWG rewriter (no sockets)."""

from __future__ import annotations

import os
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.vpn import amnezia, noise
from resistance.vpn.amnezia import AmneziaError, AmneziaParams, HeaderRange, Rewriter
from resistance.vpn.noise import MessageType

SERVER = os.urandom(32)
CLIENT = os.urandom(32)
SERVER_PUB = noise.public_key(SERVER)
CLIENT_PUB = noise.public_key(CLIENT)

PARAMS = AmneziaParams(
    jc=3,
    jmin=50,
    jmax=90,
    s1=20,
    s2=30,
    s3=10,
    s4=5,
    h1=HeaderRange(1000, 1999),
    h2=HeaderRange(2000, 2000),
    h3=HeaderRange(3000, 3100),
    h4=HeaderRange(4000, 4999),
    i1="<b 0xc0ffee><t><r 4><rc 3><rd 2><dz 2><d>",
)


def pair(params: AmneziaParams = PARAMS) -> tuple[Rewriter, Rewriter]:
    """The client's translator (stock WireGuard client) and the server's."""
    client = Rewriter(params, wireguard_public=CLIENT_PUB, amnezia_publics=lambda: [SERVER_PUB])
    server = Rewriter(
        params, wireguard_public=SERVER_PUB, amnezia_publics=lambda: [os.urandom(32), CLIENT_PUB]
    )
    return client, server


def fake_response(receiver: int, sender: int = 77) -> bytes:
    """A type-2 message with a correct mac1 for the client (what the rewriter checks)."""
    body = struct.pack("<BxxxII", 2, sender, receiver) + os.urandom(48)
    return body + noise.mac(amnezia.mac1_key(CLIENT_PUB), body) + bytes(16)


def test_initiation_layout_follows_amneziawg_go() -> None:
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    client, _ = pair()
    out = client.to_amnezia(initiator.initiation)
    # I1, then Jc junk datagrams, then the padded initiation (send.go)
    assert len(out) == 1 + 3 + 1
    i1 = out[0]
    assert i1[:3] == b"\xc0\xff\xee" and len(i1) == 3 + 4 + 4 + 3 + 2 + 2
    assert i1[11:14].isalpha() and i1[14:16].isdigit() and i1[16:18] == b"\x00\x00"
    for junk in out[1:4]:
        assert 50 <= len(junk) < 90
        assert amnezia.classify(PARAMS, junk) in (None, MessageType.TRANSPORT)
    message = out[-1]
    assert len(message) == 20 + 148
    (header,) = struct.unpack_from("<I", message, 20)
    assert header in PARAMS.h1
    # the body is WireGuard's, mac1 recomputed over the message with H1 in it
    body = message[20:]
    assert body[4:116] == initiator.initiation[4:116]
    assert body[116:132] == noise.mac(amnezia.mac1_key(SERVER_PUB), body[:116])
    assert body[132:] == bytes(16)
    assert amnezia.classify(PARAMS, message) is MessageType.INITIATION


def test_every_message_type_round_trips() -> None:
    client, server = pair()
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    wire = client.to_amnezia(initiator.initiation)[-1]
    assert server.to_wireguard(wire) == initiator.initiation

    response = fake_response(initiator.sender_index)
    wire_list = server.to_amnezia(response)
    assert len(wire_list) == 1 and len(wire_list[0]) == 30 + 92
    assert amnezia.classify(PARAMS, wire_list[0]) is MessageType.RESPONSE
    assert client.to_wireguard(wire_list[0]) == response

    transport = struct.pack("<IIQ", 4, 77, 1) + os.urandom(48)
    (wire,) = client.to_amnezia(transport)
    assert len(wire) == 5 + len(transport)
    assert server.to_wireguard(wire) == transport
    back = struct.pack("<IIQ", 4, initiator.sender_index, 9) + os.urandom(16)
    (wire,) = server.to_amnezia(back)
    assert client.to_wireguard(wire) == back


def test_cookie_reply_is_resealed_and_mac2_recomputed() -> None:
    client, server = pair()
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    wire = client.to_amnezia(initiator.initiation)[-1]
    as_server_sees = server.to_wireguard(wire)
    assert as_server_sees is not None
    # the server (under load) seals a cookie for the mac1 it saw
    cookie = os.urandom(16)
    nonce = os.urandom(24)
    sealed = noise.xaead_encrypt(
        amnezia.cookie_key(SERVER_PUB), nonce, cookie, as_server_sees[116:132]
    )
    reply = struct.pack("<BxxxI", 3, initiator.sender_index) + nonce + sealed
    (wire_reply,) = server.to_amnezia(reply)
    assert len(wire_reply) == 10 + 64
    assert amnezia.classify(PARAMS, wire_reply) is MessageType.COOKIE_REPLY
    # the client's own WireGuard opens it with the mac1 it computed itself
    assert initiator.open_cookie_reply(client.to_wireguard(wire_reply) or b"") == cookie
    # and its retry with mac2 reaches the server with a mac2 the server accepts
    retry = noise.Initiator(CLIENT, SERVER_PUB, cookie=cookie)
    wire = client.to_amnezia(retry.initiation)[-1]
    assert wire[-16:] != bytes(16)
    seen = server.to_wireguard(wire)
    assert seen == retry.initiation


def test_bad_mac1_and_unknown_receivers_are_dropped() -> None:
    client, server = pair()
    initiator = noise.Initiator(os.urandom(32), os.urandom(32))  # mac1 for another server
    wire = client.to_amnezia(initiator.initiation)
    assert wire == []  # the client translator knows no such server
    forged = bytearray(os.urandom(20)) + struct.pack("<I", 1500) + os.urandom(144)
    assert amnezia.classify(PARAMS, bytes(forged)) is MessageType.INITIATION
    assert server.to_wireguard(bytes(forged)) is None
    # transport to an index the server never announced
    transport = os.urandom(5) + struct.pack("<IIQ", 4500, 1234, 0) + os.urandom(32)
    assert amnezia.classify(PARAMS, transport) is MessageType.TRANSPORT
    assert server.to_wireguard(transport) is None


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_any_datagram_is_dropped_or_rewritten_never_crashes(data: bytes) -> None:
    client, server = pair()
    for rewriter in (client, server):
        out = rewriter.to_wireguard(data)
        assert out is None or (1 <= out[0] <= 4 and out[1:4] == bytes(3))
        for wire in rewriter.to_amnezia(data):
            assert isinstance(wire, bytes)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_generated_params_round_trip_transport_and_handshakes(data: st.DataObject) -> None:
    params = AmneziaParams.generate()
    client, server = pair(params)
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    out = client.to_amnezia(initiator.initiation)
    assert len(out) == params.jc + 1
    for junk in out[:-1]:
        assert server.to_wireguard(junk) is None  # junk never reaches WireGuard
    assert server.to_wireguard(out[-1]) == initiator.initiation
    # the sizes WireGuard's padding makes (to 16 bytes): generated parameters keep
    # them off the handshake sizes, so they always classify as transport; a full-MTU
    # packet can have any size, and near the MTU no handshake size is
    padded = st.integers(0, 93).map(lambda n: 16 * n)
    payload = data.draw(st.one_of(padded, st.integers(1300, 1500)))
    response = fake_response(initiator.sender_index, sender=data.draw(st.integers(0, 2**32 - 1)))
    (wire,) = server.to_amnezia(response)
    assert client.to_wireguard(wire) == response
    sender = struct.unpack_from("<I", response, 4)[0]
    transport = struct.pack("<IIQ", 4, sender, 5) + os.urandom(16 + payload)
    (wire,) = client.to_amnezia(transport)
    assert server.to_wireguard(wire) == transport
    sizes = {params.s1 + 148, params.s2 + 92, params.s3 + 64, params.s4 + 32}
    assert len(sizes) == 4 and max(sizes) <= 1472


@settings(max_examples=100)
@given(st.integers(0, 50))
def test_generated_params_are_valid_and_survive_the_config_keys(_: int) -> None:
    params = AmneziaParams.generate()
    headers = list(params.headers().values())
    for i, a in enumerate(headers):
        assert a.lo > 4
        assert not any(a.overlaps(b) for b in headers[i + 1 :])
    assert 4 <= params.jc <= 8 and params.jmin <= params.jmax <= 1472
    assert AmneziaParams.from_keys(dict(params.interface_keys()), "test") == params
    assert AmneziaParams.from_json(params.to_json(), "test") == params


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"h2": HeaderRange(1500, 2500)}, "overlap"),
        ({"h1": HeaderRange(1, 900)}, "WireGuard's own types"),
        ({"s1": 0, "s2": 56}, "must all differ"),
        ({"jmin": 100, "jmax": 99}, "above Jmax"),
        ({"s4": 70000}, "0..65535"),
        ({"i2": "<b 0xabc>"}, "even"),
        ({"i3": "<x 1>"}, "unknown tag"),
        ({"i4": "<r 5"}, "missing enclosing"),
    ],
)
def test_invalid_parameters_are_refused(change: dict[str, object], message: str) -> None:
    doc = PARAMS.to_json() | {k: str(v) for k, v in change.items()}
    with pytest.raises(ConfigError, match=message):
        AmneziaParams.from_json(doc, "test")


@given(st.text(max_size=60))
def test_cps_parser_parses_or_refuses(spec: str) -> None:
    try:
        tags = amnezia.parse_cps(spec)
    except AmneziaError:
        return
    assert len(amnezia.build_cps(tags)) == sum(amnezia.cps_size(t) for t in tags)


@given(st.text(max_size=30))
def test_header_parser_parses_or_refuses(text: str) -> None:
    try:
        h = HeaderRange.parse(text)
    except AmneziaError:
        return
    assert HeaderRange.parse(str(h)) == h


def test_cps_tags_from_the_source() -> None:
    tags = amnezia.parse_cps("junk <b 0x0102><t> text <rd 3><ds><d>")
    assert [t.name for t in tags] == ["b", "t", "rd", "ds", "d"]
    packet = amnezia.build_cps(tags, now=0x01020304)
    assert packet[:6] == b"\x01\x02\x01\x02\x03\x04" and packet[6:].isdigit()
    assert amnezia.parse_cps("no tags at all") == ()
    # AWG 2.0's packet counter (v0.2.15 tag_generator.go): 8 bytes, big-endian
    counted = amnezia.parse_cps("<b 0xaa><c>")
    assert amnezia.build_cps(counted, counter=258) == b"\xaa" + (258).to_bytes(8, "big")
    for bad in ("<c 1>", "<c><c>", "<>", "<b 0x1>", "<q>", "<r 70000>", "<b 0x01"):
        with pytest.raises(amnezia.AmneziaError):
            amnezia.parse_cps(bad)


@given(
    st.dictionaries(
        st.sampled_from(
            ["jc", "Jmin", "JMAX", "s1", "S2", "s3", "s4", "h1", "H2", "h3", "h4", "i1", "x"]
        ),
        st.text(max_size=12),
        max_size=13,
    )
)
def test_config_keys_parse_or_refuse_in_one_line(keys: dict[str, str]) -> None:
    try:
        params = AmneziaParams.from_keys(keys, "test")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert AmneziaParams.from_keys(dict(params.interface_keys()), "test") == params


def test_legacy_parameters_are_what_awg_1_peers_read() -> None:
    params = AmneziaParams.generate(legacy=True)
    keys = dict(params.interface_keys())
    assert "S3" not in keys and "S4" not in keys
    assert all(re.fullmatch(r"\d+", keys[f"H{n}"]) for n in range(1, 5))
    assert AmneziaParams.from_keys(keys, "test") == params
    client, server = pair(params)
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    assert server.to_wireguard(client.to_amnezia(initiator.initiation)[-1]) == initiator.initiation
