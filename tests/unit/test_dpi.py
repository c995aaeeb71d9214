"""The censor's parsers: ClientHello -> server name, JA3/JA4; IPv4/TCP frames."""

from __future__ import annotations

import hashlib
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.lab import dpi

GREASE = [0x0A0A + 0x1010 * i for i in range(16)]
names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,3}", fullmatch=True)
u16 = st.integers(0, 0xFFFF)


def test_grease_values_are_exactly_rfc8701s() -> None:
    assert [v for v in range(0x10000) if dpi.is_grease(v)] == GREASE


def test_real_openssl_hello_gives_its_server_name_and_alpn() -> None:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    hello = dpi.parse_client_hello(dpi.hello_of(ctx, "Blocked.Example.org"))
    assert hello.complete
    assert hello.server_name == "blocked.example.org"
    assert hello.alpn == [b"h2", b"http/1.1"]
    assert 0x1301 in hello.ciphers and 0x0304 in hello.supported_versions
    ja4 = hello.ja4()
    assert ja4.startswith("t13d") and ja4[8:10] == "h2"


def test_own_client_sends_no_sni_and_its_fingerprint_is_stable() -> None:
    from resistance.node.tlscert import pinning_client_context

    one = dpi.parse_client_hello(dpi.hello_of(pinning_client_context(), "198.18.10.1"))
    two = dpi.parse_client_hello(dpi.hello_of(pinning_client_context(), "198.18.11.1"))
    assert one.server_name is None
    assert one.ja4() == two.ja4() == dpi.own_client_fingerprint()
    assert one.ja4()[3] == "i"  # no SNI
    named = dpi.own_client_fingerprints()[1]
    assert dpi.own_client_fingerprints()[0] == one.ja4() and named[3] == "d" and named != one.ja4()
    # another client (SNI and ALPN, as curl sends) has another fingerprint
    other = ssl.create_default_context()
    other.set_alpn_protocols(["http/1.1"])
    assert dpi.parse_client_hello(dpi.hello_of(other, "a.example")).ja4() != one.ja4()


def test_ja3_of_a_known_hello() -> None:
    hello = dpi.build_client_hello(
        ciphers=[0x0A0A, 0x1301, 0xC02F],
        extensions=[
            (0x0A0A, b""),
            dpi.sni_extension("x.example"),
            (0x000A, b"\x00\x04\x0a\x0a\x00\x1d"),
            (0x000B, b"\x01\x00"),
        ],
    )
    parsed = dpi.parse_client_hello(hello)
    assert parsed.ja3_string() == "771,4865-49199,0-10-11,29,0"
    assert parsed.ja3() == hashlib.md5(b"771,4865-49199,0-10-11,29,0").hexdigest()


def test_ja4_follows_the_published_recipe() -> None:
    sigs = struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)
    hello = dpi.build_client_hello(
        ciphers=[0x1A1A, 0x1302, 0x1301],
        extensions=[
            dpi.sni_extension("x.example"),
            (0x0010, b"\x00\x03\x02h2"),
            (0x002B, b"\x04\x03\x04\x03\x03"),
            (0x000D, sigs),
            (0x2A2A, b""),
        ],
    )
    ja4 = dpi.parse_client_hello(hello).ja4()
    b = hashlib.sha256(b"1301,1302").hexdigest()[:12]
    c = hashlib.sha256(b"000d,002b_0403,0804,0401").hexdigest()[:12]
    assert ja4 == f"t13d0204h2_{b}_{c}"


@given(
    name=names,
    ciphers=st.lists(u16, min_size=1, max_size=40),
    extra=st.lists(st.tuples(st.integers(0x0100, 0xFFFF), st.binary(max_size=20)), max_size=8),
)
def test_built_hellos_round_trip(
    name: str, ciphers: list[int], extra: list[tuple[int, bytes]]
) -> None:
    extra = [(k, v) for k, v in extra if k != dpi.EXT_ALPN and k != dpi.EXT_SUPPORTED_VERSIONS]
    extra = [(k, v) for k, v in extra if k not in (0x000A, 0x000B, 0x000D)]
    hello = dpi.parse_client_hello(
        dpi.build_client_hello(ciphers=ciphers, extensions=[dpi.sni_extension(name), *extra])
    )
    assert hello.complete and hello.server_name == name
    assert hello.ciphers == ciphers
    assert hello.extensions == [0, *(k for k, _ in extra)]
    # GREASE never changes a fingerprint
    greased = dpi.parse_client_hello(
        dpi.build_client_hello(
            ciphers=[0xDADA, *ciphers],
            extensions=[(0x3A3A, b""), dpi.sni_extension(name), *extra],
        )
    )
    assert greased.ja4() == hello.ja4() and greased.ja3() == hello.ja3()


