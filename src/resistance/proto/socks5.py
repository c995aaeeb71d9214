"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), sans-IO.

Nothing here touches a socket or an event loop: the I/O layer feeds the bytes
it received to a :class:`ServerConnection`, pulls events out of it, tells it
what it decided, and writes whatever the machine hands back.

Theory of operation (server side)
---------------------------------
The connection walks through these states::

    GREETING ──▶ AUTH ──▶ AUTH_DECISION ──▶ REQUEST ──▶ REPLY_PENDING
        │                                      ▲              │
        └──────────── (no auth method) ────────┘              ▼
                               ESTABLISHED / BIND_PENDING / UDP / CLOSED

* In GREETING the machine picks the method itself (username/password when the
  server requires it, "no authentication" when it does not) and queues the
  method reply.  No acceptable method raises :class:`ProtocolError` whose
  ``reply`` is ``05 FF``.
* AUTH yields an :class:`AuthRequest`; the machine then *pauses*
  (``next_event`` returns :data:`PAUSED`) until the application calls
  :meth:`ServerConnection.accept_auth` or :meth:`ServerConnection.reject_auth`.
  Pipelined bytes stay buffered meanwhile, so a client that sends greeting,
  credentials and request in one segment is handled exactly like a slow one.
* REQUEST yields a :class:`CommandRequest`, and the machine waits for
  :meth:`ServerConnection.reply`.  Bytes that arrived after the request are
  early application data: :meth:`ServerConnection.take_early_data` hands them
  over once the reply is sent.
* BIND answers twice: the first successful reply moves to BIND_PENDING, the
  second to ESTABLISHED.

All outgoing bytes accumulate until :meth:`ServerConnection.data_to_send`
collects them, so one write can carry several replies.  Any violation raises
:class:`~resistance.errors.ProtocolError` carrying the bytes to send before
closing; input beyond ``max_buffer`` raises
:class:`~resistance.errors.BufferOverflow`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from resistance.errors import BufferOverflow, ProtocolError

