"""The MTProto rung's re-framing (client/mtrung.py): an app's obfuscated2 init, read as a
data centre reads it, sent again to an MTProto proxy with the same tag and DC index."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.client.ladder import TRANSPORTS, transport_of
from resistance.client.mtrung import Reframer, dc_of_address, is_dc_address, read_app_init
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.errors import ConfigError, ProtocolError
from resistance.proto import faketls
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.obfuscated2 import (
    FrameDecoder,
    ProtocolTag,
    encode_frame,
    generate_init,
    parse_init,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
SECRETS = {
    "classic": ProxySecret(KEY),
    "dd": ProxySecret(KEY, SecretMode.DD),
    "ee": ProxySecret(KEY, SecretMode.EE, "example.com"),
}


def app_connection(tag: ProtocolTag, dc: int) -> tuple[bytes, object]:
    """What Telegram's app sends a data centre first: an init without a secret."""
    wire, init = generate_init(tag, dc)
    return wire, init


def establish(reframer: Reframer, secret: ProxySecret) -> bytes:
    """Play the proxy's handshake; return the proxy-side wire init (classic/dd) or b""."""
    first = reframer.start()
    if secret.mode is not SecretMode.EE:
        return first
    hello = faketls.parse_client_hello(first)
    faketls.verify_hello(secret.key, hello, now=__import__("time").time())
    answer = faketls.build_server_answer(secret.key, hello, payload_len=2000)
    to_app, due = reframer.from_proxy(answer)
    assert to_app == b""
    return due


@pytest.mark.parametrize("mode", list(SECRETS))
@pytest.mark.parametrize(("tag", "dc"), [(ProtocolTag.ABRIDGED, 2), (ProtocolTag.PADDED, -4),
                                         (ProtocolTag.INTERMEDIATE, 10003)])  # fmt: skip
def test_an_apps_stream_is_reframed_onto_the_proxy_and_back(
    mode: str, tag: ProtocolTag, dc: int
) -> None:
    secret = SECRETS[mode]
    wire, app_side = generate_init(tag, dc)
    app = read_app_init(wire)
    assert app is not None and (app.tag, app.dc) == (tag, dc)
    reframer = Reframer(app, secret)
    packet = encode_frame(tag, os.urandom(40))
    held = reframer.to_proxy(app_side.encryptor.update(packet))  # before the proxy answered
    early = establish(reframer, secret)
    if mode == "ee":
        assert held == b""
        records = faketls.RecordReader(allow_ccs=True)
        stream = records.feed(early)
    else:
        stream = early + held
    proxy_side = parse_init(stream[:64], secret.key)
    assert (proxy_side.tag, proxy_side.dc) == (tag, dc)  # the same framing and DC
    assert proxy_side.decryptor.update(stream[64:]) == packet
    later = encode_frame(tag, b"more" * 8)
    wire_later = reframer.to_proxy(app_side.encryptor.update(later))
    if mode == "ee":
        wire_later = records.feed(wire_later)
    assert proxy_side.decryptor.update(wire_later) == later
    # The DC's answer, through the proxy, reaches the app under the app's own keys.
    answer = encode_frame(tag, b"resPQ..." * 4)
    from_proxy = proxy_side.encryptor.update(answer)
    if mode == "ee":
        from_proxy = faketls.encode_records(from_proxy)
    to_app, due = reframer.from_proxy(from_proxy)
    assert due == b""
    assert FrameDecoder(tag).feed(app_side.decryptor.update(to_app))[0].payload == b"resPQ..." * 4


def test_a_wrongly_signed_fake_tls_answer_is_refused() -> None:
    wire, _ = generate_init(ProtocolTag.PADDED, 2)
    app = read_app_init(wire)
    assert app is not None
    reframer = Reframer(app, SECRETS["ee"])
    hello = faketls.parse_client_hello(reframer.start())
    forged = faketls.build_server_answer(os.urandom(16), hello, payload_len=2000)
    with pytest.raises(ProtocolError):
        reframer.from_proxy(forged)
    assert not reframer.established


@pytest.mark.parametrize(
    "first",
    [
        b"\x16\x03\x01\x02\x00" + bytes(59),  # a TLS hello (the app's own fake-TLS)
        b"POST /api HTTP/1.1\r\n".ljust(64, b"x"),  # the app's HTTP transport
        b"\xef" + os.urandom(63),  # abridged without obfuscation
        b"\xee\xee\xee\xee" + os.urandom(60),
        bytes(64),
    ],
)
def test_what_is_not_an_apps_init_skips_the_rung(first: bytes) -> None:
    assert read_app_init(first) is None


