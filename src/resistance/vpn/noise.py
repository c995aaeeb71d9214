"""The WireGuard handshake, initiator side, sans-IO.

Used by the handshake probe: a valid response to our initiation proves that
whoever answers at the endpoint holds the server's private key and has our
public key configured as a peer.  Nothing here touches a socket.

Theory of operation
-------------------
WireGuard's handshake is Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with the
prologue ``"WireGuard v1 zx2c4 Jason@zx2c4.com"`` (whitepaper section 5.4).
:class:`Initiator` computes, from our static key, the server's public key,
a fresh ephemeral key and a TAI64N timestamp, the 148-byte handshake
initiation (type 1), with ``mac1`` keyed by HASH("mac1----" ‖ server public
key) and ``mac2`` zero (no cookie).  :meth:`Initiator.receive` takes one
datagram, checks that it is a 92-byte response (type 2) addressed to our
sender index, checks its ``mac1`` (keyed by our own public key), runs the
responder's half of the key schedule (ee, se, psk) and decrypts the empty
payload.  Only a response made with the server's private key decrypts, so a
:class:`Session` (the transport keys) is returned only for a genuine answer;
anything else raises :class:`HandshakeError`.

A 64-byte cookie reply (type 3) means the server is under load and wants
proof that we own our source address before it spends a Diffie-Hellman on
us.  :meth:`Initiator.receive` decrypts the cookie (XChaCha20-Poly1305 with
key HASH("cookie--" ‖ server public key), the reply's 24-byte nonce, and our
initiation's ``mac1`` as associated data) and raises :class:`CookieReply`
carrying it; a new :class:`Initiator` given that ``cookie`` fills ``mac2``
= MAC(cookie, initiation up to mac2), which the server then accepts.  A
cookie reply alone proves nothing about the key: anyone who knows the
server's public key can make one.  XChaCha20 is built here from the IETF
ChaCha20 that ``cryptography`` provides: HChaCha20 (a ChaCha20 block
without the final addition, undone by subtracting the input state) derives
the subkey, and the last 8 bytes of the nonce go to ChaCha20-Poly1305.

:meth:`Session.keepalive` is the 32-byte empty transport message (type 4)
that confirms the session to the responder, so it stops retrying.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from resistance.errors import ProtocolError

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

INITIATION_LEN: Final = 148
RESPONSE_LEN: Final = 92
COOKIE_REPLY_LEN: Final = 64
KEEPALIVE_LEN: Final = 32
COOKIE_LEN: Final = 16
_TAI64_BASE: Final = 0x400000000000000A
_ZERO_KEY: Final = bytes(32)
_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")


class MessageType(IntEnum):
    """The first byte of every WireGuard message (followed by three zero bytes)."""

    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


class HandshakeError(ProtocolError):
    """The datagram is not a valid handshake response to our initiation."""


class CookieReply(HandshakeError):
    """The server is under load: retry with ``cookie`` (see the module docstring)."""

    def __init__(self, message: str, cookie: bytes) -> None:
        super().__init__(message)
        self.cookie = cookie


def blake2s(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte output (WireGuard's MAC)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    """HKDF with HMAC-BLAKE2s, ``n`` outputs of 32 bytes."""
    prk = _hmac(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = _hmac(prk, prev + bytes([i]))
        out.append(prev)
    return out


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise HandshakeError(
            "response does not decrypt (wrong server key or preshared key)"
        ) from None


def hchacha20(key: bytes, nonce: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha section 2.2) from the IETF ChaCha20 block."""
    if len(key) != 32 or len(nonce) != 16:
        raise ValueError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    # cryptography's 16-byte ChaCha20 "nonce" fills state words 12-15, as HChaCha20's input.
    block = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(64))
    words = struct.unpack("<16I", block)
    inputs = struct.unpack("<4I", nonce)
    out = [(words[i] - _SIGMA[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(words[12 + i] - inputs[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 with a 24-byte nonce."""
    if len(nonce) != 24:
        raise ValueError("XChaCha20-Poly1305 takes a 24-byte nonce")
    subkey = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).encrypt(bytes(4) + nonce[16:], plaintext, ad)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    if len(nonce) != 24:
        raise ValueError("XChaCha20-Poly1305 takes a 24-byte nonce")
    subkey = hchacha20(key, nonce[:16])
    try:
        return ChaCha20Poly1305(subkey).decrypt(bytes(4) + nonce[16:], ciphertext, ad)
    except InvalidTag:
        raise HandshakeError("cookie reply does not decrypt (wrong server key?)") from None


def dh(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        raise HandshakeError("bad public key (low-order point)") from None


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def tai64n(unix_ns: int | None = None) -> bytes:
    """The 12-byte TAI64N timestamp WireGuard sends (the server rejects older ones)."""
    ns = time.time_ns() if unix_ns is None else unix_ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)


@dataclass(frozen=True, slots=True)
class Session:
    """Transport keys after a completed handshake (initiator's view)."""

    local_index: int
    remote_index: int
    send_key: bytes
    receive_key: bytes

    def __repr__(self) -> str:
        return f"Session(local_index={self.local_index}, remote_index={self.remote_index})"

    def transport(self, counter: int, payload: bytes = b"") -> bytes:
        """A type-4 transport message; an empty payload is a keepalive."""
        header = struct.pack("<BxxxIQ", MessageType.TRANSPORT, self.remote_index, counter)
        return header + aead_encrypt(self.send_key, counter, payload, b"")

    def keepalive(self) -> bytes:
        return self.transport(0)


class Initiator:
    """One handshake attempt towards a server (see the module docstring).

    The ephemeral key, timestamp and sender index are random/now unless given
    (tests give them, to check fixed vectors).  ``cookie`` is the one a cookie
    reply carried: it fills ``mac2``.
    """

    __slots__ = (
        "_chain",
        "_cookie",
        "_ephemeral",
        "_hash",
        "_psk",
        "_sender_index",
        "_server_public",
        "_static",
        "_static_public",
        "initiation",
    )

    def __init__(
        self,
        static_private: bytes,
        server_public: bytes,
        *,
        psk: bytes | None = None,
        ephemeral_private: bytes | None = None,
        timestamp: bytes | None = None,
        sender_index: int | None = None,
        cookie: bytes | None = None,
    ) -> None:
        if len(static_private) != 32 or len(server_public) != 32:
            raise ValueError("keys are 32 bytes")
        if cookie is not None and len(cookie) != COOKIE_LEN:
            raise ValueError("a cookie is 16 bytes")
        self._cookie = cookie
        if psk is not None and len(psk) != 32:
            raise ValueError("a preshared key is 32 bytes")
        self._static = static_private
        self._static_public = public_key(static_private)
        self._server_public = server_public
        self._psk = psk or _ZERO_KEY
        self._ephemeral = ephemeral_private if ephemeral_private is not None else os.urandom(32)
        if sender_index is None:
            sender_index = int.from_bytes(os.urandom(4), "little")
        self._sender_index = sender_index
        self.initiation = self._build(timestamp if timestamp is not None else tai64n())

    @property
    def sender_index(self) -> int:
        return self._sender_index

    def _build(self, timestamp: bytes) -> bytes:
        chain = blake2s(CONSTRUCTION)
        hash_ = blake2s(blake2s(chain, IDENTIFIER), self._server_public)
        ephemeral_public = public_key(self._ephemeral)
        (chain,) = kdf(chain, ephemeral_public, 1)
        hash_ = blake2s(hash_, ephemeral_public)
        chain, key = kdf(chain, dh(self._ephemeral, self._server_public), 2)
        encrypted_static = aead_encrypt(key, 0, self._static_public, hash_)
        hash_ = blake2s(hash_, encrypted_static)
        chain, key = kdf(chain, dh(self._static, self._server_public), 2)
        encrypted_time = aead_encrypt(key, 0, timestamp, hash_)
        hash_ = blake2s(hash_, encrypted_time)
        self._chain, self._hash = chain, hash_
        body = (
            struct.pack("<BxxxI", MessageType.INITIATION, self._sender_index)
            + ephemeral_public
            + encrypted_static
            + encrypted_time
        )
        mac1 = mac(blake2s(LABEL_MAC1, self._server_public), body)
        mac2 = bytes(16) if self._cookie is None else mac(self._cookie, body + mac1)
        return body + mac1 + mac2

    @property
    def mac1(self) -> bytes:
        return self.initiation[116:132]

    def open_cookie_reply(self, datagram: bytes) -> bytes:
        """The cookie in a type-3 reply to this initiation; :class:`HandshakeError` if none."""
        if len(datagram) != COOKIE_REPLY_LEN or datagram[:4] != b"\x03\x00\x00\x00":
            raise HandshakeError(f"not a cookie reply ({len(datagram)} bytes)")
        (receiver_index,) = struct.unpack_from("<I", datagram, 4)
        if receiver_index != self._sender_index:
            raise HandshakeError("cookie reply is for another handshake")
        key = blake2s(LABEL_COOKIE, self._server_public)
        return xaead_decrypt(key, datagram[8:32], datagram[32:64], self.mac1)

    def receive(self, datagram: bytes) -> Session:
        """Check one datagram; the session if it is the server's valid response.

        A valid cookie reply raises :class:`CookieReply` with the cookie to retry with.
        """
        if len(datagram) == COOKIE_REPLY_LEN and datagram[:4] == b"\x03\x00\x00\x00":
            cookie = self.open_cookie_reply(datagram)
            raise CookieReply("server under load: cookie reply (does not prove the key)", cookie)
        if len(datagram) != RESPONSE_LEN or datagram[:4] != b"\x02\x00\x00\x00":
            raise HandshakeError(f"not a handshake response ({len(datagram)} bytes)")
        remote_index, receiver_index = struct.unpack_from("<II", datagram, 4)
        if receiver_index != self._sender_index:
            raise HandshakeError("response is for another handshake")
        expected_mac1 = mac(blake2s(LABEL_MAC1, self._static_public), datagram[:60])
        if not hmac.compare_digest(expected_mac1, datagram[60:76]):
            raise HandshakeError("response mac1 is wrong")
        ephemeral = datagram[12:44]
        (chain,) = kdf(self._chain, ephemeral, 1)
        hash_ = blake2s(self._hash, ephemeral)
        (chain,) = kdf(chain, dh(self._ephemeral, ephemeral), 1)
        (chain,) = kdf(chain, dh(self._static, ephemeral), 1)
        chain, tau, key = kdf(chain, self._psk, 3)
        hash_ = blake2s(hash_, tau)
        aead_decrypt(key, 0, datagram[44:60], hash_)
        send_key, receive_key = kdf(chain, b"", 2)
        return Session(self._sender_index, remote_index, send_key, receive_key)
