"""Cookie replies: XChaCha20-Poly1305 from HChaCha20, and the retry with ``mac2``.

The XChaCha20 vectors are those of draft-irtf-cfrg-xchacha-03 (sections
2.2.1 and A.3.1).  The responder side is ``tests.vpn.responder``, which has
its own plain-Python HChaCha20; the live tests serve it on a loopback UDP
port, under load, and run the same probe the registry and agents use.
"""

from __future__ import annotations

import asyncio

import pytest

from resistance.vpn import keys, noise
from resistance.vpn.probe import Outcome, handshake, probe_handshake
from tests.vpn.responder import UdpResponder, _hchacha20, cookie_reply, mac2_valid, xseal

HCHACHA_KEY = bytes(range(32))
HCHACHA_NONCE = bytes.fromhex("000000090000004a0000000031415927")
HCHACHA_OUT = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
X_KEY = bytes(range(0x80, 0xA0))
X_NONCE = bytes(range(0x40, 0x58))
X_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
X_PLAIN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
X_SEALED = (
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)

CLIENT = keys.KeyPair.generate()
SERVER = keys.KeyPair.generate()


def test_hchacha20_vector_both_implementations() -> None:
    assert noise.hchacha20(HCHACHA_KEY, HCHACHA_NONCE).hex() == HCHACHA_OUT
    assert _hchacha20(HCHACHA_KEY, HCHACHA_NONCE).hex() == HCHACHA_OUT


def test_xchacha20_poly1305_vector() -> None:
    assert noise.xaead_encrypt(X_KEY, X_NONCE, X_PLAIN, X_AD).hex() == X_SEALED
    assert xseal(X_KEY, X_NONCE, X_PLAIN, X_AD).hex() == X_SEALED
    assert noise.xaead_decrypt(X_KEY, X_NONCE, bytes.fromhex(X_SEALED), X_AD) == X_PLAIN
    with pytest.raises(noise.HandshakeError):
        noise.xaead_decrypt(X_KEY, X_NONCE, bytes.fromhex(X_SEALED), X_AD + b"!")


def test_cookie_reply_gives_the_cookie_and_the_retry_carries_mac2() -> None:
    initiator = noise.Initiator(CLIENT.private, SERVER.public)
    assert initiator.initiation[132:] == bytes(16)
    cookie = bytes(range(16))
    reply = cookie_reply(initiator.initiation, SERVER.public, cookie, bytes(range(24)))
    assert len(reply) == noise.COOKIE_REPLY_LEN
    with pytest.raises(noise.CookieReply) as caught:
        initiator.receive(reply)
    assert caught.value.cookie == cookie
    retry = noise.Initiator(CLIENT.private, SERVER.public, cookie=caught.value.cookie)
    assert mac2_valid(retry.initiation, cookie)
    assert not mac2_valid(initiator.initiation, cookie)


def test_cookie_reply_is_bound_to_the_server_key_and_our_mac1() -> None:
    initiator = noise.Initiator(CLIENT.private, SERVER.public)
    other = keys.KeyPair.generate()
    forged = cookie_reply(initiator.initiation, other.public, bytes(16), bytes(24))
    with pytest.raises(noise.HandshakeError, match="does not decrypt"):
        initiator.receive(forged)
    # A reply to an earlier initiation (another mac1, another index) is refused too.
    earlier = noise.Initiator(CLIENT.private, SERVER.public, sender_index=initiator.sender_index)
    stale = cookie_reply(earlier.initiation, SERVER.public, bytes(16), bytes(24))
    with pytest.raises(noise.HandshakeError, match="does not decrypt"):
        initiator.receive(stale)
    with pytest.raises(ValueError):
        noise.Initiator(CLIENT.private, SERVER.public, cookie=bytes(15))


def test_probe_retries_with_the_cookie_of_a_server_under_load() -> None:
    with UdpResponder(SERVER.private, {CLIENT.public}, under_load=True) as server:
        result = asyncio.run(
            handshake(
                "127.0.0.1",
                server.port,
                server_public=SERVER.public,
                private_key=CLIENT.private,
                within=2,
            )
        )
        assert result.up and result.cookie and result.outcome is Outcome.UP
        assert result.rtt is not None and result.rtt < 2
        assert (server.counts.cookie_replies, server.counts.responses) == (1, 1)
        assert server.counts.initiations == 2


def test_a_server_that_keeps_sending_cookies_is_not_up() -> None:
    with UdpResponder(SERVER.private, {CLIENT.public}, cookie_only=True) as server:
        result = probe_handshake(
            "127.0.0.1",
            server.port,
            server_public=SERVER.public,
            private_key=CLIENT.private,
            timeout=0.5,
        )
        assert not result.up and result.outcome is Outcome.INVALID
        assert "cookie" in result.detail
        assert server.counts.cookie_replies == 2 and server.counts.responses == 0


def test_not_under_load_and_unknown_prober() -> None:
    stranger = keys.KeyPair.generate()
    with UdpResponder(SERVER.private, {CLIENT.public}) as server:
        up = probe_handshake(
            "127.0.0.1", server.port, server_public=SERVER.public, private_key=CLIENT.private
        )
        assert up.up and not up.cookie
        silent = probe_handshake(
            "127.0.0.1",
            server.port,
            server_public=SERVER.public,
            private_key=stranger.private,
            timeout=0.3,
            attempts=2,
        )
        assert not silent.up and silent.outcome is Outcome.SILENCE and silent.attempts == 2
        wrong_key = probe_handshake(
            "127.0.0.1",
            server.port,
            server_public=stranger.public,
            private_key=CLIENT.private,
            timeout=0.3,
        )
        assert wrong_key.outcome is Outcome.SILENCE
        assert server.counts.keepalives == 1


def test_closed_port_is_refused_quickly() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = probe_handshake(
        "127.0.0.1", port, server_public=SERVER.public, private_key=CLIENT.private, timeout=2
    )
    assert not result.up and result.outcome is Outcome.REFUSED