@given(name=names, cut=st.integers(0, 200))
def test_a_cut_hello_parses_to_the_cut_or_fails_cleanly(name: str, cut: int) -> None:
    whole = dpi.build_client_hello(
        ciphers=[0x1301, 0x1302], extensions=[(0x0017, b""), dpi.sni_extension(name)]
    )
    part = whole[: min(cut, len(whole) - 1)]
    try:
        hello = dpi.parse_client_hello(part)
    except dpi.HelloError:
        assert len(part) < 6
        return
    assert not hello.complete
    assert hello.server_name in (None, name)


@given(st.binary(max_size=600))
def test_any_bytes_give_a_hello_or_a_hello_error(data: bytes) -> None:
    try:
        hello = dpi.parse_client_hello(data)
    except dpi.HelloError:
        return
    assert data[0] == 0x16 and data[5] == 1
    hello.ja3()
    hello.ja4()


@given(st.binary(min_size=6, max_size=600))
def test_random_bytes_after_a_hello_header(data: bytes) -> None:
    frame = b"\x16\x03\x01" + struct.pack("!H", len(data) + 1) + b"\x01" + data
    try:
        dpi.parse_client_hello(frame).ja4()
    except dpi.HelloError:
        pass


def _frame(payload: bytes, *, proto: int = 6, flags_frag: int = 0x4000, doff: int = 5) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, doff << 4, 0x18, 65535, 0, 0)
    tcp += bytes(4 * doff - 20) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, flags_frag, 64, proto, 0,
        bytes([198, 18, 1, 2]), bytes([198, 18, 10, 1]),
    )  # fmt: skip
    return bytes(12) + b"\x08\x00" + ip + tcp


def test_tcp_segment_from_a_frame() -> None:
    seg = dpi.parse_ipv4_tcp(_frame(b"hello", doff=8))
    assert seg == dpi.TcpSegment("198.18.1.2", 40000, "198.18.10.1", 443, b"hello", 1)
    assert dpi.parse_ipv4_tcp(_frame(b"x", proto=17)) is None
    assert dpi.parse_ipv4_tcp(_frame(b"x", flags_frag=0x2000)) is None  # more fragments


@given(st.binary(max_size=200))
def test_any_frame_parses_or_is_none(data: bytes) -> None:
    seg = dpi.parse_ipv4_tcp(data)
    assert seg is None or isinstance(seg.payload, bytes)


@pytest.mark.parametrize("length", [0, 13, 14, 20])
def test_short_frames_are_none(length: int) -> None:
    assert dpi.parse_ipv4_tcp(_frame(b"payload")[:length]) is None


@given(payload=st.binary(max_size=300), doff=st.integers(5, 15))
def test_a_fresh_tcp_checksum_sums_to_zero(payload: bytes, doff: int) -> None:
    packet = dpi.with_tcp_checksum(_frame(payload, doff=doff)[14:])
    ihl = (packet[0] & 0x0F) * 4
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(packet) - ihl)
    assert dpi._ones_sum(pseudo + packet[ihl:]) == 0xFFFF
    assert packet[:ihl] == _frame(payload, doff=doff)[14 : 14 + ihl]


