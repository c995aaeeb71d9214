"""Fake-TLS hello, answer, records and proxy secrets (resistance.proto.faketls)."""

from __future__ import annotations

import hmac
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.errors import BufferOverflow, ProtocolError
from resistance.proto.faketls import (
    CCS_RECORD,
    MAX_FRAGMENT,
    ClientHelloParams,
    HelloBuffer,
    ProxySecret,
    RecordReader,
    SecretMode,
    TimeWindow,
    build_client_hello,
    build_server_answer,
    encode_records,
    hello_timestamp,
    looks_like_tls,
    parse_client_hello,
    parse_secret,
    parse_server_answer,
    verify_hello,
    zeroed_hello,
)

KEY = bytes.fromhex("0123456789abcdef0123456789abcdef")
NOW = 1_800_000_000


def telegram_desktop_hello(key: bytes, domain: bytes, stamp: int) -> bytes:
    """A 517-byte hello laid out by hand after tdesktop's PrepareClientHelloRules."""
    sni = b"\x00\x00" + struct.pack(">HBH", len(domain) + 3, 0, len(domain)) + domain
    sni = sni[:2] + struct.pack(">H", len(domain) + 5) + sni[2:]
    exts = (
        b"\x2a\x2a\x00\x00"
        + sni
        + b"\x00\x17\x00\x00"
        + b"\x00\x33\x00\x2b\x00\x29\x5a\x5a\x00\x01\x00\x00\x1d\x00\x20"
        + bytes(range(32))
        + b"\x00\x2b\x00\x07\x06\x7a\x7a\x03\x04\x03\x03"
        + b"\x00\x10\x00\x0e\x00\x0c\x02h2\x08http/1.1"
        + b"\x3a\x3a\x00\x01\x00"
    )
    head = (
        b"\x03\x03"
        + bytes(32)
        + b"\x20"
        + bytes(range(100, 132))
        + b"\x00\x20\x0a\x0a"
        + bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
        + b"\x01\x00"
    )
    pad = 517 - 5 - 4 - len(head) - 2 - len(exts) - 4
    exts += b"\x00\x15" + struct.pack(">H", pad) + bytes(pad)
    body = head + struct.pack(">H", len(exts)) + exts
    record = (
        b"\x16\x03\x01"
        + struct.pack(">H", len(body) + 4)
        + b"\x01\x00"
        + struct.pack(">H", len(body))
        + body
    )
    assert len(record) == 517
    mac = bytearray(hmac.digest(key, record, "sha256"))
    for i, b in enumerate(stamp.to_bytes(4, "little")):
        mac[28 + i] ^= b
    return record[:11] + bytes(mac) + record[43:]


# -- ClientHello ---------------------------------------------------------------


def test_hand_written_telegram_hello_parses_and_verifies() -> None:
    record = telegram_desktop_hello(KEY, b"example.com", NOW)
    hello = parse_client_hello(record)
    assert hello.server_name == "example.com"
    assert hello.session_id == bytes(range(100, 132))
    assert hello.cipher_suites[:2] == (0x0A0A, 0x1301)
    assert 0x0015 in hello.extensions
    assert verify_hello(KEY, hello, NOW + 2) == NOW


def test_our_client_hello_verifies_and_varies() -> None:
    records = [build_client_hello(KEY, "cdn.example.org", NOW) for _ in range(20)]
    hellos = [parse_client_hello(r) for r in records]
    for hello in hellos:
        assert hello.server_name == "cdn.example.org"
        assert verify_hello(KEY, hello, NOW) == NOW
        assert 0x1301 in hello.cipher_suites
    assert len({h.extensions for h in hellos}) > 10  # shuffled per connection
    assert len({len(r) for r in records}) > 2  # no fixed length
    assert len({r[:11] for r in records}) > 2  # not even a fixed first record bytes


def test_our_client_hello_is_reproducible_with_a_fixed_rng() -> None:
    def params() -> ClientHelloParams:
        rng = random.Random(7)
        return ClientHelloParams(rng=rng, random=rng.randbytes)

    assert build_client_hello(KEY, "a.example", NOW, params()) == build_client_hello(
        KEY, "a.example", NOW, params()
    )


