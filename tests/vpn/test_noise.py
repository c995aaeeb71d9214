"""The WireGuard handshake (initiator side) against fixed vectors and a test responder.

The vectors were derived here from fixed keys, ephemeral keys, timestamp and
indices; they agree with the independent responder in ``responder.py`` and
the same code completes real handshakes with wireguard-go
(``test_tunnel.py``), so they pin a known-good result.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ProtocolError
from resistance.vpn import keys, noise
from tests.vpn.responder import open_transport, respond

INITIATOR = keys.clamp(bytes(range(32)))
SERVER = keys.clamp(bytes(range(32, 64)))
EPHEMERAL_I = keys.clamp(bytes(range(64, 96)))
PSK = bytes(range(96, 128))
EPHEMERAL_R = keys.clamp(bytes(range(128, 160)))
TIMESTAMP = noise.tai64n(1_700_000_000_250_000_000)

INITIATION_HEX = (
    "010000000403020179a631eede1bf9c98f12032cdeadd0e7a079398fc786b88c"
    "c846ec89af85a51af0225eb421886af8f54fb31289d49dcd82b0f6f3279d40d7"
    "cff913fece0c64ad226eef3320755b393b72f16842c8d7ee78a74e937e3f2a82"
    "81125e41d9a47d0f4c7cc036df4fcb087de23df6a0aeb7c52ab3554922228272"
    "160691c500000000000000000000000000000000"
)
RESPONSE_HEX = (
    "020000000d0c0b0a04030201493e82fc74464a59268817623d2053c5eb8e2cc4"
    "a988b4fee179ec6b010d531d8eccb41ff4ae55c4bb2a7d37be976fc2e2a7b52c"
    "36f724209b79a2ae4b6bb73c00000000000000000000000000000000"
)
SEND_KEY_HEX = "65423cd41de2482efcdbe6f87a20fc0da51bb55c71b6f69e3149e024130bbefb"
RECEIVE_KEY_HEX = "6f025c593d13b50ea4ca8a4eff68aa8a6e73e23487c03ad75a7baf60e63cfca5"
KEEPALIVE_HEX = "040000000d0c0b0a00000000000000009fb9617c2f3bc56fb623ca1771fdbf07"


def fixed_initiator(psk: bytes | None = PSK, server_private: bytes = SERVER) -> noise.Initiator:
    return noise.Initiator(
        INITIATOR,
        noise.public_key(server_private),
        psk=psk,
        ephemeral_private=EPHEMERAL_I,
        timestamp=TIMESTAMP,
        sender_index=0x01020304,
    )


def test_known_public_keys() -> None:
    assert keys.encode(noise.public_key(INITIATOR)) == (
        "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8="
    )
    assert keys.encode(noise.public_key(SERVER)) == "NYBy1jZYgNGu6jKa35EhODhR7SGijjt16WXQ0s0WYlQ="


def test_tai64n_layout() -> None:
    assert TIMESTAMP.hex() == "400000006553f10a0ee6b280"
    seconds, nanos = struct.unpack(">QI", TIMESTAMP)
    assert seconds - 0x400000000000000A == 1_700_000_000
    assert nanos == 250_000_000


def test_initiation_vector() -> None:
    message = fixed_initiator().initiation
    assert len(message) == noise.INITIATION_LEN == 148
    assert message.hex() == INITIATION_HEX


def test_response_vector_gives_session_keys_and_keepalive() -> None:
    session = fixed_initiator().receive(bytes.fromhex(RESPONSE_HEX))
    assert session.remote_index == 0x0A0B0C0D
    assert session.send_key.hex() == SEND_KEY_HEX
    assert session.receive_key.hex() == RECEIVE_KEY_HEX
    assert session.keepalive().hex() == KEEPALIVE_HEX
    assert len(session.keepalive()) == noise.KEEPALIVE_LEN
    assert "key" not in repr(session).lower().replace("_index", "")


def test_independent_responder_agrees() -> None:
    initiator = fixed_initiator()
    answer = respond(
        initiator.initiation,
        SERVER,
        psk=PSK,
        ephemeral_private=EPHEMERAL_R,
        sender_index=0x0A0B0C0D,
    )
    assert answer.response.hex() == RESPONSE_HEX
    assert answer.initiator_public == noise.public_key(INITIATOR)
    assert answer.timestamp == TIMESTAMP
    session = initiator.receive(answer.response)
    assert (session.send_key, session.receive_key) == (answer.receive_key, answer.send_key)
    receiver, counter, plain = open_transport(session.transport(7, b"hello"), answer.receive_key)
    assert (receiver, counter, plain) == (0x0A0B0C0D, 7, b"hello")


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_any_keys_round_trip(
    client: bytes, server: bytes, psk: bytes | None, index_i: int, index_r: int
) -> None:
    client, server = keys.clamp(client), keys.clamp(server)
    initiator = noise.Initiator(client, noise.public_key(server), psk=psk, sender_index=index_i)
    answer = respond(
        initiator.initiation,
        server,
        psk=psk or bytes(32),
        ephemeral_private=keys.clamp(bytes(reversed(server))),
        sender_index=index_r,
    )
    session = initiator.receive(answer.response)
    assert session.send_key == answer.receive_key


def test_wrong_preshared_key_fails_to_decrypt() -> None:
    answer = respond(
        fixed_initiator(psk=None).initiation,
        SERVER,
        psk=PSK,
        ephemeral_private=EPHEMERAL_R,
        sender_index=9,
    )
    with pytest.raises(noise.HandshakeError, match="decrypt"):
        fixed_initiator(psk=None).receive(answer.response)


def test_response_from_another_server_key_is_refused() -> None:
    impostor = keys.clamp(bytes(range(200, 232)))
    # The impostor answers an initiation made for it, but we expected SERVER.
    made_for_impostor = fixed_initiator(server_private=impostor)
    answer = respond(
        made_for_impostor.initiation,
        impostor,
        psk=PSK,
        ephemeral_private=EPHEMERAL_R,
        sender_index=5,
    )
    with pytest.raises(noise.HandshakeError):
        fixed_initiator().receive(answer.response)


def test_tampered_or_foreign_datagrams_are_refused() -> None:
    good = bytes.fromhex(RESPONSE_HEX)
    initiator = fixed_initiator()
    for i in (0, 8, 12, 50, 70):
        bad = bytearray(good)
        bad[i] ^= 1
        with pytest.raises(noise.HandshakeError):
            initiator.receive(bytes(bad))
    with pytest.raises(noise.HandshakeError, match="91 bytes"):
        initiator.receive(good[:-1])
    # A cookie reply for another handshake, or one that does not decrypt, is refused.
    with pytest.raises(noise.HandshakeError, match="another handshake") as caught:
        initiator.receive(b"\x03\x00\x00\x00" + bytes(60))
    assert not isinstance(caught.value, noise.CookieReply)
    with pytest.raises(noise.HandshakeError, match="does not decrypt"):
        initiator.receive(b"\x03\x00\x00\x00\x04\x03\x02\x01" + bytes(56))
    # Still usable after garbage: the genuine response is accepted.
    assert initiator.receive(good).remote_index == 0x0A0B0C0D


@given(st.binary(max_size=200))
def test_any_datagram_is_a_session_or_a_protocol_error(data: bytes) -> None:
    try:
        fixed_initiator().receive(data)
    except ProtocolError:
        pass


def test_mac1_uses_server_key() -> None:
    message = fixed_initiator().initiation
    key = noise.blake2s(noise.LABEL_MAC1, noise.public_key(SERVER))
    assert noise.mac(key, message[:116]) == message[116:132]
    assert message[132:] == bytes(16)
