"""The client's TLS hellos: a browser's lists, not Python's default, and not just one."""

from __future__ import annotations

import collections
import contextlib
import random
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.client import hello
from resistance.lab.dpi import ClientHello, hello_of, parse_client_hello
from resistance.node.tlscert import pinning_client_context

GREASE_FREE_CHROME_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9)
STATUS_REQUEST, SCT, PADDING, ENCRYPT_THEN_MAC = 5, 18, 21, 22


def capture_hello(ctx: ssl.SSLContext, server_hostname: str | None = None) -> ClientHello:
    """The ClientHello ``ctx`` sends, read by the lab censor's own parser."""
    found = parse_client_hello(hello_of(ctx, server_hostname))
    assert found.complete
    return found


def fingerprint(found: ClientHello) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What a censor's exact-match rule compares: the cipher and extension lists."""
    return tuple(found.ciphers), tuple(found.extensions)


def test_the_libssl_settings_apply_on_this_python() -> None:
    assert hello.full_profile()


def test_chrome_variant_sends_chromes_lists() -> None:
    found = capture_hello(hello.variant(0, 0), "www.example.com")
    assert tuple(found.ciphers[: len(GREASE_FREE_CHROME_CIPHERS)]) == GREASE_FREE_CHROME_CIPHERS
    assert found.groups == [0x1D, 0x17, 0x18]  # X25519, P-256, P-384
    assert found.alpn == [b"h2", b"http/1.1"]
    for kind in (STATUS_REQUEST, SCT, PADDING, 0, 16, 43, 51):
        assert kind in found.extensions
    assert ENCRYPT_THEN_MAC not in found.extensions


def test_firefox_variant_orders_tls13_like_firefox() -> None:
    found = capture_hello(hello.variant(1, 0))
    assert found.ciphers[:3] == [0x1301, 0x1303, 0x1302]
    assert found.groups[:4] == [0x1D, 0x17, 0x18, 0x19]


def test_no_variant_sends_pythons_default_hello() -> None:
    default = fingerprint(capture_hello(pinning_client_context()))
    seen = {fingerprint(capture_hello(hello.variant(p, d))) for p, d in hello.VARIANTS}
    assert default not in seen
    assert len(seen) == len(hello.VARIANTS)  # every variant is a hello of its own


def test_a_dial_picks_variants_at_random() -> None:
    rng = random.Random(7)
    picked = {id(hello.browser_context(rng)) for _ in range(200)}
    assert len(picked) == len(hello.VARIANTS)
    assert all(isinstance(hello.browser_context(rng), ssl.SSLContext) for _ in range(3))


def test_every_hello_names_a_server_learned_from_the_certificate_once_seen() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from resistance.node.tlscert import certificate_sha256, make_self_signed

    assert hello.server_name("node.example.org", None) == "node.example.org"
    guesses = {hello.server_name("192.0.2.7", None) for _ in range(5)}
    assert len(guesses) == 5 and all(g.startswith("www.") and g.endswith(".net") for g in guesses)
    cert_pem, _ = make_self_signed("www.quietgarden.net")
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    pin = certificate_sha256(der)
    assert hello.learn_name(pin, der) == "www.quietgarden.net"
    assert hello.server_name("192.0.2.7", pin) == "www.quietgarden.net"
    found = capture_hello(hello.variant(0, 0), hello.server_name("192.0.2.7", pin))
    assert 0 in found.extensions  # server_name


@given(st.binary(max_size=400))
def test_learning_a_name_from_any_bytes_gives_a_name_or_none(der: bytes) -> None:
    name = hello.learn_name("f" * 64 + der.hex()[:8], der)
    assert name is None or hello._HOST_NAME.fullmatch(name)


def test_dials_in_a_row_send_different_hellos_and_a_failed_one_rests_at_that_node() -> None:
    where, other = "198.51.100.7:443", "198.51.100.8:443"
    first, second = hello.pick_variant(where, 0.0), hello.pick_variant(other, 0.0)
    assert first != second  # a dial and the rival raced beside it
    hello.variant_failed(where, first, 0.0)
    try:
        picks = [hello.pick_variant(where, 1.0) for _ in range(3 * len(hello.VARIANTS))]
        assert first not in picks and set(picks) == set(hello.VARIANTS) - {first}
        assert first in {hello.pick_variant(other, 1.0) for _ in hello.VARIANTS}
        rested = hello.VARIANT_REST + 1.0
        assert first in {hello.pick_variant(where, rested) for _ in hello.VARIANTS}
        hello.variant_worked(where, first)
        assert first in {hello.pick_variant(where, 1.0) for _ in hello.VARIANTS}
    finally:
        hello.variant_worked(where, first)