def test_wrong_key_and_bad_times_are_refused() -> None:
    hello = parse_client_hello(build_client_hello(KEY, "example.com", NOW))
    with pytest.raises(ProtocolError, match="not made with this key"):
        verify_hello(bytes(16), hello, NOW)
    window = TimeWindow(past=300, future=60)
    assert verify_hello(KEY, hello, NOW + 300, window) == NOW
    assert verify_hello(KEY, hello, NOW - 60, window) == NOW
    with pytest.raises(ProtocolError, match="timestamp"):
        verify_hello(KEY, hello, NOW + 301, window)
    with pytest.raises(ProtocolError, match="timestamp"):
        verify_hello(KEY, hello, NOW - 61, window)


def test_hello_timestamp_shares_the_zeroed_message() -> None:
    record = build_client_hello(KEY, "example.com", NOW)
    zeroed = zeroed_hello(record)
    assert hello_timestamp(KEY, zeroed, record[11:43]) == NOW
    assert hello_timestamp(bytes(16), zeroed, record[11:43]) is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: b"\x17" + r[1:], "not a TLS handshake"),
        (lambda r: r[:5] + b"\x02" + r[6:], "not a ClientHello"),
        (lambda r: r[:-1], "record is"),
        (lambda r: r[:3] + struct.pack(">H", 9000) + r[5:], "exceeds"),
        (lambda r: r[:43] + b"\x21" + r[44:], "truncated|disagrees|bytes after|odd|session"),
    ],
)
def test_malformed_hellos_say_what_is_wrong(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    record = telegram_desktop_hello(KEY, b"example.com", NOW)
    with pytest.raises(ProtocolError, match=message):
        parse_client_hello(mutate(record))


def test_hello_buffer_whole_bytewise_and_trailing() -> None:
    record = build_client_hello(KEY, "example.com", NOW)
    assert HelloBuffer().feed(record) == record
    buf = HelloBuffer()
    out = [buf.feed(record[i : i + 1]) for i in range(len(record))]
    assert out[-1] == record and all(o is None for o in out[:-1])
    buf = HelloBuffer()
    assert buf.feed(record + CCS_RECORD) == record and buf.rest == CCS_RECORD
    assert bytes(buf.seen) == record + CCS_RECORD


@pytest.mark.parametrize("first", [b"G", b"\x16\x04", b"\x16\x03\x09", b"\xef"])
def test_hello_buffer_rejects_non_tls_at_once(first: bytes) -> None:
    with pytest.raises(ProtocolError):
        HelloBuffer().feed(first)
    assert not looks_like_tls(first)


def test_hello_buffer_refuses_oversized_records() -> None:
    with pytest.raises(BufferOverflow):
        HelloBuffer().feed(b"\x16\x03\x01\x40\x00")


# -- server answer --------------------------------------------------------------


def test_server_answer_has_telegram_desktop_shape_and_signature() -> None:
    hello = parse_client_hello(build_client_hello(KEY, "example.com", NOW))
    answer = build_server_answer(KEY, hello, payload_len=2345)
    # tdesktop's checks: part1 16 03 03 + length, part3 14 03 03 00 01 01 17 03 03 + length.
    assert answer[:3] == b"\x16\x03\x03"
    (first,) = struct.unpack_from(">H", answer, 3)
    assert answer[5 + first : 5 + first + 9] == b"\x14\x03\x03\x00\x01\x01\x17\x03\x03"
    assert struct.unpack_from(">H", answer, 5 + first + 9)[0] == 2345
    assert len(answer) == 5 + first + 11 + 2345
    # The session id is echoed, as a real TLS 1.3 server does.
    assert hello.session_id in answer[: 5 + first]
    assert parse_server_answer(KEY, hello.random, answer + b"more") == len(answer)
    for cut in (0, 4, 50, len(answer) - 1):
        assert parse_server_answer(KEY, hello.random, answer[:cut]) is None
    with pytest.raises(ProtocolError, match="not signed"):
        parse_server_answer(bytes(16), hello.random, answer)


# -- records ---------------------------------------------------------------------


def test_records_roundtrip_whole_bytewise_trailing() -> None:
    data = bytes(range(256)) * 200
    wire = CCS_RECORD + encode_records(data)
    assert RecordReader().feed(wire) == data
    reader = RecordReader()
    assert b"".join(reader.feed(wire[i : i + 1]) for i in range(len(wire))) == data
    reader = RecordReader()
    assert reader.feed(wire + b"\x17\x03\x03\x00") == data and reader.buffered == 4


def test_encode_records_sizes() -> None:
    wire = encode_records(bytes(40000))
    sizes = []
    pos = 0
    while pos < len(wire):
        assert wire[pos : pos + 3] == b"\x17\x03\x03"
        (n,) = struct.unpack_from(">H", wire, pos + 3)
        sizes.append(n)
        pos += 5 + n
    assert sizes == [MAX_FRAGMENT, MAX_FRAGMENT, 40000 - 2 * MAX_FRAGMENT]
    assert encode_records(b"") == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"\x17\x03\x03\x42\x01",  # oversized
        b"\x16\x03\x03\x00\x01\x01",  # handshake after the handshake
        b"\x17\x03\x01\x00\x01\x01",  # wrong version
        CCS_RECORD + CCS_RECORD,  # a second CCS
        b"\x14\x03\x03\x00\x02\x01\x01",  # malformed CCS
    ],
)
def test_record_reader_refuses(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        RecordReader().feed(wire)


# -- secrets ------------------------------------------------------------------------


def test_secret_forms() -> None:
    plain = parse_secret(KEY.hex())
    assert plain == ProxySecret(KEY) and plain.to_hex() == KEY.hex()
    dd = parse_secret("dd" + KEY.hex())
    assert dd.mode is SecretMode.DD and str(dd) == "dd" + KEY.hex()
    ee_hex = "ee" + KEY.hex() + b"example.com".hex()
    ee = parse_secret(ee_hex.upper())
    assert (ee.mode, ee.domain, ee.key) == (SecretMode.EE, "example.com", KEY)
    assert ee.to_hex() == ee_hex
    import base64

    b64 = base64.urlsafe_b64encode(bytes.fromhex(ee_hex)).decode().rstrip("=")
    assert parse_secret(b64) == ee


@pytest.mark.parametrize(
    "text",
    [
        "",
        "zz",
        KEY.hex()[:-2],
        "dd" + KEY.hex() + "00",
        "ee" + KEY.hex(),
        "ee" + KEY.hex() + "ff00",
    ],
)
def test_bad_secrets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_secret(text)


# -- fuzz ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_parse_client_hello_fuzz(data: bytes) -> None:
    try:
        hello = parse_client_hello(data)
    except ProtocolError:
        return
    assert hello.record == data


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 600), st.binary(min_size=1, max_size=4))
def test_parse_client_hello_mutations(pos: int, junk: bytes) -> None:
    record = build_client_hello(KEY, "example.com", NOW, ClientHelloParams(rng=random.Random(pos)))
    pos %= len(record)
    mutated = record[:pos] + junk + record[pos + len(junk) :]
    try:
        parse_client_hello(mutated)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 30))
def test_record_reader_fuzz(data: bytes, step: int) -> None:
    reader = RecordReader(max_body=100)
    try:
        for i in range(0, len(data), step):
            reader.feed(data[i : i + step])
    except ProtocolError:
        return
    assert reader.buffered <= 105 + step


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 30))
def test_hello_buffer_fuzz(data: bytes, step: int) -> None:
    buf = HelloBuffer()
    try:
        for i in range(0, len(data), step):
            if buf.feed(data[i : i + step]) is not None:
                return
    except ProtocolError:
        return


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(bytes.hex)))
def test_parse_secret_fuzz(text: str) -> None:
    try:
        secret = parse_secret(text)
    except ValueError:
        return
    assert parse_secret(secret.to_hex()) == secret


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_server_answer_fuzz(data: bytes) -> None:
    try:
        parse_server_answer(KEY, bytes(32), data)
    except ProtocolError:
        pass
