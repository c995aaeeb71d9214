"""MTProto's first exchange, unencrypted: ``req_pq_multi`` and its ``resPQ`` answer.

Theory of operation.  A Telegram client begins every new authorization key
with an *unencrypted* message (core.telegram.org/mtproto/description,
"Unencrypted Message")::

    auth_key_id:int64 = 0 | message_id:int64 | message_data_length:int32 | message_data

all little-endian.  ``message_id`` is about unix time * 2^32; a client's is
divisible by 4, a server's answer is ≡ 1 (mod 4).  The client's data is
``req_pq_multi#be7e8ef1 nonce:int128`` and the data centre answers
``resPQ#05162463 nonce:int128 server_nonce:int128 pq:string
server_public_key_fingerprints:Vector<long>``, echoing the nonce.  No
account and no key are involved, so a probe can send it through an MTProto
proxy: a ``resPQ`` with our nonce proves the whole path to a data centre
works.  The transport (abridged/intermediate framing inside obfuscated2)
wraps these bytes; this module deals with the message only.

Sans-IO: bytes in, dataclasses out.  Every parser takes one whole message
(the transport has already framed it), bounds every length it reads, and
raises :class:`~resistance.errors.ProtocolError` for anything else.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum

from resistance.errors import ProtocolError


class Constructor(IntEnum):
    """TL constructor numbers, as the wire's little-endian uint32."""

    REQ_PQ_MULTI = 0xBE7E8EF1
    RES_PQ = 0x05162463
    VECTOR = 0x1CB5C415


#: The header of an unencrypted message: auth_key_id, message_id, length.
HEADER = struct.Struct("<qqi")
#: ``pq`` is a product of two primes below 2^32, so at most 8 bytes; allow some slack.
MAX_PQ_BYTES = 16
#: Data centres send one or a few key fingerprints.
MAX_FINGERPRINTS = 64
REQ_PQ_MULTI_LENGTH = HEADER.size + 4 + 16
#: The longest resPQ this parser takes (header, ids, nonces, pq, the vector).
MAX_RES_PQ_LENGTH = HEADER.size + 4 + 32 + 4 + MAX_PQ_BYTES + 8 + 8 * MAX_FINGERPRINTS


def client_message_id(now: float) -> int:
    """A client's message_id for unix time ``now``: time * 2^32, divisible by 4."""
    return (int(now * 2**32) & 0x7FFF_FFFF_FFFF_FFFF) & ~3


def _header(message_id: int, data: bytes) -> bytes:
    return HEADER.pack(0, message_id, len(data)) + data


def _split(message: bytes, *, limit: int) -> tuple[int, bytes]:
    """message_id and message_data of an unencrypted message, checked."""
    if len(message) < HEADER.size:
        raise ProtocolError(f"MTProto message of {len(message)} bytes is shorter than its header")
    if len(message) > limit:
        raise ProtocolError(f"MTProto message of {len(message)} bytes is too long")
    auth_key_id, message_id, length = HEADER.unpack_from(message)
    if auth_key_id != 0:
        raise ProtocolError("MTProto message is encrypted (auth_key_id is not 0)")
    if length != len(message) - HEADER.size:
        raise ProtocolError(
            f"MTProto message_data_length {length} does not match the "
            f"{len(message) - HEADER.size} bytes that follow"
        )
    return message_id, message[HEADER.size :]


@dataclass(frozen=True, slots=True)
class ReqPqMulti:
    nonce: bytes
    message_id: int

    def serialize(self) -> bytes:
        data = struct.pack("<I", Constructor.REQ_PQ_MULTI) + self.nonce
        return _header(self.message_id, data)

    @classmethod
    def parse(cls, message: bytes) -> ReqPqMulti:
        message_id, data = _split(message, limit=REQ_PQ_MULTI_LENGTH)
        if message_id % 4 != 0:
            raise ProtocolError("a client's message_id must be divisible by 4")
        if len(data) != 20 or struct.unpack_from("<I", data)[0] != Constructor.REQ_PQ_MULTI:
            raise ProtocolError("MTProto message is not req_pq_multi")
        return cls(data[4:], message_id)


def req_pq_multi(now: float, nonce: bytes | None = None) -> ReqPqMulti:
    """A fresh ``req_pq_multi`` (random nonce unless given) for unix time ``now``."""
    nonce = secrets.token_bytes(16) if nonce is None else nonce
    if len(nonce) != 16:
        raise ValueError("a req_pq_multi nonce is 16 bytes")
    return ReqPqMulti(nonce, client_message_id(now))


def _tl_bytes(value: bytes) -> bytes:
    """TL ``string``: short form (length < 254), padded to a multiple of 4."""
    if len(value) >= 254:
        raise ValueError("only short TL strings are written here")
    body = bytes([len(value)]) + value
    return body + bytes(-len(body) % 4)


@dataclass(frozen=True, slots=True)
class ResPQ:
    nonce: bytes
    server_nonce: bytes
    pq: bytes
    fingerprints: tuple[int, ...]
    message_id: int

    def serialize(self) -> bytes:
        data = (
            struct.pack("<I", Constructor.RES_PQ)
            + self.nonce
            + self.server_nonce
            + _tl_bytes(self.pq)
            + struct.pack("<Ii", Constructor.VECTOR, len(self.fingerprints))
            + b"".join(struct.pack("<q", f) for f in self.fingerprints)
        )
        return _header(self.message_id, data)

    @classmethod
    def parse(cls, message: bytes) -> ResPQ:
        message_id, data = _split(message, limit=MAX_RES_PQ_LENGTH)
        if message_id % 4 not in (1, 3):
            raise ProtocolError("a server's message_id must be odd")
        if len(data) < 4 + 32 + 4 + 8 or struct.unpack_from("<I", data)[0] != Constructor.RES_PQ:
            raise ProtocolError("MTProto message is not resPQ")
        nonce, server_nonce = data[4:20], data[20:36]
        size = data[36]
        if size == 0 or size > MAX_PQ_BYTES:
            raise ProtocolError(f"resPQ pq of {size} bytes (expected 1-{MAX_PQ_BYTES})")
        end = 36 + (1 + size + 3) // 4 * 4
        pq = data[37 : 37 + size]
        if len(data) < end + 8:
            raise ProtocolError("resPQ ends inside pq or before its fingerprints")
        if any(data[37 + size : end]):
            raise ProtocolError("resPQ pq padding is not zero")
        vector, count = struct.unpack_from("<Ii", data, end)
        if vector != Constructor.VECTOR:
            raise ProtocolError("resPQ fingerprints are not a TL vector")
        if not 0 < count <= MAX_FINGERPRINTS:
            raise ProtocolError(f"resPQ carries {count} fingerprints (expected 1-64)")
        if len(data) != end + 8 + 8 * count:
            raise ProtocolError("resPQ length does not match its fingerprint count")
        fingerprints = struct.unpack_from(f"<{count}q", data, end + 8)
        return cls(nonce, server_nonce, pq, tuple(fingerprints), message_id)


def check_res_pq(message: bytes, request: ReqPqMulti) -> ResPQ:
    """The data centre's ``resPQ`` to ``request``, or ProtocolError (also for a wrong nonce)."""
    answer = ResPQ.parse(message)
    if answer.nonce != request.nonce:
        raise ProtocolError("resPQ does not echo our nonce")
    return answer
