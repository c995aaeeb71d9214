"""What the lab's censor reads in a packet: TLS ClientHellos, their server name and
their JA3/JA4 fingerprints, and the IPv4/TCP headers around them.

Pure functions on bytes, no I/O, so every parser has property tests.  A
ClientHello is parsed as far as the bytes go: a hello cut at a segment
boundary still yields what came before the cut (``complete`` says whether it
was whole), because an on-path censor decides on the first segment it sees.

Fingerprints follow the published definitions:

* JA3 (Salesforce, 2017): ``version,ciphers,extensions,groups,point_formats``
  as decimal lists joined by ``-``, MD5 of that string; GREASE values
  (RFC 8701) left out.
* JA4 (FoxIO, 2023): ``t13d1516h2_<12 hex>_<12 hex>``: protocol, highest
  version, SNI present (``d``) or not (``i``), counts of ciphers and
  extensions, first and last character of the first ALPN value; then the
  truncated SHA-256 of the sorted cipher list, and of the sorted extension
  list (without SNI and ALPN) followed by the signature algorithms in order.
  GREASE left out everywhere.
"""

from __future__ import annotations

import hashlib
import ssl
import struct
from dataclasses import dataclass, field

TLS_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_GROUPS = 0x000A
EXT_EC_POINT_FORMATS = 0x000B
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
#: A ClientHello larger than this is not a ClientHello anyone sends.
MAX_HELLO = 1 << 16

_JA4_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


class HelloError(ValueError):
    """The bytes are not (the start of) a TLS ClientHello."""


