"""AWG 3: header protection, random trailers, content padding (amneziawg-go 1b86b2a).

Known answers are built here from the rules as read in amneziawg-go (the
module docstring of :mod:`resistance.vpn.amnezia`), with ChaCha20 taken from
``cryptography`` directly, not through the code under test.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resistance.errors import ConfigError
from resistance.vpn import amnezia, clientconf, noise
from resistance.vpn.amnezia import AmneziaError, AmneziaParams, HeaderRange, Rewriter
from resistance.vpn.noise import MessageType
from resistance.vpn.translator import _native_module

SERVER = os.urandom(32)
CLIENT = os.urandom(32)
SERVER_PUB = noise.public_key(SERVER)
CLIENT_PUB = noise.public_key(CLIENT)
KEY = bytes(range(100, 132))

PARAMS = AmneziaParams(
    jc=2,
    jmin=40,
    jmax=60,
    s1=20,
    s2=30,
    s3=13,
    s4=12,
    h1=HeaderRange(1000, 1099),
    h2=HeaderRange(2000, 2000),
    h3=HeaderRange(3000, 3010),
    h4=HeaderRange(4000, 4_000_000),
    header_protection_key=KEY,
)
TRAILERS = replace(PARAMS, random_trailers=True)


def chacha(key: bytes, nonce: bytes, n: int) -> bytes:
    """ChaCha20 keystream, block counter 0: written here, not amnezia.keystream."""
    enc = Cipher(algorithms.ChaCha20(key, struct.pack("<I", 0) + nonce), mode=None).encryptor()
    return enc.update(bytes(n))


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def pair(params: AmneziaParams = PARAMS) -> tuple[Rewriter, Rewriter]:
    client = Rewriter(params, wireguard_public=CLIENT_PUB, amnezia_publics=lambda: [SERVER_PUB])
    server = Rewriter(params, wireguard_public=SERVER_PUB, amnezia_publics=lambda: [CLIENT_PUB])
    return client, server


def fake_response(receiver: int, sender: int = 77) -> bytes:
    body = struct.pack("<BxxxII", 2, sender, receiver) + os.urandom(48)
    return body + noise.mac(amnezia.mac1_key(CLIENT_PUB), body) + bytes(16)


# --- ChaCha20 ------------------------------------------------------------------

# RFC 8439, appendix A.1, test vector #1: key and nonce zero, block counter 0
A1_BLOCK0 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)
# RFC 8439, section 2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, counter 1
S232_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)


def test_python_keystream_is_rfc_8439_chacha20_from_counter_zero() -> None:
    assert amnezia.keystream(bytes(32), bytes(12), 64) == A1_BLOCK0
    assert amnezia.keystream(bytes(32), bytes(12), 4) == A1_BLOCK0[:4]


awg = _native_module()
native = pytest.mark.skipif(awg is None, reason="resistance.vpn._awg is not built here")


@native
def test_c_block_function_matches_the_rfc_vectors_and_cryptography() -> None:
    assert awg is not None
    assert awg.chacha20_block(bytes(32), 0, bytes(12)) == A1_BLOCK0
    nonce = bytes.fromhex("000000090000004a00000000")
    assert awg.chacha20_block(bytes(range(32)), 1, nonce) == S232_BLOCK
    for _ in range(50):
        key, nonce = os.urandom(32), os.urandom(12)
        assert awg.chacha20_block(key, 0, nonce) == chacha(key, nonce, 64)
    with pytest.raises(ValueError):
        awg.chacha20_block(bytes(31), 0, bytes(12))
    with pytest.raises(ValueError):
        awg.chacha20_block(bytes(32), 0, bytes(8))


# --- known answers: byte layouts with the parameters applied ----------------------


def test_initiation_is_masked_whole_with_the_padding_as_nonce() -> None:
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    client, server = pair()
    out = client.to_amnezia(initiator.initiation)
    assert len(out) == 2 + 1  # Jc junk, then the initiation
    wire = out[-1]
    assert len(wire) == 20 + 148  # no trailers: exactly S1 + 148
    body = xor(wire[20:], chacha(KEY, wire[:12], 148))
    (header,) = struct.unpack_from("<I", body)
    assert header in PARAMS.h1
    assert body[4:116] == initiator.initiation[4:116]
    # mac1 over the message with its H1 value, before masking (send.go: AddMacs, then XOR)
    assert body[116:132] == noise.mac(amnezia.mac1_key(SERVER_PUB), body[:116])
    # and the wire shows neither the H value nor the sender index in the clear
    assert wire[20:28] != body[:8]
    assert server.to_wireguard(wire) == initiator.initiation


def test_response_and_cookie_reply_are_masked_whole() -> None:
    client, server = pair()
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    server.to_wireguard(client.to_amnezia(initiator.initiation)[-1])
    response = fake_response(initiator.sender_index)
    (wire,) = server.to_amnezia(response)
    assert len(wire) == 30 + 92
    body = xor(wire[30:], chacha(KEY, wire[:12], 92))
    assert struct.unpack_from("<I", body)[0] in PARAMS.h2
    assert body[4:60] == response[4:60]
    assert amnezia.classify(PARAMS, wire) is MessageType.RESPONSE
    assert client.to_wireguard(wire) == response


def test_transport_masks_only_its_16_byte_header() -> None:
    client, server = pair()
    server.wireguard_indices[77] = None
    transport = struct.pack("<IIQ", 4, 77, 123456789) + os.urandom(64)
    (wire,) = client.to_amnezia(transport)
    assert len(wire) == 12 + len(transport)
    header = xor(wire[12:28], chacha(KEY, wire[:12], 16))
    assert struct.unpack_from("<I", header)[0] in PARAMS.h4
    assert header[4:16] == transport[4:16]
    assert wire[28:] == transport[16:]  # the encrypted payload is left alone
    assert server.to_wireguard(wire) == transport


def test_every_message_type_round_trips_with_header_protection_and_trailers() -> None:
    for params in (PARAMS, TRAILERS):
        client, server = pair(params)
        initiator = noise.Initiator(CLIENT, SERVER_PUB)
        wire = client.to_amnezia(initiator.initiation)[-1]
        assert server.to_wireguard(wire) == initiator.initiation
        response = fake_response(initiator.sender_index)
        (wire,) = server.to_amnezia(response)
        assert client.to_wireguard(wire) == response
        transport = struct.pack("<IIQ", 4, 77, 1) + os.urandom(48)
        (wire,) = client.to_amnezia(transport)
        assert server.to_wireguard(wire) == transport
        back = struct.pack("<IIQ", 4, initiator.sender_index, 9) + os.urandom(16)
        (wire,) = server.to_amnezia(back)
        assert client.to_wireguard(wire) == back


def test_random_trailers_lengthen_handshakes_up_to_the_udp_window() -> None:
    client, server = pair(TRAILERS)
    sizes = set()
    for _ in range(40):
        initiator = noise.Initiator(CLIENT, SERVER_PUB)
        wire = client.to_amnezia(initiator.initiation)[-1]
        assert 20 + 148 <= len(wire) < amnezia.UDP_WINDOW
        sizes.add(len(wire))
        assert server.to_wireguard(wire) == initiator.initiation
    assert len(sizes) > 10  # random, not one size
    # a receiver without RandomTrailers wants the exact size and drops the rest
    _, strict = pair(PARAMS)
    initiator = noise.Initiator(CLIENT, SERVER_PUB)
    wire = client.to_amnezia(initiator.initiation)[-1]
    longer = wire + b"\x00" if len(wire) == 168 else wire
    assert strict.to_wireguard(longer) is None
    # transport gets no trailer: its tail is inside WireGuard's AEAD
    (wire,) = client.to_amnezia(struct.pack("<IIQ", 4, 77, 1) + bytes(32))
    assert len(wire) == 12 + 48


def test_wrong_key_and_unprotected_datagrams_never_reach_wireguard() -> None:
    other = replace(PARAMS, header_protection_key=os.urandom(32))
    plain = replace(PARAMS, header_protection_key=b"")
    for sender_params in (other, plain):
        client, _ = pair(sender_params)
        _, server = pair(PARAMS)
        server.wireguard_indices[77] = None
        initiator = noise.Initiator(CLIENT, SERVER_PUB)
        assert server.to_wireguard(client.to_amnezia(initiator.initiation)[-1]) is None
        (wire,) = client.to_amnezia(struct.pack("<IIQ", 4, 77, 1) + bytes(32))
        assert server.to_wireguard(wire) is None


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_junk_never_reaches_wireguard(datagram: bytes) -> None:
    for params in (PARAMS, TRAILERS):
        _, server = pair(params)
        server.wireguard_indices[77] = None
        assert server.to_wireguard(datagram) is None


@settings(max_examples=100)
@given(st.binary(min_size=24, max_size=1400), st.integers(0, 2**32 - 1), st.booleans())
def test_every_transport_round_trips(payload: bytes, index: int, trailers: bool) -> None:
    params = TRAILERS if trailers else PARAMS
    client, server = pair(params)
    server.wireguard_indices[index] = None
    transport = struct.pack("<II", 4, index) + payload
    (wire,) = client.to_amnezia(transport)
    kind = amnezia.classify(params, wire)
    # with trailers on, a transport message long enough for a handshake whose masked
    # bytes at that handshake's offset fall in its H range is taken for it (as in
    # amneziawg-go, which tries handshakes first): rare with narrow H1..H3
    assert server.to_wireguard(wire) == (transport if kind is MessageType.TRANSPORT else None)


# --- parameters and configs ----------------------------------------------------------


def test_header_protection_needs_every_s_at_least_12() -> None:
    for name in ("s1", "s2", "s3", "s4"):
        with pytest.raises(AmneziaError, match=r"S\d 11 is below 12"):
            replace(PARAMS, **{name: 11})
    with pytest.raises(AmneziaError, match="32 bytes"):
        replace(PARAMS, header_protection_key=bytes(16))
    # an all-zero key is "off" (HeaderCipherKey.IsZero), so small S are fine then
    off = replace(PARAMS, header_protection_key=bytes(32), s4=1)
    assert off.header_protection_key == b"" and off.version == "AWG 2"


def test_generated_awg3_parameters() -> None:
    for _ in range(20):
        p = AmneziaParams.generate(awg3=True)
        assert len(p.header_protection_key) == 32 and p.random_trailers
        assert min(p.s1, p.s2, p.s3, p.s4) >= 12 and p.s4 <= 24
        assert all(h.hi - h.lo <= 255 for h in (p.h1, p.h2, p.h3))
        assert p.version == "AWG 3"
        assert p == AmneziaParams.from_json(p.to_json(), "state")
    with pytest.raises(AmneziaError):
        AmneziaParams.generate(awg3=True, legacy=True)
    assert AmneziaParams.generate().version == "AWG 2"
    assert AmneziaParams.generate(legacy=True).version == "AWG 1"


CONFIG = """[Interface]
PrivateKey = {priv}
Address = 10.66.0.2/32
Jc = 4
Jmin = 40
Jmax = 70
S1 = 20
S2 = 30
S3 = 13
S4 = 12
H1 = 1000-1099
H2 = 2000
H3 = 3000-3010
H4 = 4000-4000000
{extra}
[Peer]
PublicKey = {pub}
Endpoint = 127.0.0.1:51821
AllowedIPs = 0.0.0.0/0
"""


def config(extra: str) -> str:
    return CONFIG.format(
        priv=base64.b64encode(CLIENT).decode(),
        pub=base64.b64encode(SERVER_PUB).decode(),
        extra=extra,
    )


def test_client_configs_with_the_awg3_keys_read_and_render_back() -> None:
    key = base64.b64encode(KEY).decode()
    text = config(
        f"HeaderProtectionKey = {key}\nRandomTrailers = on\nContentPaddingAddition = 10-20\n"
    )
    parsed = clientconf.parse(text)
    assert parsed.amnezia is not None
    p = parsed.amnezia
    assert p.header_protection_key == KEY and p.random_trailers
    assert p.content_padding_addition == HeaderRange(10, 20)
    assert "not applied by the translator" in p.in_force()
    keys = dict(p.interface_keys())
    assert keys["HeaderProtectionKey"] == key
    assert keys["RandomTrailers"] == "on"
    assert keys["ContentPaddingAddition"] == "10-20"
    assert clientconf.parse(clientconf.render(parsed)).amnezia == p
    # amneziawg-tools' parse_bool: on/off, or a number
    assert clientconf.parse(config("RandomTrailers = 0\n")).amnezia.random_trailers is False  # type: ignore[union-attr]
    assert clientconf.parse(config("randomtrailers = OFF\n")).amnezia.random_trailers is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("HeaderProtectionKey = abc\n", "bad HeaderProtectionKey"),
        (f"HeaderProtectionKey = {base64.b64encode(bytes(31)).decode()}\n", "HeaderProtectionKey"),
        ("RandomTrailers = maybe\n", "bad RandomTrailers"),
        ("RandomTrailers = true\n", "bad RandomTrailers"),  # awg-quick refuses it too
        ("ContentPaddingAddition = 70000\n", "bad ContentPaddingAddition"),
        ("ContentPaddingAddition = 20-10\n", "bad ContentPaddingAddition"),
        ("ContentPaddingAddition = lots\n", "bad ContentPaddingAddition"),
    ],
)
def test_bad_awg3_values_are_refused_in_one_line(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        clientconf.parse(config(extra))
    assert "\n" not in str(info.value)


def test_small_padding_with_a_key_is_refused_in_one_line() -> None:
    key = base64.b64encode(KEY).decode()
    text = config(f"HeaderProtectionKey = {key}\n").replace("S4 = 12", "S4 = 5")
    with pytest.raises(ConfigError, match="S4 5 is below 12"):
        clientconf.parse(text)


# --- the C path against the Python rewriter ---------------------------------------------


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def raw(sock: socket.socket) -> bytes:
    host, port = sock.getsockname()
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton(host)
        + bytes(8)
    )


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    trio = (udp(), udp(), udp())
    yield trio
    for sock in trio:
        sock.close()


def handshake_sizes(p: AmneziaParams) -> tuple[int, int, int]:
    return tuple(p.padding(t) + amnezia.BASE_SIZE[t] for t in amnezia._ORDER[:3])  # type: ignore[return-value]


def candidates(p: AmneziaParams) -> tuple[tuple[int, int, int, int], ...]:
    if not p.random_trailers:
        return ()
    return tuple(
        (p.padding(t) + amnezia.BASE_SIZE[t], p.padding(t), p.header(t).lo, p.header(t).hi)
        for t in amnezia._ORDER[:3]
    )


def relay(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
    p: AmneziaParams,
    datagrams: list[bytes],
    *,
    to_wireguard: bool,
    indices: dict[int, None] | None,
) -> tuple[list[bytes], int, int, list[bytes]]:
    sender, middle, target = sockets
    for datagram in datagrams:
        sender.sendto(datagram, middle.getsockname())
    assert awg is not None
    route = (middle.fileno(), raw(target), indices, object())
    slow, _received, sent, dropped, _ = awg.relay(
        middle.fileno(),
        to_wireguard,
        p.s4,
        p.h4.lo,
        p.h4.hi,
        handshake_sizes(p) if to_wireguard else (-1, -1, -1),
        route,
        -1,
        p.header_protection_key or None,
        candidates(p),
    )
    return [d for d, _ in slow], sent, dropped, drain(target)


def transports(p: AmneziaParams) -> st.SearchStrategy[bytes]:
    client, _ = pair(p)
    return st.tuples(st.sampled_from([77, 78]), st.binary(min_size=24, max_size=600)).map(
        lambda t: client.to_amnezia(struct.pack("<II", 4, t[0]) + t[1])[0]
    )


def handshakes(p: AmneziaParams) -> st.SearchStrategy[bytes]:
    client, _ = pair(p)
    return st.just(0).map(
        lambda _: client.to_amnezia(noise.Initiator(CLIENT, SERVER_PUB).initiation)[-1]
    )


@native
@pytest.mark.parametrize("p", [PARAMS, TRAILERS], ids=["protected", "protected+trailers"])
def test_c_to_wireguard_is_what_the_rewriter_does(
    sockets: tuple[socket.socket, socket.socket, socket.socket], p: AmneziaParams
) -> None:
    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.lists(
            st.one_of(transports(p), handshakes(p), st.binary(max_size=300)),
            max_size=30,
        )
    )
    def check(datagrams: list[bytes]) -> None:
        _, python = pair(p)
        python.wireguard_indices[77] = None  # 78 is an index WireGuard never announced
        slow, sent, dropped, out = relay(
            sockets, p, datagrams, to_wireguard=True, indices=python.wireguard_indices
        )
        # what C forwarded or dropped, Python forwards or drops the same way
        fast = [d for d in datagrams if d not in slow]
        expected = [python.to_wireguard(d) for d in fast]
        assert out == [e for e in expected if e is not None]
        assert (sent, dropped) == (len(out), expected.count(None))
        # and C hands Python every handshake, trailers or not
        for d in datagrams:
            kind = amnezia.classify(p, d)
            if kind is not None and kind is not MessageType.TRANSPORT:
                assert d in slow

    check()


@native
def test_c_to_amnezia_masks_headers_that_python_unmasks(
    sockets: tuple[socket.socket, socket.socket, socket.socket],
) -> None:
    @settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.binary(min_size=28, max_size=1400), min_size=1, max_size=30))
    def check(payloads: list[bytes]) -> None:
        datagrams = [b"\x04\x00\x00\x00" + x for x in payloads]
        slow, sent, dropped, out = relay(
            sockets, PARAMS, datagrams, to_wireguard=False, indices=None
        )
        assert (slow, sent, dropped) == ([], len(datagrams), 0)
        _, python = pair(PARAMS)
        for original, wire in zip(datagrams, out, strict=True):
            assert len(wire) == PARAMS.s4 + len(original)
            header = xor(wire[12:28], chacha(KEY, wire[:12], 16))
            assert struct.unpack_from("<I", header)[0] in PARAMS.h4
            assert header[4:] == original[4:16] and wire[28:] == original[16:]
            python.wireguard_indices[int.from_bytes(original[4:8], "little")] = None
            assert python.to_wireguard(wire) == original

    check()


@native
def test_c_refuses_a_bad_key_or_candidates() -> None:
    assert awg is not None
    with udp() as sock:
        args = (sock.fileno(), True, 12, 5, 9, (1, 2, 3), (sock.fileno(), None, None, None), -1)
        with pytest.raises(ValueError):
            awg.relay(*args, bytes(31))
        with pytest.raises(ValueError):
            awg.relay(sock.fileno(), True, 5, 5, 9, (1, 2, 3), args[6], -1, bytes(32))
        with pytest.raises(TypeError):
            awg.relay(*args, None, [(1, 2, 3, 4)])
        with pytest.raises(ValueError):
            awg.relay(*args, None, ((10, 20, 0, 1),))


@native
@pytest.mark.parametrize("p", [PARAMS, TRAILERS], ids=["protected", "protected+trailers"])
def test_c_forwards_protected_transport_and_hands_over_trailing_handshakes(
    sockets: tuple[socket.socket, socket.socket, socket.socket], p: AmneziaParams
) -> None:
    client, _ = pair(p)
    transports = [
        client.to_amnezia(struct.pack("<IIQ", 4, 77, n) + os.urandom(80))[0] for n in range(8)
    ]
    initiation = client.to_amnezia(noise.Initiator(CLIENT, SERVER_PUB).initiation)[-1]
    slow, sent, dropped, out = relay(
        sockets, p, [*transports, initiation], to_wireguard=True, indices={77: None}
    )
    assert slow == [initiation] and (sent, dropped) == (8, 0)
    for n, datagram in enumerate(out):
        assert datagram[:16] == struct.pack("<IIQ", 4, 77, n)


def test_the_app_link_carries_the_awg3_keys() -> None:
    import json

    from resistance.vpn.applink import app_link, read_app_link

    key = base64.b64encode(KEY).decode()
    text = config(f"HeaderProtectionKey = {key}\nRandomTrailers = on\n")
    (container,) = read_app_link(app_link(text, description="t"))["containers"]
    last = json.loads(container["awg"]["last_config"])
    assert last["config"] == text
    assert (last["HeaderProtectionKey"], last["RandomTrailers"]) == (key, "on")


@native
@pytest.mark.parametrize("p", [PARAMS, TRAILERS], ids=["protected", "protected+trailers"])
def test_a_strangers_initiation_reaches_python_and_its_junk_does_not(
    sockets: tuple[socket.socket, socket.socket, socket.socket], p: AmneziaParams
) -> None:
    sender, middle, target = sockets
    assert awg is not None
    client, _ = pair(p)
    wire = client.to_amnezia(noise.Initiator(CLIENT, SERVER_PUB).initiation)
    initiation, junk = wire[-1], wire[:-1]
    if p.random_trailers:  # make sure this one has a trailer: C must still let it through
        initiation += os.urandom(7)
    junk += [os.urandom(n) for n in (32, 100, 20 + 148, 300, 499)]
    for datagram in [*junk, initiation]:
        sender.sendto(datagram, middle.getsockname())
    routes = {raw(target): (target.fileno(), None, {}, "flow")}  # not the sender's
    slow, received, sent, dropped, _ = awg.relay(
        middle.fileno(), True, p.s4, p.h4.lo, p.h4.hi, handshake_sizes(p), routes,
        handshake_sizes(p)[0], p.header_protection_key or None, candidates(p),
    )  # fmt: skip
    # random bytes of the initiation's exact size go to Python (it drops them on mac1)
    exact = [d for d in junk if len(d) == 20 + 148]
    assert [d for d, _ in slow] == [*exact, initiation]
    assert (received, sent, dropped) == (len(junk) + 1, 0, len(junk) - len(exact))
    _, server = pair(p)
    assert server.to_wireguard(initiation) is not None
