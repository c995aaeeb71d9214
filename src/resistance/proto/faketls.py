"""MTProto fake-TLS ("ee" secrets) and proxy secrets, sans-IO.

Theory of operation
-------------------
A fake-TLS client opens with what looks like a TLS 1.3 ClientHello to the
domain carried in its secret.  Its 32-byte random is not random::

    random = HMAC-SHA256(key, hello record with random zeroed)
             XOR (28 zero bytes || unix time as 4 little-endian bytes)

The server recomputes the HMAC for a candidate key (:func:`hello_digest`),
XORs it with the random, and accepts when 28 bytes are zero and the time is
inside :class:`TimeWindow`.  It answers with one ServerHello record, a
ChangeCipherSpec record and one ApplicationData record of random bytes
(:func:`build_server_answer`); the ServerHello's random is
``HMAC-SHA256(key, client random || answer with that random zeroed)``, which
proves to the client that the server knows the key.  Afterwards both sides
send obfuscated2 (see :mod:`resistance.proto.obfuscated2`) inside TLS
ApplicationData records: :class:`RecordReader` takes them apart (a client's
single leading ChangeCipherSpec is allowed) and :func:`encode_records` wraps
bytes into records no larger than a real server's.

Anything that does not verify is none of this module's business: the node
relays it, byte for byte, to a real TLS site.

Time window
-----------
:data:`DEFAULT_WINDOW` accepts a hello stamped up to 300 s in the past and up
to 60 s in the future.  Telegram's apps stamp with server-corrected time, so
they sit near zero; the past side covers a slow phone clock and network delay,
the future side a fast phone clock.  The window is what a replay cache must
cover: a hello older than the window is refused by time alone, so the cache
only keeps (and persists) entries younger than it.  MTProxy uses -10 min/+3 s,
mtprotoproxy -20/+10 min; a shorter past side means a smaller replay cache.

Client side
-----------
:func:`build_client_hello` makes the hello of a fake-TLS client.  It follows
Telegram Desktop's generator (GREASE values, shuffled extensions, X25519 key
share, SNI = domain, HMAC'd random with the timestamp) but, because Telegram's
fixed 517-byte hello is itself fingerprinted since 2026, it varies per
connection what a modern browser varies: the extension order, GREASE values,
an ECH GREASE payload of varying size, a post-quantum key share, the total
length.  :func:`parse_server_answer` checks the server's answer.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import os
import random as _random
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from resistance.errors import BufferOverflow, ProtocolError

RECORD_HEADER_LEN: Final = 5
#: The largest TLS plaintext fragment (RFC 8446 5.1).
MAX_FRAGMENT: Final = 16384
#: The largest record body accepted from a peer: a TLS 1.3 ciphertext may
#: carry 256 bytes of expansion beyond the plaintext limit (RFC 8446 5.2).
MAX_RECORD_BODY: Final = MAX_FRAGMENT + 256
RANDOM_OFFSET: Final = 11
RANDOM_LEN: Final = 32
KEY_LEN: Final = 16
#: A Telegram app's hello is 517 bytes; a browser's under 2 KiB; the cap stops
#: a probe from making the node buffer a whole 16 KiB record before deciding.
MAX_HELLO_BODY: Final = 4096
MIN_HELLO_BODY: Final = 64

CCS_RECORD: Final = b"\x14\x03\x03\x00\x01\x01"


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 0x14
    ALERT = 0x15
    HANDSHAKE = 0x16
    APPLICATION_DATA = 0x17


class HandshakeType(enum.IntEnum):
    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02


class ExtensionType(enum.IntEnum):
    SERVER_NAME = 0x0000
    SUPPORTED_GROUPS = 0x000A
    SIGNATURE_ALGORITHMS = 0x000D
    ALPN = 0x0010
    PADDING = 0x0015
    SUPPORTED_VERSIONS = 0x002B
    KEY_SHARE = 0x0033


# --------------------------------------------------------------------------- secrets


class SecretMode(enum.Enum):
    """How a client uses a proxy secret; the value is the link's prefix."""

    CLASSIC = ""
    DD = "dd"
    EE = "ee"