def test_an_init_for_dc_zero_or_beyond_the_test_dcs_skips_the_rung() -> None:
    assert read_app_init(generate_init(ProtocolTag.PADDED, 0)[0]) is None
    assert read_app_init(generate_init(ProtocolTag.PADDED, 20000)[0]) is None
    assert read_app_init(generate_init(ProtocolTag.PADDED, -5)[0]) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.sampled_from(["classic", "dd"]))
def test_any_first_64_bytes_are_either_reframed_faithfully_or_skipped(
    first: bytes, mode: str
) -> None:
    app = read_app_init(first)
    if app is None:
        return
    seen = parse_init(first)  # the DC's own reading of the same bytes
    assert (app.tag, app.dc) == (seen.tag, seen.dc) and seen.dc != 0
    proxy_init = Reframer(app, SECRETS[mode]).start()
    again = parse_init(proxy_init, KEY)
    assert (again.tag, again.dc) == (app.tag, app.dc)


@given(st.integers(-32768, 32767), st.sampled_from(list(ProtocolTag)))
def test_every_app_init_with_a_real_dc_index_is_taken(dc: int, tag: ProtocolTag) -> None:
    app = read_app_init(generate_init(tag, dc)[0])
    if dc == 0 or abs(dc) > 10_005:
        assert app is None
    else:
        assert app is not None and (app.tag, app.dc) == (tag, dc)


def test_only_ip_addresses_in_telegrams_ranges_are_data_centres() -> None:
    assert is_dc_address("149.154.167.51")  # DC2
    assert is_dc_address("2001:67c:4e8:f002::a")
    assert not is_dc_address("8.8.8.8")
    assert not is_dc_address("149.154.167.51.example.org")
    assert not is_dc_address("127.0.0.1")
    assert is_dc_address("127.0.0.1", [ipaddress.ip_network("127.0.0.0/8")])


def test_an_mtproto_link_is_an_upstream_on_the_ladders_mtproto_rung() -> None:
    link = f"tg://proxy?server=203.0.113.7&port=443&secret={SECRETS['ee'].to_hex()}"
    upstream = Upstream.from_url(link)
    assert upstream.mtproto == SECRETS["ee"]
    assert (upstream.host, upstream.port, upstream.label) == (
        "203.0.113.7", 443, "203.0.113.7:443 (MTProto)",
    )  # fmt: skip
    assert transport_of(upstream) == "mtproto-faketls"
    assert (
        Upstream.from_url(f"mtproto://{KEY.hex()}@198.51.100.1:8443").mtproto == SECRETS["classic"]
    )
    assert [t.name for t in TRANSPORTS] == ["tls", "mtproto-faketls", "socks5"]
    assert all(t.usable for t in TRANSPORTS)
    with pytest.raises(ConfigError):
        Upstream.from_url("https://example.org/proxy?server=a&port=1&secret=00")


def test_a_tls_preferring_pool_does_not_put_mtproto_behind_plain_socks5() -> None:
    plain = Upstream("198.51.100.1", 1080)
    mt = Upstream("203.0.113.7", 443, mtproto_secret=SECRETS["ee"].to_hex())
    assert UpstreamPool([plain, mt], prefer_tls=True).order()[0] == mt


def test_an_init_without_a_dc_index_takes_the_index_of_the_address() -> None:
    wire = bytearray(generate_init(ProtocolTag.ABRIDGED, 0)[0])  # DC index 0: left out
    assert read_app_init(bytes(wire)) is None
    app = read_app_init(bytes(wire), dc_of_address("149.154.175.100"))
    assert app is not None and app.dc == 3
    random_dc = read_app_init(generate_init(ProtocolTag.ABRIDGED, 777)[0], 3)
    assert random_dc is not None and random_dc.dc == 3  # random bytes lose to the address
    media = read_app_init(generate_init(ProtocolTag.PADDED, -3)[0], 3)
    assert media is not None and media.dc == -3
    assert dc_of_address("2001:67c:4e8:f002:0::a") == 2
    assert dc_of_address("149.154.167.40") == 10002  # a test DC
    assert dc_of_address("127.0.0.1") is None
    assert dc_of_address("127.0.0.1", {"127.0.0.1": 4}) == 4
    assert dc_of_address("dc.example") is None
