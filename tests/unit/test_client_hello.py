"""The client's TLS hellos: a browser's lists, not Python's default, and not just one."""

from __future__ import annotations

import random
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.client import hello
from resistance.node.tlscert import pinning_client_context
from tests.unit.tlshello import capture_hello, parse_hello

GREASE_FREE_CHROME_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9)
STATUS_REQUEST, SCT, PADDING, ENCRYPT_THEN_MAC = 5, 18, 21, 22


def test_the_libssl_settings_apply_on_this_python() -> None:
    assert hello.full_profile()


def test_chrome_variant_sends_chromes_lists() -> None:
    found = capture_hello(hello.variant(0, 0), "www.example.com")
    assert found.ciphers[: len(GREASE_FREE_CHROME_CIPHERS)] == GREASE_FREE_CHROME_CIPHERS
    assert found.groups == (0x1D, 0x17, 0x18)  # X25519, P-256, P-384
    assert found.alpn == (b"h2", b"http/1.1")
    for kind in (STATUS_REQUEST, SCT, PADDING, 0, 16, 43, 51):
        assert kind in found.extensions
    assert ENCRYPT_THEN_MAC not in found.extensions


def test_firefox_variant_orders_tls13_like_firefox() -> None:
    found = capture_hello(hello.variant(1, 0))
    assert found.ciphers[:3] == (0x1301, 0x1303, 0x1302)
    assert found.groups[:4] == (0x1D, 0x17, 0x18, 0x19)


def test_no_variant_sends_pythons_default_hello() -> None:
    default = capture_hello(pinning_client_context()).fingerprint
    seen = {capture_hello(hello.variant(p, d)).fingerprint for p, d in hello.VARIANTS}
    assert default not in seen
    assert len(seen) == len(hello.VARIANTS)  # every variant is a hello of its own


def test_a_dial_picks_variants_at_random() -> None:
    rng = random.Random(7)
    picked = {id(hello.browser_context(rng)) for _ in range(200)}
    assert len(picked) == len(hello.VARIANTS)
    assert all(isinstance(hello.browser_context(rng), ssl.SSLContext) for _ in range(3))


def test_reader_rejects_what_is_not_a_hello() -> None:
    with pytest.raises(ValueError):
        parse_hello(b"\x17\x03\x03\x00\x05hello")


@given(st.binary(max_size=300))
def test_reader_gives_a_hello_or_value_error(data: bytes) -> None:
    try:
        parse_hello(b"\x16\x03\x01\x01\x00\x01" + data)
    except ValueError:
        pass