@dataclass(frozen=True, slots=True)
class ProxySecret:
    """An MTProto proxy secret as it appears in a ``tg://proxy`` link.

    ``key`` is the 16-byte key the obfuscated2 and fake-TLS keys derive
    from; ``domain`` is set for ``ee`` (fake-TLS) secrets only.
    """

    key: bytes
    mode: SecretMode = SecretMode.CLASSIC
    domain: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) != KEY_LEN:
            raise ValueError(f"an MTProto secret key has {KEY_LEN} bytes, not {len(self.key)}")
        if (self.mode is SecretMode.EE) != bool(self.domain):
            raise ValueError("a domain goes with an ee secret, and only with one")
        if self.domain is not None:
            _check_domain(self.domain)

    def to_hex(self) -> str:
        """The link form: 32 hex digits, ``dd`` + 32, or ``ee`` + 32 + hex(domain)."""
        tail = self.domain.encode("ascii").hex() if self.domain else ""
        return self.mode.value + self.key.hex() + tail

    def __str__(self) -> str:
        return self.to_hex()


def _check_domain(domain: str) -> None:
    if not 1 <= len(domain) <= 253:
        raise ValueError("an ee secret's domain has 1 to 253 characters")
    if not all(c.isascii() and (c.isalnum() or c in "-.") for c in domain):
        raise ValueError(f"an ee secret's domain is an ASCII host name, not {domain!r}")


def parse_secret(text: str) -> ProxySecret:
    """Read a secret in any form Telegram's apps take.

    Hex: ``<32 hex>``, ``dd<32 hex>``, ``ee<32 hex><hex of domain>``; also the
    URL-safe base64 of the same bytes that mtg prints for ee secrets.  Raises
    ``ValueError`` with a one-line reason.
    """
    text = text.strip()
    raw: bytes
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("an MTProto secret is hex (or URL-safe base64)") from None
    if len(raw) == KEY_LEN:
        return ProxySecret(raw)
    if len(raw) == KEY_LEN + 1 and raw[0] == 0xDD:
        return ProxySecret(raw[1:], SecretMode.DD)
    if len(raw) > KEY_LEN + 1 and raw[0] == 0xEE:
        try:
            domain = raw[KEY_LEN + 1 :].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("an ee secret's domain is not ASCII") from None
        return ProxySecret(raw[1 : KEY_LEN + 1], SecretMode.EE, domain)
    raise ValueError("an MTProto secret is 16 bytes, dd + 16 bytes, or ee + 16 bytes + domain")