def test_when_every_hello_failed_at_a_node_it_still_gets_one() -> None:
    where = "198.51.100.9:443"
    for chosen in hello.VARIANTS:
        hello.variant_failed(where, chosen, 0.0)
    try:
        assert hello.pick_variant(where, 1.0) in hello.VARIANTS
    finally:
        for chosen in hello.VARIANTS:
            hello.variant_worked(where, chosen)
    assert where not in hello._FAILED


def test_a_probes_hellos_come_round_in_turn() -> None:
    where = "198.51.100.10:443"
    seen = [hello.next_variant(where) for _ in range(2 * len(hello.VARIANTS))]
    assert set(seen[: len(hello.VARIANTS)]) == set(hello.VARIANTS)
    assert seen[: len(hello.VARIANTS)] == seen[len(hello.VARIANTS) :]


@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=40))
def test_each_listener_has_its_own_turn_of_hellos(others: list[int]) -> None:
    """Whatever the process dials between two hellos to one listener (here 0-4 other
    listeners each time, as a probe round's other nodes and controls are), that
    listener meets every variant within len(VARIANTS) of its own hellos."""
    where = "198.51.100.11:443"
    mine: list[hello.Variant] = []
    for i in range(len(hello.VARIANTS)):
        mine.append(hello.next_variant(where))
        for j in range(others[i % len(others)]):
            hello.next_variant(f"198.51.100.{20 + j}:443")
            hello.pick_variant(f"198.51.100.{30 + j}:443", 0.0)  # the client's dials too
    assert set(mine) == set(hello.VARIANTS)


def test_listener_turns_are_bounded_and_the_oldest_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hello, "MAX_FAILED", 3)
    monkeypatch.setattr(hello, "_TURNS", collections.OrderedDict())
    for n in range(5):
        hello.next_variant(f"192.0.2.{n}:443")
    hello.next_variant("192.0.2.2:443")  # used again: the newest
    hello.next_variant("192.0.2.9:443")
    assert list(hello._TURNS) == ["192.0.2.4:443", "192.0.2.2:443", "192.0.2.9:443"]


def test_a_dial_raced_beside_a_hanging_one_never_sends_its_hello() -> None:
    """The story's step 15 under load: slow handshakes cancelled when a rival won had
    put every other variant to rest at the bridge, so the dial raced beside one whose
    hello the censor dropped took that same hello (the only one not resting) and the
    user's request ran out of its failover budget."""
    where = "198.51.100.12:443"
    dropped = hello.VARIANTS[0]
    for chosen in hello.VARIANTS[1:]:
        hello.variant_failed(where, chosen, 0.0)
    try:
        assert hello.pick_variant(where, 1.0) == dropped  # the only one not resting
        with hello.dialing(where, dropped, 1.0):
            # in flight but not yet hanging: a burst of dials may share it
            assert hello.pick_variant(where, 1.0 + hello.HANGING / 2) == dropped
            later = 1.0 + hello.HANGING
            picks = {hello.pick_variant(where, later) for _ in hello.VARIANTS}
            assert dropped not in picks and picks <= set(hello.VARIANTS[1:])
        assert where not in hello._IN_FLIGHT
        assert hello.pick_variant(where, 5.0) == dropped  # its dial ended
    finally:
        for chosen in hello.VARIANTS:
            hello.variant_worked(where, chosen)


def test_when_every_hello_hangs_at_a_node_it_still_gets_one() -> None:
    where = "198.51.100.13:443"
    with contextlib.ExitStack() as stack:
        for chosen in hello.VARIANTS:
            stack.enter_context(hello.dialing(where, chosen, 0.0))
        assert hello.pick_variant(where, 10.0) in hello.VARIANTS
    assert where not in hello._IN_FLIGHT
