"""A WireGuard responder for tests, written from the whitepaper (section 5.4).

Independent of ``resistance.vpn.noise`` on purpose: it builds its own HMAC,
HKDF and message layout, so a test that passes with both sides agrees on the
protocol, not on shared code.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305


def _h(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _hkdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    prk = hmac.new(key, data, "blake2s").digest()
    t1 = hmac.new(prk, b"\x01", "blake2s").digest()
    t2 = hmac.new(prk, t1 + b"\x02", "blake2s").digest()
    t3 = hmac.new(prk, t2 + b"\x03", "blake2s").digest()
    return [t1, t2, t3][:n]


def _dh(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def _pub(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _seal(key: bytes, counter: int, data: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(bytes(4) + counter.to_bytes(8, "little"), data, ad)


def _open(key: bytes, counter: int, data: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(bytes(4) + counter.to_bytes(8, "little"), data, ad)


def _mac(key_source: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=_h(b"mac1----", key_source), digest_size=16).digest()


@dataclass
class Answer:
    response: bytes
    initiator_public: bytes
    timestamp: bytes
    receive_key: bytes
    send_key: bytes


def respond(
    initiation: bytes,
    server_private: bytes,
    *,
    psk: bytes = bytes(32),
    ephemeral_private: bytes,
    sender_index: int,
) -> Answer:
    server_public = _pub(server_private)
    assert len(initiation) == 148 and initiation[:4] == b"\x01\x00\x00\x00"
    assert _mac(server_public, initiation[:116]) == initiation[116:132], "mac1"
    (their_index,) = struct.unpack_from("<I", initiation, 4)
    c = _h(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
    h = _h(_h(c, b"WireGuard v1 zx2c4 Jason@zx2c4.com"), server_public)
    e_i = initiation[8:40]
    (c,) = _hkdf(c, e_i, 1)
    h = _h(h, e_i)
    c, k = _hkdf(c, _dh(server_private, e_i), 2)
    static = _open(k, 0, initiation[40:88], h)
    h = _h(h, initiation[40:88])
    c, k = _hkdf(c, _dh(server_private, static), 2)
    timestamp = _open(k, 0, initiation[88:116], h)
    h = _h(h, initiation[88:116])
    e_r = _pub(ephemeral_private)
    (c,) = _hkdf(c, e_r, 1)
    h = _h(h, e_r)
    (c,) = _hkdf(c, _dh(ephemeral_private, e_i), 1)
    (c,) = _hkdf(c, _dh(ephemeral_private, static), 1)
    c, tau, k = _hkdf(c, psk, 3)
    h = _h(h, tau)
    empty = _seal(k, 0, b"", h)
    body = struct.pack("<BxxxII", 2, sender_index, their_index) + e_r + empty
    response = body + _mac(static, body) + bytes(16)
    receive_key, send_key = _hkdf(c, b"", 2)
    return Answer(response, static, timestamp, receive_key, send_key)


def open_transport(message: bytes, receive_key: bytes) -> tuple[int, int, bytes]:
    """(receiver index, counter, plaintext) of a type-4 message."""
    assert message[:4] == b"\x04\x00\x00\x00"
    receiver, counter = struct.unpack_from("<IQ", message, 4)
    return receiver, counter, _open(receive_key, counter, message[16:], b"")
