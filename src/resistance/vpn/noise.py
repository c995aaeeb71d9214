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
anything else raises :class:`HandshakeError`.  A 64-byte cookie reply
(type 3, the server is under load) raises :class:`CookieReply`: it does not
prove the key, since anyone who knows the public key can make one.

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
_TAI64_BASE: Final = 0x400000000000000A
_ZERO_KEY: Final = bytes(32)


class MessageType(IntEnum):
    """The first byte of every WireGuard message (followed by three zero bytes)."""

    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


class HandshakeError(ProtocolError):
    """The datagram is not a valid handshake response to our initiation."""


class CookieReply(HandshakeError):
    """The server is under load and asks for a cookie round trip first."""


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
    (tests give them, to check fixed vectors).
    """

    __slots__ = (
        "_chain",
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
    ) -> None:
        if len(static_private) != 32 or len(server_public) != 32:
            raise ValueError("keys are 32 bytes")
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
        return body + mac1 + bytes(16)

    def receive(self, datagram: bytes) -> Session:
        """Check one datagram; the session if it is the server's valid response."""
        if len(datagram) == COOKIE_REPLY_LEN and datagram[:4] == b"\x03\x00\x00\x00":
            raise CookieReply("server under load: cookie reply (does not prove the key)")
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