def test_fingerprints_of_a_real_chrome_hello_match_a_published_capture() -> None:
    """Chrome 143 as browserleaks.com fingerprinted it (JA4 and JA3 computed by their
    service): the same lists, in the same order, with GREASE added as Chrome does."""
    ciphers = [0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
               0xC014, 0x009C, 0x009D, 0x002F, 0x0035]  # fmt: skip
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    body = {
        0x0000: dpi.sni_extension("tls.browserleaks.com")[1],
        0x0010: b"\x00\x0c\x02h2\x08http/1.1",
        0x000A: struct.pack("!6H", 10, 0x4A4A, 4588, 29, 23, 24),
        0x000B: b"\x01\x00",
        0x002B: b"\x06\x7a\x7a\x03\x04\x03\x03",
        0x000D: struct.pack("!H", 2 * len(sigs)) + b"".join(struct.pack("!H", s) for s in sigs),
    }
    order = [45, 51, 16, 65037, 23, 17613, 0, 11, 10, 43, 65281, 35, 18, 5, 13, 27]
    hello = dpi.parse_client_hello(
        dpi.build_client_hello(
            ciphers=[0x8A8A, *ciphers],
            extensions=[(0xDADA, b""), *((e, body.get(e, b"")) for e in order), (0x2A2A, b"\0")],
        )
    )
    assert hello.ja3_string() == (
        "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53,"
        "45-51-16-65037-23-17613-0-11-10-43-65281-35-18-5-13-27,4588-29-23-24,0"
    )
    assert hello.ja3() == "98487aa16281980e7d1120d399efb6a4"
    assert hello.ja4() == "t13d1516h2_8daaf6152771_d8a2da3f94cd"


def _segments(data: bytes, cuts: list[int], seq: int) -> list[dpi.TcpSegment]:
    points = sorted({c % len(data) for c in cuts} - {0})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out, at = [], seq
    for piece in pieces:
        out.append(dpi.TcpSegment("198.18.1.2", 40000, "198.18.10.1", 443, piece, at))
        at = (at + len(piece)) % (1 << 32)
    return out


@settings(deadline=None, max_examples=50)
@given(names, st.lists(st.integers(1, 4000), max_size=8), st.integers(0, (1 << 32) - 1))
def test_a_hello_split_anywhere_is_put_back_together(name: str, cuts: list[int], seq: int) -> None:
    whole = dpi.hello_of(ssl.create_default_context(), name)
    segs = _segments(whole, cuts, seq)
    split = dpi.SplitHello(segs[0], b"f0")
    for i, seg in enumerate(segs[1:], 1):
        assert not split.full
        assert split.add(seg, f"f{i}".encode())
        assert not split.add(seg, b"again")  # a retransmission is not taken twice
    assert split.full and bytes(split.data) == whole
    assert split.frames == [f"f{i}".encode() for i in range(len(segs))]
    assert split.hello() == dpi.parse_client_hello(whole)
    assert split.hello().server_name == name


@settings(deadline=None, max_examples=30)
@given(names, st.integers(1, 200))
def test_a_segment_out_of_order_waits(name: str, cut: int) -> None:
    whole = dpi.hello_of(ssl.create_default_context(), name)
    first, second, third = _segments(whole, [cut, cut + 100], 7)
    split = dpi.SplitHello(first, b"")
    assert not split.add(third, b"")  # a gap: left for the retransmission
    assert split.add(second, b"") and split.add(third, b"") and split.full


@given(st.binary(min_size=1, max_size=300), st.lists(st.binary(max_size=300), max_size=20))
def test_split_hellos_of_any_bytes_stay_bounded_and_parse_or_fail_cleanly(
    first: bytes, more: list[bytes]
) -> None:
    at = 1000
    split = dpi.SplitHello(dpi.TcpSegment("a", 1, "b", 2, first, at), b"")
    at += len(first)
    for data in more:
        split.add(dpi.TcpSegment("a", 1, "b", 2, data, at), b"")
        at += len(data)
    assert len(split.data) <= dpi.MAX_HELLO + 5
    assert len(split.frames) <= dpi.MAX_SPLIT_SEGMENTS
    try:
        split.hello()
    except dpi.HelloError:
        pass


def test_the_sequence_number_is_read_from_the_frame() -> None:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 45, 0, 0, 64, 6, 0, bytes(4), bytes(4))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0xDEADBEEF, 0, 5 << 4, 0x18, 100, 0, 0)
    seg = dpi.parse_ipv4_tcp(bytes(14) + ip + tcp + b"hello")
    assert seg is not None and seg.seq == 0xDEADBEEF and seg.payload == b"hello"