# --------------------------------------------------------------------------- ClientHello


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A parsed ClientHello record; ``record`` holds all of its bytes."""

    record: bytes
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    server_name: str | None


def hello_record_length(header: bytes) -> int:
    """The total length of the ClientHello record whose first 5 bytes are given.

    Raises :class:`ProtocolError` when the header is not a TLS handshake record
    header of plausible ClientHello size (the caller then treats the
    connection as "not fake-TLS").
    """
    if len(header) < RECORD_HEADER_LEN:
        raise ProtocolError("TLS record header needs 5 bytes")
    if header[0] != ContentType.HANDSHAKE:
        raise ProtocolError("not a TLS handshake record")
    if header[1] != 3 or header[2] > 4:
        raise ProtocolError("not a TLS record version")
    length = (header[3] << 8) | header[4]
    if length > MAX_HELLO_BODY:
        raise BufferOverflow(f"ClientHello record of {length} bytes exceeds {MAX_HELLO_BODY}")
    if length < MIN_HELLO_BODY:
        raise ProtocolError(f"ClientHello record of {length} bytes is too short")
    return RECORD_HEADER_LEN + length


class _Cursor:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ProtocolError(f"ClientHello truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "big")

    def sub(self, n: int, what: str) -> _Cursor:
        if self.pos + n > self.end:
            raise ProtocolError(f"ClientHello truncated in {what}")
        inner = _Cursor(self.data, self.pos, self.pos + n)
        self.pos += n
        return inner

    @property
    def left(self) -> int:
        return self.end - self.pos


def parse_client_hello(record: bytes) -> ClientHello:
    """Parse one complete ClientHello record (header included), strictly.

    Every length must agree with its container, no byte may be left over,
    and the server name, when present, must be one ASCII host name.  Raises
    :class:`ProtocolError` (or :class:`BufferOverflow` for an oversized
    record) saying what is wrong.
    """
    total = hello_record_length(record[:RECORD_HEADER_LEN])
    if len(record) != total:
        raise ProtocolError(f"ClientHello record is {total} bytes, got {len(record)}")
    cur = _Cursor(record, RECORD_HEADER_LEN, total)
    if cur.u8("handshake type") != HandshakeType.CLIENT_HELLO:
        raise ProtocolError("TLS handshake is not a ClientHello")
    if cur.u24("handshake length") != cur.left:
        raise ProtocolError("ClientHello length disagrees with its record")
    version = cur.take(2, "version")
    if version[0] != 3:
        raise ProtocolError("ClientHello has no TLS version")
    random = cur.take(RANDOM_LEN, "random")
    session_id = cur.take(cur.u8("session id length"), "session id")
    if len(session_id) > 32:
        raise ProtocolError("ClientHello session id is longer than 32 bytes")
    suites_len = cur.u16("cipher suites length")
    if suites_len == 0 or suites_len % 2:
        raise ProtocolError("ClientHello cipher suite list is empty or odd")
    suites_raw = cur.take(suites_len, "cipher suites")
    suites = tuple(struct.unpack(f">{suites_len // 2}H", suites_raw))
    compression = cur.take(cur.u8("compression length"), "compression methods")
    if not compression:
        raise ProtocolError("ClientHello lists no compression method")
    extensions: list[int] = []
    server_name: str | None = None
    if cur.left:
        ext = cur.sub(cur.u16("extensions length"), "extensions")
        if cur.left:
            raise ProtocolError("bytes after the ClientHello extensions")
        seen: set[int] = set()
        while ext.left:
            kind = ext.u16("extension type")
            body = ext.sub(ext.u16("extension length"), "extension body")
            if kind in seen:
                raise ProtocolError(f"ClientHello repeats extension {kind:#06x}")
            seen.add(kind)
            extensions.append(kind)
            if kind == ExtensionType.SERVER_NAME:
                server_name = _parse_sni(body)
    return ClientHello(
        record=bytes(record),
        random=bytes(random),
        session_id=bytes(session_id),
        cipher_suites=suites,
        extensions=tuple(extensions),
        server_name=server_name,
    )


def _parse_sni(body: _Cursor) -> str | None:
    names = body.sub(body.u16("server name list length"), "server name list")
    if body.left:
        raise ProtocolError("bytes after the server name list")
    host: str | None = None
    while names.left:
        kind = names.u8("server name type")
        name = names.take(names.u16("server name length"), "server name")
        if kind != 0:
            continue
        if host is not None:
            raise ProtocolError("ClientHello names two hosts")
        try:
            host = name.decode("ascii")
            _check_domain(host)
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("ClientHello server name is not an ASCII host name") from None
    return host


class HelloBuffer:
    """Collects the first record of a connection until the ClientHello is whole.

    :meth:`feed` returns ``None`` while more bytes are needed, and the record
    bytes once it is complete (bytes beyond it stay in :attr:`rest`).  It
    raises :class:`ProtocolError` as soon as the bytes cannot be a
    ClientHello, so the caller can switch to fronting early.  Everything fed
    is kept in :attr:`seen` so that it can be replayed to the front.
    """

    __slots__ = ("_need", "rest", "seen")

    def __init__(self) -> None:
        self.seen = bytearray()
        self._need = 0
        self.rest = b""

    def feed(self, data: bytes) -> bytes | None:
        self.seen += data
        if not self._need:
            if len(self.seen) < RECORD_HEADER_LEN:
                if not _could_be_tls(bytes(self.seen)):
                    raise ProtocolError("not a TLS handshake record")
                return None
            self._need = hello_record_length(bytes(self.seen[:RECORD_HEADER_LEN]))
        if len(self.seen) < self._need:
            return None
        self.rest = bytes(self.seen[self._need :])
        return bytes(self.seen[: self._need])


def _could_be_tls(prefix: bytes) -> bool:
    return (
        (len(prefix) < 1 or prefix[0] == ContentType.HANDSHAKE)
        and (len(prefix) < 2 or prefix[1] == 3)
        and (len(prefix) < 3 or prefix[2] <= 4)
    )


def looks_like_tls(prefix: bytes) -> bool:
    """Whether a connection's first bytes may start a TLS handshake record."""
    return bool(prefix) and _could_be_tls(prefix[:3])


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """How far (seconds) a hello's timestamp may lie before and after our clock."""

    past: int = 300
    future: int = 60

    def contains(self, stamp: int, now: float) -> bool:
        return now - self.past <= stamp <= now + self.future