def is_grease(value: int) -> bool:
    """RFC 8701's reserved values 0x0a0a, 0x1a1a, … 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(slots=True)
class ClientHello:
    version: int = 0
    ciphers: list[int] = field(default_factory=list)
    extensions: list[int] = field(default_factory=list)
    server_name: str | None = None
    groups: list[int] = field(default_factory=list)
    point_formats: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    #: Whether every byte of the hello was there (else: parsed up to the cut).
    complete: bool = False

    def ja3_string(self) -> str:
        def join(values: list[int]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))

        return ",".join(
            (
                str(self.version),
                join(self.ciphers),
                join(self.extensions),
                join(self.groups),
                "-".join(str(v) for v in self.point_formats),
            )
        )

    def ja3(self) -> str:
        return hashlib.md5(self.ja3_string().encode(), usedforsecurity=False).hexdigest()

    def ja4(self) -> str:
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        extensions = [e for e in self.extensions if not is_grease(e)]
        versions = [v for v in self.supported_versions if not is_grease(v)]
        version = _JA4_VERSIONS.get(max(versions) if versions else self.version, "00")
        sni = "d" if EXT_SERVER_NAME in extensions else "i"
        alpn = "00"
        if self.alpn and self.alpn[0]:
            first = self.alpn[0]
            ends = bytes((first[0], first[-1]))
            alpn = ends.decode() if ends.isalnum() else first.hex()[0] + first.hex()[-1]
        head = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn}"
        cipher_text = ",".join(f"{c:04x}" for c in sorted(ciphers))
        ext_text = ",".join(
            f"{e:04x}" for e in sorted(extensions) if e not in (EXT_SERVER_NAME, EXT_ALPN)
        )
        sigs = [s for s in self.signature_algorithms if not is_grease(s)]
        if sigs:
            ext_text += "_" + ",".join(f"{s:04x}" for s in sigs)
        return f"{head}_{_sha12(cipher_text) if ciphers else '0' * 12}_" + (
            _sha12(ext_text) if extensions else "0" * 12
        )

    def fingerprints(self) -> set[str]:
        """Both fingerprints, the forms a censor's list may hold."""
        return {self.ja3(), self.ja4()}


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _Reader:
    """Reads big-endian fields; running off the end raises _Cut."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise _Cut
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vector(self, width: int) -> memoryview:
        n = int.from_bytes(self.take(width), "big")
        return self.take(n)


class _Cut(Exception):
    pass


def _u16_list(data: memoryview) -> list[int]:
    if len(data) % 2:
        raise HelloError("a list of 16-bit values has an odd length")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def parse_client_hello(data: bytes) -> ClientHello:
    """Parse a TLS record carrying a ClientHello (the first bytes of a TCP flow).

    Raises HelloError when the bytes are not a ClientHello; a hello cut short
    is returned with what was read and ``complete`` False.
    """
    hello = ClientHello()
    if len(data) < 6 or data[0] != TLS_HANDSHAKE or data[1] != 0x03:
        raise HelloError("not a TLS handshake record")
    if data[5] != HANDSHAKE_CLIENT_HELLO:
        raise HelloError("the handshake message is not a ClientHello")
    record_len = int.from_bytes(data[3:5], "big")
    if record_len < 4:
        raise HelloError("the TLS record is too short for a ClientHello")
    r = _Reader(data[5 : 5 + record_len])
    try:
        r.u8()
        body_len = r.u24()
        if body_len + 4 > record_len:
            # a hello spread over several records: read what this one holds
            body = _Reader(r.take(len(r.data) - r.pos))
        else:
            body = _Reader(r.take(body_len))
        _parse_body(body, hello)
        hello.complete = body_len + 4 <= record_len and len(data) >= 5 + record_len
    except _Cut:
        hello.complete = False
    return hello


def _parse_body(r: _Reader, hello: ClientHello) -> None:
    hello.version = r.u16()
    r.take(32)  # random
    r.vector(1)  # session id
    hello.ciphers = _u16_list(r.vector(2))
    r.vector(1)  # compression methods
    if r.pos == len(r.data):
        return  # no extensions at all
    ext_len = r.u16()
    end = r.pos + ext_len
    while r.pos < min(end, len(r.data)):
        kind = r.u16()
        hello.extensions.append(kind)
        body = _Reader(r.vector(2))
        try:
            _parse_extension(kind, body, hello)
        except _Cut:
            raise HelloError(f"extension {kind:#06x} is malformed") from None


def _parse_extension(kind: int, r: _Reader, hello: ClientHello) -> None:
    if kind == EXT_SERVER_NAME and len(r.data):
        names = _Reader(r.vector(2))
        while names.pos < len(names.data):
            name_type = names.u8()
            name = bytes(names.vector(2))
            if name_type == 0 and hello.server_name is None:
                try:
                    hello.server_name = name.decode("ascii").lower().rstrip(".")
                except UnicodeDecodeError:
                    raise HelloError("the server name is not ASCII") from None
    elif kind == EXT_SUPPORTED_GROUPS:
        hello.groups = _u16_list(r.vector(2))
    elif kind == EXT_EC_POINT_FORMATS:
        hello.point_formats = list(r.vector(1))
    elif kind == EXT_SIGNATURE_ALGORITHMS:
        hello.signature_algorithms = _u16_list(r.vector(2))
    elif kind == EXT_ALPN:
        protocols = _Reader(r.vector(2))
        while protocols.pos < len(protocols.data):
            hello.alpn.append(bytes(protocols.vector(1)))
    elif kind == EXT_SUPPORTED_VERSIONS:
        hello.supported_versions = _u16_list(r.vector(1))


def build_client_hello(
    *,
    ciphers: list[int],
    extensions: list[tuple[int, bytes]],
    version: int = 0x0303,
    random: bytes = bytes(32),
    session_id: bytes = b"",
) -> bytes:
    """A ClientHello record from parts (for tests and the censor's own probes)."""
    ext = b"".join(struct.pack("!HH", k, len(v)) + v for k, v in extensions)
    body = (
        struct.pack("!H", version)
        + random
        + bytes([len(session_id)])
        + session_id
        + struct.pack("!H", 2 * len(ciphers))
        + b"".join(struct.pack("!H", c) for c in ciphers)
        + b"\x01\x00"
        + struct.pack("!H", len(ext))
        + ext
    )
    handshake = bytes([HANDSHAKE_CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    return bytes([TLS_HANDSHAKE, 0x03, 0x01]) + struct.pack("!H", len(handshake)) + handshake


def sni_extension(name: str) -> tuple[int, bytes]:
    raw = name.encode("ascii")
    entry = b"\x00" + struct.pack("!H", len(raw)) + raw
    return EXT_SERVER_NAME, struct.pack("!H", len(entry)) + entry


def hello_of(context: ssl.SSLContext, server_hostname: str | None) -> bytes:
    """The ClientHello record an SSL context sends, made in memory (no socket)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def own_client_fingerprint() -> str:
    """JA4 of the hello the project's client sends to a node (client/dial.py's context,
    dialled by IP address, so without SNI, as every node is dialled)."""
    from resistance.node.tlscert import pinning_client_context

    return parse_client_hello(hello_of(pinning_client_context(), "198.18.10.1")).ja4()


def own_client_fingerprints() -> list[str]:
    """JA4 of the project's client's hello without SNI (a node dialled by address) and
    with one (a node dialled by name): the fingerprints the lab's censor ships."""
    from resistance.node.tlscert import pinning_client_context

    named = parse_client_hello(hello_of(pinning_client_context(), "node.example")).ja4()
    return [own_client_fingerprint(), named]


# --- packets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    #: The TCP sequence number of the payload's first byte.
    seq: int = 0

    @property
    def flow(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)


def parse_ipv4_tcp(frame: bytes, *, link_header: int = 14) -> TcpSegment | None:
    """The TCP segment in an Ethernet frame holding IPv4, or None for anything else
    (another protocol, a fragment, a truncated or inconsistent header)."""
    ip = frame[link_header:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    if ihl < 20 or total < ihl + 20 or total > len(ip):
        return None
    if int.from_bytes(ip[6:8], "big") & 0x3FFF:  # MF or a fragment offset
        return None
    tcp = ip[ihl:total]
    doff = (tcp[12] >> 4) * 4
    if doff < 20 or doff > len(tcp):
        return None
    src = ".".join(str(b) for b in ip[12:16])
    dst = ".".join(str(b) for b in ip[16:20])
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    return TcpSegment(src, sport, dst, dport, bytes(tcp[doff:]), seq)


#: A cut hello is put back together from at most this many segments.
MAX_SPLIT_SEGMENTS = 16


class SplitHello:
    """A ClientHello cut over TCP segments, put back together in sequence order.

    An on-path censor that judged only a flow's first segment would let any
    client through that cuts its hello before the server name (a known DPI
    evasion).  The first segment starts the buffer; each later segment is
    taken only if it is the very next one (its sequence number where the
    buffer ends), so a retransmission or a segment out of order is left for
    the client's retransmission.  Bounded: the hello's own record length
    (at most :data:`MAX_HELLO` bytes) and :data:`MAX_SPLIT_SEGMENTS` segments.
    """

    __slots__ = ("data", "first_seq", "frames")

    def __init__(self, first: TcpSegment, frame: bytes) -> None:
        self.first_seq = first.seq
        self.data = bytearray(first.payload[: MAX_HELLO + 5])
        self.frames = [frame]

    @property
    def wanted(self) -> int:
        """Bytes of the whole TLS record (header included), as its header says."""
        if len(self.data) < 5:
            return MAX_HELLO + 5
        return min(5 + int.from_bytes(self.data[3:5], "big"), MAX_HELLO + 5)

    def add(self, seg: TcpSegment, frame: bytes) -> bool:
        """Take ``seg`` if it is the next segment of the hello; whether it was taken."""
        offset = (seg.seq - self.first_seq) % (1 << 32)
        if offset != len(self.data) or not seg.payload or self.full:
            return False
        self.data += seg.payload[: self.wanted - len(self.data)]
        self.frames.append(frame)
        return True

    @property
    def full(self) -> bool:
        """Nothing more to wait for: the record is whole, or the bounds are reached."""
        return len(self.data) >= self.wanted or len(self.frames) >= MAX_SPLIT_SEGMENTS

    def hello(self) -> ClientHello:
        """The hello as far as the segments go (raises :class:`HelloError` if not one)."""
        return parse_client_hello(bytes(self.data))


def _ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def with_tcp_checksum(packet: bytes) -> bytes:
    """An IPv4/TCP packet with its TCP checksum computed afresh.

    A segment captured on a veth may carry only the pseudo-header's partial sum
    (the sender left the rest to an offload that never happened); a copy sent
    on from a raw socket needs the whole sum."""
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    tcp = bytearray(packet[ihl:total])
    tcp[16:18] = b"\0\0"
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    checksum = ~_ones_sum(pseudo + bytes(tcp)) & 0xFFFF
    tcp[16:18] = struct.pack("!H", checksum)
    return packet[:ihl] + bytes(tcp)
