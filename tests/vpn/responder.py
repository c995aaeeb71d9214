"""A WireGuard responder for tests, written from the whitepaper (section 5.4).

Independent of ``resistance.vpn.noise`` on purpose: it builds its own HMAC,
HKDF, XChaCha20 and message layout, so a test that passes with both sides
agrees on the protocol, not on shared code.  :class:`UdpResponder` serves it
on a loopback UDP port, optionally under load (cookie replies first).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
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


# --- cookie replies (whitepaper section 5.4.7), with an XChaCha20 of its own --------------


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _hchacha20(key: bytes, nonce: bytes) -> bytes:
    """HChaCha20 in plain Python, straight from draft-irtf-cfrg-xchacha section 2.2."""
    s = list(struct.unpack("<4I", b"expand 32-byte k"))
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce))

    def quarter(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xseal(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 encryption."""
    return ChaCha20Poly1305(_hchacha20(key, nonce[:16])).encrypt(bytes(4) + nonce[16:], data, ad)


def cookie_for(secret: bytes, host: str, port: int) -> bytes:
    """τ = MAC(Rm, Am): the cookie for one source address and port."""
    address = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    return hashlib.blake2s(address + struct.pack(">H", port), key=secret, digest_size=16).digest()


def cookie_reply(initiation: bytes, server_public: bytes, cookie: bytes, nonce: bytes) -> bytes:
    """The 64-byte type-3 message answering ``initiation`` with ``cookie``."""
    (their_index,) = struct.unpack_from("<I", initiation, 4)
    key = _h(b"cookie--", server_public)
    sealed = xseal(key, nonce, cookie, initiation[116:132])
    return struct.pack("<BxxxI", 3, their_index) + nonce + sealed


def mac2_valid(initiation: bytes, cookie: bytes) -> bool:
    expected = hashlib.blake2s(initiation[:132], key=cookie, digest_size=16).digest()
    return hmac.compare_digest(expected, initiation[132:148])


@dataclass
class Counts:
    datagrams: int = 0  # everything that arrived
    initiations: int = 0
    cookie_replies: int = 0
    responses: int = 0
    keepalives: int = 0


class UdpResponder:
    """A WireGuard server's handshake side on a loopback UDP port, in a thread.

    It answers initiations from ``peers`` (initiator public keys) with a
    response made with ``server_private``, and stays silent to anyone else,
    as wireguard-go does.  ``under_load`` makes it demand a cookie first: an
    initiation without a valid ``mac2`` gets a cookie reply.  ``cookie_only``
    never answers with anything but cookie replies (a server that stays
    under load).
    """

    def __init__(
        self,
        server_private: bytes,
        peers: set[bytes],
        *,
        under_load: bool = False,
        cookie_only: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.server_private = server_private
        self.server_public = _pub(server_private)
        self.peers = peers
        self.under_load = under_load or cookie_only
        self.cookie_only = cookie_only
        self.secret = os.urandom(32)
        self.counts = Counts()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, (host, port) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.counts.datagrams += 1
            if len(data) == 32 and data[:4] == b"\x04\x00\x00\x00":
                self.counts.keepalives += 1
                continue
            if len(data) != 148 or data[:4] != b"\x01\x00\x00\x00":
                continue
            if _mac(self.server_public, data[:116]) != data[116:132]:
                continue  # mac1 is checked first, by anyone
            self.counts.initiations += 1
            if self.under_load:
                cookie = cookie_for(self.secret, host, port)
                if self.cookie_only or not mac2_valid(data, cookie):
                    reply = cookie_reply(data, self.server_public, cookie, os.urandom(24))
                    self.sock.sendto(reply, (host, port))
                    self.counts.cookie_replies += 1
                    continue
            try:
                answer = respond(
                    data,
                    self.server_private,
                    ephemeral_private=os.urandom(32),
                    sender_index=int.from_bytes(os.urandom(4), "little"),
                )
            except Exception:
                continue  # made for another server key: silence
            if answer.initiator_public not in self.peers:
                continue
            self.sock.sendto(answer.response, (host, port))
            self.counts.responses += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()

    def __enter__(self) -> UdpResponder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