DEFAULT_WINDOW: Final = TimeWindow()


def zeroed_hello(record: bytes) -> bytes:
    """The hello with its random zeroed: the message every key's HMAC is taken over."""
    return record[:RANDOM_OFFSET] + bytes(RANDOM_LEN) + record[RANDOM_OFFSET + RANDOM_LEN :]


def hello_timestamp(key: bytes, zeroed: bytes, client_random: bytes) -> int | None:
    """The timestamp hidden in ``client_random`` if ``key`` made it, else ``None``.

    ``zeroed`` is :func:`zeroed_hello` of the record (computed once per hello
    and shared by every key tried).
    """
    mac = hmac.digest(key, zeroed, "sha256")
    if not hmac.compare_digest(mac[:28], client_random[:28]):
        return None
    return int.from_bytes(mac[28:32], "little") ^ int.from_bytes(client_random[28:32], "little")


def verify_hello(
    key: bytes,
    hello: ClientHello,
    now: float,
    window: TimeWindow = DEFAULT_WINDOW,
) -> int:
    """Check a hello against one key; return its timestamp or raise ProtocolError."""
    stamp = hello_timestamp(key, zeroed_hello(hello.record), hello.random)
    if stamp is None:
        raise ProtocolError("ClientHello was not made with this key")
    if not window.contains(stamp, now):
        raise ProtocolError(f"ClientHello timestamp is {int(stamp - now):+d} s off")
    return stamp


# --------------------------------------------------------------------------- server answer

#: TLS 1.3 cipher suites a server may pick, in our order of preference.
_TLS13_SUITES: Final = (0x1301, 0x1302, 0x1303)