VERSION: Final = 5
AUTH_VERSION: Final = 1


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class State(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    AUTH_DECISION = "auth-decision"
    REQUEST = "request"
    REPLY_PENDING = "reply-pending"
    BIND_PENDING = "bind-pending"
    ESTABLISHED = "established"
    UDP = "udp"
    CLOSED = "closed"


# Members the per-connection path reads, as module globals named like the member:
# on Python 3.11 an enum member read through its class (``State.GREETING``) is a
# descriptor call of ~80 ns, a global ~10 ns, and one handshake reads dozens of
# them.  The one set of such aliases: sessions import these, never their own.
GREETING: Final = State.GREETING
AUTH: Final = State.AUTH
AUTH_DECISION: Final = State.AUTH_DECISION
REQUEST: Final = State.REQUEST
REPLY_PENDING: Final = State.REPLY_PENDING
BIND_PENDING: Final = State.BIND_PENDING
ESTABLISHED: Final = State.ESTABLISHED
UDP: Final = State.UDP
CLOSED: Final = State.CLOSED
_UNBOUNDED_STATES: Final = frozenset((ESTABLISHED, BIND_PENDING, UDP))
CONNECT: Final = Command.CONNECT
BIND: Final = Command.BIND
UDP_ASSOCIATE: Final = Command.UDP_ASSOCIATE
IPV4: Final = AddressType.IPV4
IPV6: Final = AddressType.IPV6
DOMAIN: Final = AddressType.DOMAIN
SUCCEEDED: Final = Reply.SUCCEEDED
NO_AUTH: Final = Method.NO_AUTH
USERNAME_PASSWORD: Final = Method.USERNAME_PASSWORD

_COMMANDS: Final = {c.value: c for c in Command}
_ATYPS: Final = {a.value: a for a in AddressType}


@dataclass(frozen=True, slots=True)
class Address:
    """A SOCKS address: an IP literal or a domain name, and a port."""

    type: AddressType
    host: str
    port: int

    @classmethod
    def from_ip(cls, host: str, port: int) -> Address:
        """An address from an IP literal as sockets report it (``'::1'``, ``'1.2.3.4'``)."""
        if ":" in host:
            return cls(IPV6, host.partition("%")[0], port)
        return cls(IPV4, host, port)

    @classmethod
    def from_host(cls, host: str, port: int) -> Address:
        """An address from anything a user may type: an IP literal or a name."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return cls(DOMAIN, host, port)
        if ip.version == 4:
            return cls(IPV4, str(ip), port)
        return cls(IPV6, str(ip).partition("%")[0], port)

    def pack(self) -> bytes:
        """ATYP, address and port, as they appear on the wire."""
        if self.type is IPV4:
            raw = _pack_ipv4(self.host)
        elif self.type is IPV6:
            raw = ipaddress.IPv6Address(self.host).packed
        else:
            name = self.host.encode("ascii") if self.host.isascii() else self.host.encode("idna")
            if not 0 < len(name) < 256:
                raise ValueError(f"domain name of {len(name)} bytes cannot be sent in SOCKS5")
            raw = bytes((len(name),)) + name
        return bytes((self.type,)) + raw + self.port.to_bytes(2, "big")


ANY_IPV4: Final = Address(IPV4, "0.0.0.0", 0)


@functools.lru_cache(maxsize=1024)
def _pack_ipv4(host: str) -> bytes:
    """Dotted quad to 4 bytes, remembered: a node replies with its own few
    outbound addresses over and over, and ipaddress costs microseconds."""
    return ipaddress.IPv4Address(host).packed


def parse_address(
    data: bytes | bytearray | memoryview, offset: int, *, reply_on_error: bool = True
) -> tuple[Address, int] | None:
    """Parse ATYP/ADDR/PORT at ``offset``.

    Returns the address and the offset just past it, or ``None`` when more
    bytes are needed.  An unknown address type raises :class:`ProtocolError`
    whose reply is "address type not supported" (when ``reply_on_error``).
    """
    n = len(data)
    if n <= offset:
        return None
    atyp = data[offset]
    if atyp == 1:
        end = offset + 7
        if n < end:
            return None
        host = f"{data[offset + 1]}.{data[offset + 2]}.{data[offset + 3]}.{data[offset + 4]}"
        kind = IPV4
    elif atyp == 4:
        end = offset + 19
        if n < end:
            return None
        host = ipaddress.IPv6Address(bytes(data[offset + 1 : offset + 17])).compressed
        kind = IPV6
    elif atyp == 3:
        if n < offset + 2:
            return None
        length = data[offset + 1]
        end = offset + 2 + length + 2
        if n < end:
            return None
        raw = bytes(data[offset + 2 : offset + 2 + length])
        if length == 0:
            raise ProtocolError(
                "empty domain name", pack_reply(Reply.HOST_UNREACHABLE) if reply_on_error else b""
            )
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(
                "domain name is not ASCII",
                pack_reply(Reply.HOST_UNREACHABLE) if reply_on_error else b"",
            ) from None
        kind = DOMAIN
    else:
        raise ProtocolError(
            f"unknown address type {atyp:#04x}",
            pack_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED) if reply_on_error else b"",
        )
    port = (data[end - 2] << 8) | data[end - 1]
    return Address(kind, host, port), end


def pack_reply(code: Reply, bind: Address = ANY_IPV4) -> bytes:
    """A request reply: ``05 REP 00`` then the bound address."""
    return bytes((VERSION, code, 0)) + bind.pack()


# Replies that never vary, built once.
_METHOD_REPLY: Final = {m: bytes((VERSION, m)) for m in Method}
_AUTH_OK: Final = bytes((AUTH_VERSION, 0))
_AUTH_FAILED: Final = bytes((AUTH_VERSION, 1))
# What an old SOCKS4 client understands as "request rejected" (VN=0, CD=91).
_SOCKS4_REJECT: Final = bytes((0, 91, 0, 0, 0, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 1929 credentials; the application must accept or reject them."""

    username: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A CONNECT, BIND or UDP ASSOCIATE request; the application must reply."""

    command: Command
    address: Address


class _Sentinel(enum.Enum):
    NEED_DATA = "need-data"
    PAUSED = "paused"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""More bytes are needed before the next event."""
PAUSED: Final = _Sentinel.PAUSED
"""The machine waits for the application's decision (auth or reply)."""

Event = AuthRequest | CommandRequest | _Sentinel

# Largest handshake messages: greeting 2+255, auth 3+255+255, request 6+1+255.
# The cap leaves room for one 4 KiB read of pipelined early data on top of a
# partial message, so only a client that breaks the protocol reaches it.
DEFAULT_MAX_BUFFER: Final = 8192


class ServerConnection:
    """The server's half of one SOCKS5 control connection."""

    __slots__ = ("_buf", "_out", "command", "max_buffer", "method", "require_auth", "state")

    def __init__(self, *, require_auth: bool, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.require_auth = require_auth
        self.max_buffer = max_buffer
        self.state = GREETING
        self.method: Method | None = None
        self.command: Command | None = None
        self._buf = bytearray()
        self._out = bytearray()

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the client; they are parsed by :meth:`next_event`."""
        if self.state is CLOSED:
            raise ProtocolError("data after the connection was closed")
        self._buf += data
        if len(self._buf) > self.max_buffer and self.state not in _UNBOUNDED_STATES:
            self.state = CLOSED
            raise BufferOverflow(f"handshake larger than {self.max_buffer} bytes")

    def next_event(self) -> Event:
        """The next event, :data:`NEED_DATA`, or :data:`PAUSED`."""
        state = self.state
        if state is GREETING:
            return self._parse_greeting()
        if state is AUTH:
            return self._parse_auth()
        if state is REQUEST:
            return self._parse_request()
        if state is AUTH_DECISION or state is REPLY_PENDING:
            return PAUSED
        return NEED_DATA

    def _parse_greeting(self) -> Event:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] != VERSION:
            self.state = CLOSED
            reply = _SOCKS4_REJECT if buf[0] == 4 else b""
            raise ProtocolError(f"not SOCKS5 (version byte {buf[0]:#04x})", reply)
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return NEED_DATA
        end = 2 + buf[1]
        methods = buf[2:end]
        del buf[:end]
        wanted = USERNAME_PASSWORD if self.require_auth else NO_AUTH
        if wanted not in methods:
            self.state = CLOSED
            raise ProtocolError(
                "no acceptable authentication method", _METHOD_REPLY[Method.NO_ACCEPTABLE]
            )
        self.method = wanted
        self._out += _METHOD_REPLY[wanted]
        self.state = AUTH if self.require_auth else REQUEST
        return self.next_event()

    def _parse_auth(self) -> Event:
        buf = self._buf
        n = len(buf)
        if not n:
            return NEED_DATA
        if buf[0] != AUTH_VERSION:
            self.state = CLOSED
            raise ProtocolError(f"bad auth version {buf[0]:#04x}", _AUTH_FAILED)
        if n < 2:
            return NEED_DATA
        ulen = buf[1]
        if n < 3 + ulen:
            return NEED_DATA
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if n < end:
            return NEED_DATA
        event = AuthRequest(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end]))
        del buf[:end]
        self.state = AUTH_DECISION
        return event

    def _parse_request(self) -> Event:
        buf = self._buf
        if not buf:
            return NEED_DATA
        if buf[0] != VERSION:
            self.state = CLOSED
            raise ProtocolError(
                f"bad request version {buf[0]:#04x}", pack_reply(Reply.GENERAL_FAILURE)
            )
        if len(buf) < 4:
            return NEED_DATA
        command = _COMMANDS.get(buf[1])
        if command is None:
            self.state = CLOSED
            raise ProtocolError(
                f"unknown command {buf[1]:#04x}", pack_reply(Reply.COMMAND_NOT_SUPPORTED)
            )
        try:
            parsed = parse_address(buf, 3)
        except ProtocolError:
            self.state = CLOSED
            raise
        if parsed is None:
            return NEED_DATA
        address, end = parsed
        del buf[:end]
        self.command = command
        self.state = REPLY_PENDING
        return CommandRequest(command, address)

    # -- decisions ----------------------------------------------------------

    def accept_auth(self) -> None:
        self._expect(AUTH_DECISION)
        self._out += _AUTH_OK
        self.state = REQUEST

    def reject_auth(self) -> None:
        """Queue the failure status; the caller closes after sending it (RFC 1929)."""
        self._expect(AUTH_DECISION)
        self._out += _AUTH_FAILED
        self.state = CLOSED

    def reply(self, code: Reply, bind: Address = ANY_IPV4) -> None:
        """Answer the pending request (or, for BIND, the incoming connection)."""
        if self.state is BIND_PENDING:
            self._out += pack_reply(code, bind)
            self.state = ESTABLISHED if code is SUCCEEDED else CLOSED
            return
        self._expect(REPLY_PENDING)
        self._out += pack_reply(code, bind)
        if code is not SUCCEEDED:
            self.state = CLOSED
        elif self.command is CONNECT:
            self.state = ESTABLISHED
        elif self.command is BIND:
            self.state = BIND_PENDING
        else:
            self.state = UDP

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(
                f"SOCKS5 connection is in state {self.state.value}, not {state.value}"
            )

    # -- output -------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_early_data(self) -> bytes:
        """Bytes the client sent after its request (application data)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


# -- UDP ----------------------------------------------------------------------

_UDP_PREFIX: Final = b"\x00\x00\x00"


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A datagram from or to the client, with the SOCKS5 UDP request header."""

    fragment: int
    address: Address
    payload: bytes

    def pack(self) -> bytes:
        return bytes((0, 0, self.fragment)) + self.address.pack() + self.payload


def parse_udp_datagram(data: bytes | bytearray | memoryview) -> UdpDatagram:
    """Parse RSV RSV FRAG ATYP ADDR PORT DATA; raise :class:`ProtocolError` if malformed."""
    if len(data) < 4:
        raise ProtocolError("UDP datagram shorter than its header")
    if data[0] or data[1]:
        raise ProtocolError("UDP datagram with non-zero reserved bytes")
    parsed = parse_address(data, 3, reply_on_error=False)
    if parsed is None:
        raise ProtocolError("UDP datagram with a truncated address")
    address, end = parsed
    return UdpDatagram(data[2], address, bytes(data[end:]))


def udp_header(address: Address) -> bytes:
    """The header to put in front of a reply from ``address`` to the client."""
    return _UDP_PREFIX + address.pack()


def udp_header_for_ip(host: str, port: int) -> bytes:
    """:func:`udp_header` for a source as ``recvfrom`` reports it, without a dataclass."""
    if ":" in host:
        return (
            b"\x00\x00\x00\x04"
            + ipaddress.IPv6Address(host.partition("%")[0]).packed
            + struct.pack("!H", port)
        )
    return b"\x00\x00\x00\x01" + ipaddress.IPv4Address(host).packed + struct.pack("!H", port)


# -- client side ----------------------------------------------------------------


def client_greeting(*, auth: bool) -> bytes:
    """What a client sends first: offer username/password or no authentication."""
    return b"\x05\x01\x02" if auth else b"\x05\x01\x00"


def client_auth(username: bytes, password: bytes) -> bytes:
    if len(username) > 255 or len(password) > 255:
        raise ValueError("RFC 1929 user names and passwords are at most 255 bytes")
    return bytes((AUTH_VERSION, len(username))) + username + bytes((len(password),)) + password


def client_request(command: Command, address: Address) -> bytes:
    return bytes((VERSION, command, 0)) + address.pack()


def parse_reply(data: bytes | bytearray | memoryview) -> tuple[Reply, Address, int] | None:
    """Parse a server's request reply: the code, the bound address and the bytes used.

    ``None`` means more bytes are needed; a malformed reply raises :class:`ProtocolError`.
    """
    if len(data) < 4:
        return None
    if data[0] != VERSION:
        raise ProtocolError(f"reply is not SOCKS5 (version byte {data[0]:#04x})")
    try:
        code = Reply(data[1])
    except ValueError:
        raise ProtocolError(f"unknown reply code {data[1]:#04x}") from None
    parsed = parse_address(data, 3, reply_on_error=False)
    if parsed is None:
        return None
    address, end = parsed
    return code, address, end


class UpstreamRefused(ProtocolError):
    """The server answered, but not with success: method, credentials or request refused."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.code = reply


@dataclass(frozen=True, slots=True)
class Established:
    """The server accepted the request; ``bound`` is its BND.ADDR/BND.PORT."""

    bound: Address


class ClientConnection:
    """The client's half of a SOCKS5 exchange, for one request.

    Theory of operation: with credentials the client offers *only*
    username/password, so a conforming server can answer nothing but ``05 02``
    or ``05 FF``; that makes it safe to send greeting, credentials and request
    in one write (:meth:`start`), which saves two round trips on every
    connection through a slow, censored path.  Without credentials it offers
    only "no authentication" and pipelines the same way.  :meth:`receive_data`
    returns :class:`Established` once the reply arrives, ``None`` while more
    bytes are needed, and raises :class:`UpstreamRefused` (with the reply code
    when there is one) or :class:`ProtocolError` on anything else.  Bytes after
    the reply belong to the application (:meth:`take_early_data`).
    """

    __slots__ = ("_buf", "_stage", "auth")

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.auth = (username.encode(), (password or "").encode()) if username is not None else None
        self._buf = bytearray()
        self._stage = 0  # 0 method reply, 1 auth status, 2 request reply, 3 done

    def start(self, command: Command, address: Address) -> bytes:
        """Everything the client sends, in one piece."""
        if self.auth is None:
            return client_greeting(auth=False) + client_request(command, address)
        return (
            client_greeting(auth=True) + client_auth(*self.auth) + client_request(command, address)
        )

    def receive_data(self, data: bytes | bytearray | memoryview) -> Established | None:
        buf = self._buf
        buf += data
        if len(buf) > DEFAULT_MAX_BUFFER and self._stage < 3:
            raise BufferOverflow("server reply too long")
        if self._stage == 0:
            if len(buf) < 2:
                return None
            if buf[0] != VERSION:
                raise ProtocolError(f"not a SOCKS5 server (version byte {buf[0]:#04x})")
            wanted = Method.NO_AUTH if self.auth is None else Method.USERNAME_PASSWORD
            if buf[1] != wanted:
                raise UpstreamRefused("the server accepts none of the offered methods")
            del buf[:2]
            self._stage = 1 if self.auth is not None else 2
        if self._stage == 1:
            if len(buf) < 2:
                return None
            if buf[0] != AUTH_VERSION or buf[1] != 0:
                raise UpstreamRefused("the server refused the credentials")
            del buf[:2]
            self._stage = 2
        if self._stage == 2:
            parsed = parse_reply(buf)
            if parsed is None:
                return None
            code, bound, end = parsed
            del buf[:end]
            if code is not Reply.SUCCEEDED:
                raise UpstreamRefused(f"the server answered {code.name}", code)
            self._stage = 3
            return Established(bound)
        return None

    def take_early_data(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data
