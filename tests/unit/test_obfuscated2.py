"""obfuscated2 init and MTProto framings (resistance.proto.obfuscated2).

Interoperability is checked against Telethon's own client code (its MTProxy
and plain obfuscated2 header generators and packet codecs), not only against
our own generator, so that a shared misunderstanding cannot pass.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon.network.connection.tcpabridged import AbridgedPacketCodec
from telethon.network.connection.tcpintermediate import (
    IntermediatePacketCodec,
    RandomizedIntermediatePacketCodec,
)
from telethon.network.connection.tcpmtproxy import MTProxyIO
from telethon.network.connection.tcpobfuscated import ObfuscatedIO

from resistance.errors import BufferOverflow, ProtocolError
from resistance.proto.obfuscated2 import (
    FORBIDDEN_PREFIXES,
    INIT_LEN,
    FrameDecoder,
    Packet,
    ProtocolTag,
    encode_frame,
    generate_init,
    init_is_allowed,
    parse_init,
)

SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
CODECS = {
    ProtocolTag.ABRIDGED: AbridgedPacketCodec,
    ProtocolTag.INTERMEDIATE: IntermediatePacketCodec,
    ProtocolTag.PADDED: RandomizedIntermediatePacketCodec,
}


@pytest.mark.parametrize("tag", list(ProtocolTag))
@pytest.mark.parametrize("dc", [1, 2, -4, 5, 10003])
def test_telethon_mtproxy_init_parses(tag: ProtocolTag, dc: int) -> None:
    header, encrypt, decrypt = MTProxyIO.init_header(SECRET, dc, CODECS[tag])
    init = parse_init(bytes(header), SECRET)
    assert init.tag is tag
    assert init.dc == dc
    # Both directions: what Telethon encrypts we decrypt, and back.
    assert init.decryptor.update(encrypt.encrypt(b"ping" * 5)) == b"ping" * 5
    assert decrypt.encrypt(init.encryptor.update(b"pong" * 7)) == b"pong" * 7


def test_telethon_plain_obfuscated_init_parses_without_secret() -> None:
    header, encrypt, decrypt = ObfuscatedIO.init_header(AbridgedPacketCodec)
    init = parse_init(bytes(header))
    assert init.tag is ProtocolTag.ABRIDGED
    assert init.decryptor.update(encrypt.encrypt(b"abcd")) == b"abcd"
    assert decrypt.encrypt(init.encryptor.update(b"wxyz")) == b"wxyz"


def test_wrong_secret_is_refused() -> None:
    header, _, _ = MTProxyIO.init_header(SECRET, 2, IntermediatePacketCodec)
    with pytest.raises(ProtocolError, match="protocol tag"):
        parse_init(bytes(header), bytes(16))


def test_truncated_init_is_refused() -> None:
    wire, _ = generate_init(ProtocolTag.PADDED, 2, SECRET)
    with pytest.raises(ProtocolError, match="64 bytes"):
        parse_init(wire[:63], SECRET)


@pytest.mark.parametrize("secret", [None, SECRET])
def test_generated_init_roundtrip(secret: bytes | None) -> None:
    wire, ours = generate_init(ProtocolTag.INTERMEDIATE, -3, secret)
    assert len(wire) == INIT_LEN and init_is_allowed(wire)
    theirs = parse_init(wire, secret)
    assert (theirs.tag, theirs.dc) == (ProtocolTag.INTERMEDIATE, -3)
    assert theirs.decryptor.update(ours.encryptor.update(b"x" * 100)) == b"x" * 100
    assert ours.decryptor.update(theirs.encryptor.update(b"y" * 100)) == b"y" * 100


def test_generated_init_without_secret_is_what_telethon_would_send() -> None:
    # The DC side of Telethon's plain obfuscated2 uses the raw key bytes: ours must too.
    wire, ours = generate_init(ProtocolTag.ABRIDGED, 2)
    key, iv = wire[8:40], wire[40:56]
    from telethon.crypto import AESModeCTR

    assert AESModeCTR(key, iv).encrypt(bytes(64))[:8] != bytes(8)
    stream = AESModeCTR(key, iv)
    stream.encrypt(bytes(64))
    assert stream.encrypt(b"data") == ours.encryptor.update(b"data")


def test_fast_mode_shares_keystream_with_client_leg() -> None:
    client_wire, client = generate_init(ProtocolTag.PADDED, 2, SECRET)
    node_client_leg = parse_init(client_wire, SECRET)
    dc_wire, _node_dc_leg = generate_init(
        node_client_leg.tag, node_client_leg.dc, reply_key_iv=node_client_leg.reply_key_iv
    )
    dc = parse_init(dc_wire)
    # Bytes the DC encrypts reach the client unchanged and decrypt there.
    assert client.decryptor.update(dc.encryptor.update(b"resPQ...")) == b"resPQ..."


def test_forbidden_prefixes_are_never_generated() -> None:
    counter = iter(range(10))

    def rigged(n: int) -> bytes:
        i = next(counter)
        if i < len(FORBIDDEN_PREFIXES):
            return FORBIDDEN_PREFIXES[i] + bytes(n - 4)
        return b"\x01" * n

    wire, _ = generate_init(ProtocolTag.ABRIDGED, 1, random=rigged)
    assert wire[:8] == b"\x01" * 8


@pytest.mark.parametrize(
    "prefix",
    [b"\xef\x00\x00\x00\x01\x01\x01\x01", b"GET /xyz", b"\x01\x02\x03\x04\x00\x00\x00\x00"],
)
def test_init_is_allowed_rules(prefix: bytes) -> None:
    assert not init_is_allowed(prefix + bytes(56))


def test_generate_init_validates_arguments() -> None:
    with pytest.raises(ValueError):
        generate_init(ProtocolTag.ABRIDGED, 40000)
    with pytest.raises(ValueError):
        generate_init(ProtocolTag.ABRIDGED, 1, b"short")
    with pytest.raises(ValueError):
        generate_init(ProtocolTag.ABRIDGED, 1, SECRET, reply_key_iv=bytes(48))


# -- frames ---------------------------------------------------------------------


@pytest.mark.parametrize("tag", list(ProtocolTag))
@pytest.mark.parametrize("size", [0, 4, 504, 508, 4096, 70000])
def test_telethon_frames_decode(tag: ProtocolTag, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    wire = CODECS[tag](None).encode_packet(payload)
    # Whole, one byte at a time, and with trailing bytes.
    assert FrameDecoder(tag).feed(wire) == [Packet(payload)]
    decoder = FrameDecoder(tag)
    got = [p for i in range(len(wire)) for p in decoder.feed(wire[i : i + 1])]
    assert got == [Packet(payload)]
    decoder = FrameDecoder(tag)
    trailing = CODECS[tag](None).encode_packet(bytes(512))[:3]
    assert decoder.feed(wire + trailing) == [Packet(payload)]
    assert decoder.buffered == 3


@pytest.mark.parametrize("tag", list(ProtocolTag))
def test_encode_frame_matches_hand_written_layout(tag: ProtocolTag) -> None:
    frame = encode_frame(tag, b"ABCDEFGH", random=lambda n: b"\xaa" * n)
    if tag is ProtocolTag.ABRIDGED:
        assert frame == b"\x02ABCDEFGH"
    elif tag is ProtocolTag.INTERMEDIATE:
        assert frame == b"\x08\x00\x00\x00ABCDEFGH"
    else:
        (length,) = struct.unpack_from("<I", frame)
        assert 8 <= length <= 11 and frame[4:12] == b"ABCDEFGH"
        assert frame[12:] == b"\xaa" * (length - 8)


def test_abridged_long_form_and_quick_ack() -> None:
    frame = encode_frame(ProtocolTag.ABRIDGED, bytes(127 * 4), quick_ack=True)
    assert frame[:4] == b"\xff\x7f\x00\x00"
    assert FrameDecoder(ProtocolTag.ABRIDGED).feed(frame) == [Packet(bytes(508), True)]


def test_oversized_frame_is_refused_before_its_body() -> None:
    decoder = FrameDecoder(ProtocolTag.INTERMEDIATE, max_packet=1024)
    with pytest.raises(BufferOverflow):
        decoder.feed(struct.pack("<I", 2048))
    decoder = FrameDecoder(ProtocolTag.ABRIDGED, max_packet=1024)
    with pytest.raises(BufferOverflow):
        decoder.feed(b"\x7f\x00\x10\x00")


def test_intermediate_frame_of_partial_words_is_refused() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder(ProtocolTag.INTERMEDIATE).feed(b"\x05\x00\x00\x00abcde")


def test_encode_frame_refuses_partial_words() -> None:
    with pytest.raises(ValueError):
        encode_frame(ProtocolTag.PADDED, b"abc")


# -- fuzz -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.one_of(st.none(), st.binary(min_size=16, max_size=16)))
def test_parse_init_fuzz(data: bytes, secret: bytes | None) -> None:
    try:
        init = parse_init(data, secret)
    except ProtocolError:
        return
    assert len(data) == INIT_LEN and init.tag in ProtocolTag


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(ProtocolTag)), st.binary(max_size=600), st.integers(1, 50))
def test_frame_decoder_fuzz(tag: ProtocolTag, data: bytes, step: int) -> None:
    decoder = FrameDecoder(tag, max_packet=256)
    try:
        for i in range(0, len(data), step):
            for packet in decoder.feed(data[i : i + step]):
                assert len(packet.payload) <= 256
    except ProtocolError:
        return
    assert decoder.buffered <= 256 + 4 + step


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(ProtocolTag)),
    st.lists(st.binary(max_size=300).map(lambda b: b[: len(b) - len(b) % 4]), max_size=8),
    st.integers(1, 40),
)
def test_frame_roundtrip(tag: ProtocolTag, payloads: list[bytes], step: int) -> None:
    wire = b"".join(encode_frame(tag, p) for p in payloads)
    decoder = FrameDecoder(tag)
    got = [p.payload for i in range(0, len(wire), step) for p in decoder.feed(wire[i : i + step])]
    assert got == payloads and decoder.buffered == 0