def build_server_answer(
    key: bytes,
    hello: ClientHello,
    *,
    payload_len: int,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """ServerHello + ChangeCipherSpec + one ApplicationData record, HMAC-signed.

    ``payload_len`` is the size of the "encrypted extensions, certificate,
    verify, finished" stand-in; a node keeps it constant (as a real server's
    certificate chain is) in 1,000-6,000 bytes.
    """
    if not 64 <= payload_len <= MAX_FRAGMENT:
        raise ValueError("fake certificate length must be 64..16384 bytes")
    suite = next((s for s in hello.cipher_suites if s in _TLS13_SUITES), 0x1301)
    public = bytearray(random(32))
    public[31] &= 0x7F
    extensions = (
        struct.pack(">HHHH", ExtensionType.KEY_SHARE, 36, 0x001D, 32)
        + bytes(public)
        + struct.pack(">HHH", ExtensionType.SUPPORTED_VERSIONS, 2, 0x0304)
    )
    body = (
        b"\x03\x03"
        + bytes(RANDOM_LEN)
        + bytes([len(hello.session_id)])
        + hello.session_id
        + struct.pack(">HB", suite, 0)
        + struct.pack(">H", len(extensions))
        + extensions
    )
    handshake = bytes([HandshakeType.SERVER_HELLO]) + len(body).to_bytes(3, "big") + body
    answer = (
        struct.pack(">BHH", ContentType.HANDSHAKE, 0x0303, len(handshake))
        + handshake
        + CCS_RECORD
        + struct.pack(">BHH", ContentType.APPLICATION_DATA, 0x0303, payload_len)
        + random(payload_len)
    )
    mac = hmac.digest(key, hello.random + answer, "sha256")
    return answer[:RANDOM_OFFSET] + mac + answer[RANDOM_OFFSET + RANDOM_LEN :]


def parse_server_answer(key: bytes, client_random: bytes, data: bytes) -> int | None:
    """Client side: length of the server's fake-TLS answer at the start of ``data``.

    Returns ``None`` while the answer is incomplete; raises ProtocolError when
    its shape or its HMAC is wrong (the proxy does not know our key).
    """
    pos = 0
    for expected in (ContentType.HANDSHAKE, ContentType.CHANGE_CIPHER_SPEC,
                     ContentType.APPLICATION_DATA):  # fmt: skip
        if len(data) < pos + RECORD_HEADER_LEN:
            return None
        if data[pos] != expected or data[pos + 1 : pos + 3] != b"\x03\x03":
            raise ProtocolError(f"server answer lacks its {expected.name} record")
        (length,) = struct.unpack_from(">H", data, pos + 3)
        if length > MAX_RECORD_BODY:
            raise BufferOverflow("server answer record too large")
        pos += RECORD_HEADER_LEN + length
    if len(data) < pos:
        return None
    if pos < RANDOM_OFFSET + RANDOM_LEN:
        raise ProtocolError("server answer too short")
    answer = data[:pos]
    zeroed = answer[:RANDOM_OFFSET] + bytes(RANDOM_LEN) + answer[RANDOM_OFFSET + RANDOM_LEN :]
    mac = hmac.digest(key, client_random + zeroed, "sha256")
    if not hmac.compare_digest(mac, answer[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LEN]):
        raise ProtocolError("server answer is not signed with our key")
    return pos


# --------------------------------------------------------------------------- records


class RecordReader:
    """Takes TLS ApplicationData records apart after the fake-TLS handshake.

    :meth:`feed` returns the concatenated payload of every complete record.
    One ChangeCipherSpec record is allowed before the first ApplicationData
    record (clients send it); anything else, or a record body larger than
    ``max_body``, raises :class:`ProtocolError`.  Memory stays under one
    record plus one read.
    """

    __slots__ = ("_buf", "_ccs_ok", "max_body")

    def __init__(self, *, allow_ccs: bool = True, max_body: int = MAX_RECORD_BODY) -> None:
        self._buf = bytearray()
        self._ccs_ok = allow_ccs
        self.max_body = max_body

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        end = len(buf)
        while end - pos >= RECORD_HEADER_LEN:
            kind = buf[pos]
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if buf[pos + 1] != 3 or buf[pos + 2] != 3:
                raise ProtocolError("TLS record with a wrong version")
            if length > self.max_body:
                raise BufferOverflow(f"TLS record of {length} bytes exceeds {self.max_body}")
            if kind == ContentType.APPLICATION_DATA:
                if end - pos < RECORD_HEADER_LEN + length:
                    break
                out += buf[pos + RECORD_HEADER_LEN : pos + RECORD_HEADER_LEN + length]
                self._ccs_ok = False
            elif kind == ContentType.CHANGE_CIPHER_SPEC and self._ccs_ok:
                if end - pos < RECORD_HEADER_LEN + length:
                    break
                if length != 1 or buf[pos + RECORD_HEADER_LEN] != 1:
                    raise ProtocolError("malformed ChangeCipherSpec record")
                self._ccs_ok = False
            else:
                raise ProtocolError(f"unexpected TLS record type {kind:#04x}")
            pos += RECORD_HEADER_LEN + length
        if pos:
            del buf[:pos]
        return bytes(out)


_APPDATA_HEADER: Final = struct.Struct(">BHH")


def encode_records(data: bytes, max_fragment: int = MAX_FRAGMENT) -> bytes:
    """Wrap ``data`` into ApplicationData records of at most ``max_fragment`` bytes.

    Bulk data goes out in full 16 KiB records and the rest in one shorter
    record, which is what an HTTPS server streaming a download does.
    """
    if not data:
        return b""
    if len(data) <= max_fragment:
        return _APPDATA_HEADER.pack(0x17, 0x0303, len(data)) + data
    parts: list[bytes | memoryview] = []
    view = memoryview(data)
    for start in range(0, len(data), max_fragment):
        chunk = view[start : start + max_fragment]
        parts.append(_APPDATA_HEADER.pack(0x17, 0x0303, len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


# --------------------------------------------------------------------------- client hello


_CIPHER_SUITES: Final = (
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
    0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)  # fmt: skip
_SIGNATURE_ALGORITHMS: Final = (
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
)  # fmt: skip
_X25519MLKEM768: Final = 0x11EC


def _grease(rng: _random.Random) -> int:
    nibble = rng.randrange(16)
    return (nibble << 12) | 0x0A00 | (nibble << 4) | 0x0A


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack(">HH", kind, len(body)) + body


def _vec16(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def _u16s(values: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack(f">{len(values)}H", *values)


@dataclass(slots=True)
class ClientHelloParams:
    """What varies between connections (all drawn from ``rng``; tests may fix it)."""

    rng: _random.Random = field(default_factory=_random.SystemRandom)
    random: Callable[[int], bytes] = os.urandom


def build_client_hello(
    key: bytes,
    domain: str,
    now: float,
    params: ClientHelloParams | None = None,
) -> bytes:
    """A fake-TLS ClientHello for ``domain`` signed with ``key`` at time ``now``.

    The layout follows Telegram Desktop's rules (GREASE cipher and
    extension, shuffled extensions, X25519 key share, SNI, ALPN h2/http1.1,
    padding) and adds what current Chromium sends (ECH GREASE, a hybrid
    post-quantum key share) with per-connection variation, so that no two
    hellos share a fixed byte pattern or length.
    """
    if len(key) != KEY_LEN:
        raise ValueError(f"fake-TLS key has {KEY_LEN} bytes")
    _check_domain(domain)
    p = params or ClientHelloParams()
    rng, rand = p.rng, p.random
    grease = [_grease(rng) for _ in range(5)]
    while grease[4] == grease[1]:  # the first and last extensions differ
        grease[4] = _grease(rng)
    host = domain.encode("ascii")
    x25519 = bytearray(rand(32))
    x25519[31] &= 0x7F
    use_pq = rng.random() < 0.8
    groups = [grease[2], 0x001D, 0x0017, 0x0018]
    shares = _u16s([grease[2], 1]) + b"\x00"
    if use_pq:
        groups.insert(1, _X25519MLKEM768)
        shares += _u16s([_X25519MLKEM768, 1216]) + rand(1184) + bytes(x25519)
    shares += _u16s([0x001D, 32]) + bytes(x25519)
    ech_payload = rng.choice((144, 176, 208, 240))
    ech = (
        b"\x00\x00\x01\x00\x01"
        + bytes([rng.randrange(256)])
        + _vec16(rand(32))
        + _vec16(rand(ech_payload))
    )
    extensions = [
        _ext(0x0000, _vec16(b"\x00" + _vec16(host))),
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),
        _ext(0x000A, _vec16(_u16s(groups))),
        _ext(0x000B, b"\x01\x00"),
        _ext(0x000D, _vec16(_u16s(_SIGNATURE_ALGORITHMS))),
        _ext(0x0010, _vec16(b"\x02h2\x08http/1.1")),
        _ext(0x0012, b""),
        _ext(0x0017, b""),
        _ext(0x001B, b"\x02\x00\x02"),
        _ext(0x0023, b""),
        _ext(0x002B, bytes([6]) + _u16s([grease[3], 0x0304, 0x0303])),
        _ext(0x002D, b"\x01\x01"),
        _ext(0x0033, _vec16(shares)),
        _ext(0x44CD, b"\x00\x03\x02h2"),
        _ext(0xFE0D, ech),
        _ext(0xFF01, b"\x00"),
    ]
    rng.shuffle(extensions)
    body_ext = _ext(grease[1], b"") + b"".join(extensions) + _ext(grease[4], b"\x00")
    suites = _u16s([grease[0], *_CIPHER_SUITES])
    hello_body = b"\x03\x03" + bytes(RANDOM_LEN) + b"\x20" + rand(32) + _vec16(suites) + b"\x01\x00"
    unpadded = 4 + len(hello_body) + 2 + len(body_ext)
    if not use_pq and unpadded < 512:
        # Telegram's and older Chromium's padding: reach 512..517 bytes.
        pad = max(1, 517 - 5 - unpadded - 4 - rng.randrange(6))
        body_ext += _ext(ExtensionType.PADDING, bytes(pad))
    hello_body += _vec16(body_ext)
    handshake = bytes([HandshakeType.CLIENT_HELLO]) + len(hello_body).to_bytes(3, "big")
    record = struct.pack(">BHH", ContentType.HANDSHAKE, 0x0301, len(handshake) + len(hello_body))
    record += handshake + hello_body
    mac = bytearray(hmac.digest(key, record, "sha256"))
    stamp = int(now) & 0xFFFFFFFF
    for i, b in enumerate(stamp.to_bytes(4, "little")):
        mac[28 + i] ^= b
    return record[:RANDOM_OFFSET] + bytes(mac) + record[RANDOM_OFFSET + RANDOM_LEN :]


def new_secret_key() -> bytes:
    """A fresh 16-byte proxy key."""
    return secrets.token_bytes(KEY_LEN)
