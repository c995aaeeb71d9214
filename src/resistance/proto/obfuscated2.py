"""MTProto's obfuscated2 transport and its packet framings, sans-IO.

Nothing here touches a socket.  This module is shared by the node's MTProto
listener, the lab's data-centre stand-in, probes and clients.

Theory of operation
-------------------
A connection starts with a 64-byte *init* sent by the connecting side::

    0      8                40          56     60   62   64
    | rand | key (32)       | iv (16)   | tag  | dc | rand |

Bytes 8..56 give the AES-256-CTR key and IV of the initiator->acceptor
direction; the same 48 bytes *reversed* give the key and IV of the other
direction.  With a proxy secret (16 bytes) each key is
``SHA-256(key || secret)``; towards a data centre there is no secret.  The
initiator encrypts the whole init with its stream cipher and sends the
plaintext bytes 0..56 followed by the ciphertext bytes 56..64, so that the
acceptor, after deriving the same cipher and decrypting the 64 bytes (which
advances its keystream by 64), reads the protocol tag and the DC index.

* :func:`parse_init` is the acceptor side: the node (with a user's secret)
  or a data centre (``secret=None``).  It returns an :class:`Init` holding
  the tag, the DC index and both directions' ciphers, or raises
  :class:`~resistance.errors.ProtocolError` when the tag is not one of the
  three known ones (which, with a secret, means "wrong secret").
* :func:`generate_init` is the initiator side: the node towards a data
  centre, or a client towards a proxy.  It avoids the first bytes that other
  protocols start with (see :func:`init_is_allowed`) exactly as Telegram's
  clients do, so that a DC or proxy does not mistake the init for them.

After the init, the stream carries MTProto packets in one of three framings
chosen by the tag: abridged (``0xef``), intermediate (``0xee``) and padded
intermediate (``0xdd``, used by "dd" and "ee" secrets).  :class:`FrameDecoder`
splits a decrypted byte stream into packets with a size cap, and
:func:`encode_frame` builds one frame.  The node itself relays the decrypted
stream without framing (the DC receives the same tag), so the codecs serve
the DC stand-in, probes and tests.
"""

from __future__ import annotations

import enum
import hashlib
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from resistance.errors import BufferOverflow, ProtocolError

INIT_LEN: Final = 64
SECRET_LEN: Final = 16
KEY_IV_OFFSET: Final = 8
KEY_LEN: Final = 32
IV_LEN: Final = 16
TAG_OFFSET: Final = 56
DC_OFFSET: Final = 60

#: The largest MTProto packet accepted by the frame decoders by default (the
#: abridged length field can say 64 MiB; real packets stay far below 2 MiB).
MAX_PACKET: Final = 2 * 1024 * 1024

#: First four bytes an init must not start with (HTTP verbs, TLS handshake,
#: the intermediate/padded tags sent in the clear by unobfuscated clients).
FORBIDDEN_PREFIXES: Final = (
    b"HEAD",
    b"POST",
    b"GET ",
    b"OPTI",
    b"\x16\x03\x01\x02",
    b"\xee\xee\xee\xee",
    b"\xdd\xdd\xdd\xdd",
)


class ProtocolTag(enum.Enum):
    """The framing announced in the init; the value is the 4 wire bytes."""

    ABRIDGED = b"\xef\xef\xef\xef"
    INTERMEDIATE = b"\xee\xee\xee\xee"
    PADDED = b"\xdd\xdd\xdd\xdd"


_TAGS: Final = {tag.value: tag for tag in ProtocolTag}


def new_ctr(key: bytes, iv: bytes) -> CipherContext:
    """An AES-256-CTR keystream context (encrypting and decrypting are the same)."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


@dataclass(frozen=True, slots=True)
class Init:
    """The outcome of an init, seen from one side of the connection.

    ``decryptor`` turns what the peer sends into plaintext (it has already
    consumed the 64 init bytes on the acceptor side); ``encryptor`` turns
    plaintext into what the peer expects.  ``reply_key_iv`` is the 48-byte key
    and IV of the ``encryptor`` (used to let a DC leg share a keystream with
    the client leg, see :func:`generate_init`).
    """

    tag: ProtocolTag
    dc: int
    decryptor: CipherContext
    encryptor: CipherContext
    reply_key_iv: bytes


def _derive(key_iv: bytes, secret: bytes | None) -> tuple[bytes, bytes]:
    key, iv = key_iv[:KEY_LEN], key_iv[KEY_LEN:]
    if secret is not None:
        key = hashlib.sha256(key + secret).digest()
    return key, iv


def _check_secret(secret: bytes | None) -> None:
    if secret is not None and len(secret) != SECRET_LEN:
        raise ValueError(f"an MTProto proxy secret has {SECRET_LEN} bytes, not {len(secret)}")


def init_is_allowed(init: bytes | bytearray) -> bool:
    """Whether a generated init's plaintext may be sent (Telegram's client rules)."""
    return (
        init[0] != 0xEF and init[:4] not in FORBIDDEN_PREFIXES and init[4:8] != b"\x00\x00\x00\x00"
    )


def parse_init(init: bytes, secret: bytes | None = None) -> Init:
    """Read a 64-byte init as the accepting side (node with ``secret``, DC without).

    Raises :class:`ProtocolError` when the decrypted tag is unknown: the init
    was made with another secret, or is not an init at all.
    """
    if len(init) != INIT_LEN:
        raise ProtocolError(f"obfuscated2 init has {INIT_LEN} bytes, got {len(init)}")
    _check_secret(secret)
    forward = init[KEY_IV_OFFSET:TAG_OFFSET]
    dec_key, dec_iv = _derive(forward, secret)
    enc_key, enc_iv = _derive(forward[::-1], secret)
    decryptor = new_ctr(dec_key, dec_iv)
    plain = decryptor.update(init)
    tag = _TAGS.get(plain[TAG_OFFSET:DC_OFFSET])
    if tag is None:
        raise ProtocolError("obfuscated2 init carries no known protocol tag (wrong secret?)")
    (dc,) = struct.unpack_from("<h", plain, DC_OFFSET)
    return Init(tag, dc, decryptor, new_ctr(enc_key, enc_iv), enc_key + enc_iv)


def generate_init(
    tag: ProtocolTag,
    dc: int,
    secret: bytes | None = None,
    *,
    reply_key_iv: bytes | None = None,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[bytes, Init]:
    """Make an init as the connecting side; returns the wire bytes and our ciphers.

    ``secret`` is the proxy secret when a client connects to a proxy, ``None``
    towards a data centre.  ``reply_key_iv`` (no secret only) fixes the key
    and IV of the reverse direction, so that the peer's answers arrive under
    that keystream; the node passes its client leg's ``reply_key_iv`` so that
    data-centre bytes need no re-encryption on the way back to the client
    (mtprotoproxy's "fast mode").
    """
    _check_secret(secret)
    if not -32768 <= dc <= 32767:
        raise ValueError(f"DC index {dc} does not fit a signed 16-bit field")
    if reply_key_iv is not None and (secret is not None or len(reply_key_iv) != KEY_LEN + IV_LEN):
        raise ValueError("reply_key_iv needs 48 bytes and no secret")
    for _ in range(1000):
        raw = bytearray(random(INIT_LEN))
        if reply_key_iv is not None:
            raw[KEY_IV_OFFSET:TAG_OFFSET] = reply_key_iv[::-1]
        raw[TAG_OFFSET:DC_OFFSET] = tag.value
        struct.pack_into("<h", raw, DC_OFFSET, dc)
        if init_is_allowed(raw):
            break
    else:  # pragma: no cover - only a broken random source gets here
        raise RuntimeError("random source keeps producing forbidden obfuscated2 inits")
    forward = bytes(raw[KEY_IV_OFFSET:TAG_OFFSET])
    enc_key, enc_iv = _derive(forward, secret)
    dec_key, dec_iv = _derive(forward[::-1], secret)
    encryptor = new_ctr(enc_key, enc_iv)
    encrypted = encryptor.update(bytes(raw))
    wire = bytes(raw[:TAG_OFFSET]) + encrypted[TAG_OFFSET:]
    return wire, Init(tag, dc, new_ctr(dec_key, dec_iv), encryptor, dec_key + dec_iv)


# --------------------------------------------------------------------------- frames


def encode_frame(
    tag: ProtocolTag,
    payload: bytes,
    *,
    quick_ack: bool = False,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """One MTProto packet in the framing of ``tag`` (client->server direction).

    Payloads are whole 4-byte words, as every MTProto packet is; padded
    intermediate appends 0-3 random bytes that the receiver drops (Telethon's
    and MTProxy's rule, so that the decoder can tell padding from payload).
    """
    size = len(payload)
    if size > MAX_PACKET * 8:
        raise ValueError(f"MTProto packet of {size} bytes is too large")
    if size % 4:
        raise ValueError("MTProto packets are a multiple of 4 bytes")
    if tag is ProtocolTag.ABRIDGED:
        words = size // 4
        flag = 0x80 if quick_ack else 0
        if words < 0x7F:
            return bytes([words | flag]) + payload
        return bytes([0x7F | flag]) + words.to_bytes(3, "little") + payload
    flag32 = 0x80000000 if quick_ack else 0
    if tag is ProtocolTag.INTERMEDIATE:
        return struct.pack("<I", size | flag32) + payload
    pad = random(secrets.randbelow(4))
    return struct.pack("<I", (size + len(pad)) | flag32) + payload + pad


@dataclass(frozen=True, slots=True)
class Packet:
    """One MTProto packet out of a frame (padding removed)."""

    payload: bytes
    quick_ack: bool = False


class FrameDecoder:
    """Splits a decrypted obfuscated2 stream into MTProto packets.

    Feed bytes with :meth:`feed`; it returns every packet completed so far and
    keeps the rest.  A frame announcing more than ``max_packet`` bytes raises
    :class:`BufferOverflow` at once, before its body arrives, so memory stays
    bounded by ``max_packet`` plus one read.  Padded frames lose their 0-3
    trailing bytes beyond the last whole 4-byte word (as MTProxy does).
    """

    __slots__ = ("_buf", "max_packet", "tag")

    def __init__(self, tag: ProtocolTag, *, max_packet: int = MAX_PACKET) -> None:
        self.tag = tag
        self.max_packet = max_packet
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        while True:
            packet = self._next()
            if packet is None:
                return out
            out.append(packet)

    def _next(self) -> Packet | None:
        buf = self._buf
        if self.tag is ProtocolTag.ABRIDGED:
            if not buf:
                return None
            first = buf[0]
            quick_ack = bool(first & 0x80)
            words = first & 0x7F
            head = 1
            if words == 0x7F:
                if len(buf) < 4:
                    return None
                words = int.from_bytes(buf[1:4], "little")
                head = 4
            size = words * 4
        else:
            if len(buf) < 4:
                return None
            (raw,) = struct.unpack_from("<I", buf, 0)
            quick_ack = bool(raw & 0x80000000)
            size = raw & 0x7FFFFFFF
            head = 4
            if self.tag is ProtocolTag.INTERMEDIATE and size % 4:
                raise ProtocolError(f"intermediate frame of {size} bytes is not whole words")
        if size > self.max_packet:
            raise BufferOverflow(f"MTProto frame of {size} bytes exceeds {self.max_packet}")
        if len(buf) < head + size:
            return None
        payload = bytes(buf[head : head + size])
        del buf[: head + size]
        if self.tag is ProtocolTag.PADDED:
            payload = payload[: len(payload) - len(payload) % 4]
        return Packet(payload, quick_ack)
