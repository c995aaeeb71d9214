"""Tests for the sans-IO SOCKS5 state machine (resistance.proto.socks5).

Every parser is exercised three ways, as h11 does: the whole message at once,
one byte at a time, and with trailing bytes after it.  Expected wire bytes are
written out by hand from RFC 1928/1929 rather than rebuilt with the module's
own encoders, so an encoder bug cannot hide behind a matching parser bug.
The hypothesis tests at the end hold the fuzz invariant: any input either
parses or raises ProtocolError, never anything else.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.errors import BufferOverflow, ProtocolError
from resistance.proto.socks5 import (
    ANY_IPV4,
    DEFAULT_MAX_BUFFER,
    NEED_DATA,
    PAUSED,
    Address,
    AddressType,
    AuthRequest,
    Command,
    CommandRequest,
    Method,
    Reply,
    ServerConnection,
    State,
    UdpDatagram,
    client_auth,
    client_greeting,
    client_request,
    pack_reply,
    parse_address,
    parse_reply,
    parse_udp_datagram,
    udp_header,
    udp_header_for_ip,
)

# -- fixtures written out by hand ---------------------------------------------

V4 = Address(AddressType.IPV4, "192.0.2.1", 8080)
V6 = Address(AddressType.IPV6, "2001:db8::1", 443)
NAME = Address(AddressType.DOMAIN, "example.com", 80)

# ATYP, address and port of each, as RFC 1928 section 5 lays them out.
PACKED = {
    ANY_IPV4: b"\x01\x00\x00\x00\x00\x00\x00",
    V4: b"\x01\xc0\x00\x02\x01\x1f\x90",
    V6: b"\x04\x20\x01\x0d\xb8" + bytes(11) + b"\x01\x01\xbb",
    NAME: b"\x03\x0bexample.com\x00\x50",
}
ADDRESSES = [V4, V6, NAME]
ADDRESS_IDS = ["ipv4", "ipv6", "domain"]

GREETING_AUTH = b"\x05\x01\x02"
GREETING_NO_AUTH = b"\x05\x01\x00"
CREDENTIALS = AuthRequest(b"alice", b"s3cret")
AUTH = b"\x01\x05alice\x06s3cret"
EARLY = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

METHOD_USERPASS = b"\x05\x02"
METHOD_NO_AUTH = b"\x05\x00"
METHOD_NONE = b"\x05\xff"
AUTH_OK = b"\x01\x00"
AUTH_FAILED = b"\x01\x01"
REPLY_OK = b"\x05\x00\x00" + PACKED[ANY_IPV4]
SOCKS4_REJECT = b"\x00\x5b\x00\x00\x00\x00\x00\x00"


def request(command: int, address: Address) -> bytes:
    return bytes((5, command, 0)) + PACKED[address]


def error_reply(code: int) -> bytes:
    return bytes((5, code, 0)) + PACKED[ANY_IPV4]


# -- how the tests drive a connection ----------------------------------------


def whole(wire: bytes) -> list[bytes]:
    return [wire]


def bytewise(wire: bytes) -> list[bytes]:
    return [wire[i : i + 1] for i in range(len(wire))]


def split_at(wire: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {"whole": whole, "bytewise": bytewise}


@dataclass
class Transcript:
    events: list[AuthRequest | CommandRequest]
    sent: bytes
    early: bytes
    state: State


def drive(
    conn: ServerConnection,
    chunks: Iterable[bytes],
    *,
    code: Reply = Reply.SUCCEEDED,
    bind: Address = ANY_IPV4,
) -> Transcript:
    """Feed ``chunks`` as the I/O layer would, accepting any credentials and
    answering every request with ``code``."""
    events: list[AuthRequest | CommandRequest] = []
    sent = bytearray()
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, AuthRequest | CommandRequest), event
            events.append(event)
            # Until the application decides, the machine holds still.
            assert conn.next_event() is PAUSED
            if isinstance(event, AuthRequest):
                conn.accept_auth()
            else:
                conn.reply(code, bind)
        sent += conn.data_to_send()
    return Transcript(events, bytes(sent), conn.take_early_data(), conn.state)


def run(
    chunks: Iterable[bytes], *, require_auth: bool, code: Reply = Reply.SUCCEEDED
) -> Transcript:
    return drive(ServerConnection(require_auth=require_auth), chunks, code=code)


def connection_in(state: State) -> ServerConnection:
    """A connection walked into ``state`` through the public interface."""
    conn = ServerConnection(require_auth=state in (State.AUTH, State.AUTH_DECISION))
    if state is State.GREETING:
        return conn
    if state in (State.AUTH, State.AUTH_DECISION):
        conn.receive_data(GREETING_AUTH)
        if state is State.AUTH_DECISION:
            conn.receive_data(AUTH)
        conn.next_event()
    else:
        command = {State.BIND_PENDING: 2, State.UDP: 3}.get(state, 1)
        conn.receive_data(GREETING_NO_AUTH)
        if state is not State.REQUEST:
            conn.receive_data(request(command, V4))
        conn.next_event()
        if state is State.CLOSED:
            conn.reply(Reply.NOT_ALLOWED)
        elif state is not State.REPLY_PENDING and state is not State.REQUEST:
            conn.reply(Reply.SUCCEEDED)
    assert conn.state is state
    conn.data_to_send()
    return conn


# -- wire constants -----------------------------------------------------------


def test_enum_values_are_the_wire_values() -> None:
    assert [int(m) for m in Method] == [0x00, 0x01, 0x02, 0xFF]
    assert [int(c) for c in Command] == [0x01, 0x02, 0x03]
    assert [int(a) for a in AddressType] == [0x01, 0x03, 0x04]
    assert [int(r) for r in Reply] == list(range(9))


def test_client_helpers_encode_the_rfc_layout() -> None:
    assert client_greeting(auth=True) == GREETING_AUTH
    assert client_greeting(auth=False) == GREETING_NO_AUTH
    assert client_auth(b"alice", b"s3cret") == AUTH
    assert client_auth(b"", b"") == b"\x01\x00\x00"
    assert client_request(Command.CONNECT, NAME) == request(1, NAME)
    assert client_request(Command.UDP_ASSOCIATE, V6) == request(3, V6)


@pytest.mark.parametrize("username, password", [(b"u" * 256, b"p"), (b"u", b"p" * 256)])
def test_client_auth_refuses_fields_longer_than_255(username: bytes, password: bytes) -> None:
    with pytest.raises(ValueError, match="255"):
        client_auth(username, password)


# -- the happy paths, three ways ----------------------------------------------


@pytest.mark.parametrize("trailing", [b"", EARLY], ids=["exact", "trailing"])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("address", ADDRESSES, ids=ADDRESS_IDS)
@pytest.mark.parametrize("command", list(Command), ids=lambda c: c.name)
@pytest.mark.parametrize("require_auth", [True, False], ids=["userpass", "noauth"])
def test_handshake(
    require_auth: bool, command: Command, address: Address, split: str, trailing: bytes
) -> None:
    if require_auth:
        wire = GREETING_AUTH + AUTH + request(command, address)
        expected_events: list[AuthRequest | CommandRequest] = [CREDENTIALS]
        expected_sent = METHOD_USERPASS + AUTH_OK + REPLY_OK
    else:
        wire = GREETING_NO_AUTH + request(command, address)
        expected_events = []
        expected_sent = METHOD_NO_AUTH + REPLY_OK
    expected_events.append(CommandRequest(command, address))
    final = {
        Command.CONNECT: State.ESTABLISHED,
        Command.BIND: State.BIND_PENDING,
        Command.UDP_ASSOCIATE: State.UDP,
    }[command]

    conn = ServerConnection(require_auth=require_auth)
    transcript = drive(conn, SPLITS[split](wire + trailing))

    assert transcript == Transcript(expected_events, expected_sent, trailing, final)
    assert conn.method is (Method.USERNAME_PASSWORD if require_auth else Method.NO_AUTH)
    assert conn.command is command


@pytest.mark.parametrize("split", SPLITS)
def test_pipelined_stream_pauses_for_the_auth_decision(split: str) -> None:
    wire = GREETING_AUTH + AUTH + request(1, NAME) + EARLY
    conn = ServerConnection(require_auth=True)
    chunks = iter(SPLITS[split](wire))
    event = NEED_DATA
    for chunk in chunks:
        conn.receive_data(chunk)
        event = conn.next_event()
        if event is not NEED_DATA:
            break
    assert event == CREDENTIALS
    assert conn.state is State.AUTH_DECISION
    assert conn.data_to_send() == METHOD_USERPASS
    # The rest of the pipeline arrives while the application thinks.
    for chunk in chunks:
        conn.receive_data(chunk)
        assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert conn.state is State.AUTH_DECISION

    conn.accept_auth()
    assert conn.data_to_send() == AUTH_OK
    assert conn.next_event() == CommandRequest(Command.CONNECT, NAME)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.reply(Reply.SUCCEEDED)
    assert conn.data_to_send() == REPLY_OK
    assert conn.take_early_data() == EARLY
    assert conn.take_early_data() == b""
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("split", SPLITS)
def test_early_data_waits_for_the_reply(split: str) -> None:
    conn = ServerConnection(require_auth=False)
    for chunk in SPLITS[split](GREETING_NO_AUTH + request(1, V6)):
        conn.receive_data(chunk)
    assert conn.next_event() == CommandRequest(Command.CONNECT, V6)
    for chunk in SPLITS[split](EARLY):
        conn.receive_data(chunk)
        assert conn.next_event() is PAUSED
    conn.reply(Reply.SUCCEEDED, V4)
    assert conn.data_to_send() == METHOD_NO_AUTH + b"\x05\x00\x00" + PACKED[V4]
    assert conn.take_early_data() == EARLY


@pytest.mark.parametrize("split", SPLITS)
def test_greeting_with_trailing_partial_auth(split: str) -> None:
    conn = ServerConnection(require_auth=True)
    for chunk in SPLITS[split](GREETING_AUTH + AUTH[:4]):
        conn.receive_data(chunk)
        assert conn.next_event() is NEED_DATA
    assert conn.state is State.AUTH
    assert conn.data_to_send() == METHOD_USERPASS
    conn.receive_data(AUTH[4:])
    assert conn.next_event() == CREDENTIALS


def test_empty_credentials_are_passed_to_the_application() -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + b"\x01\x00\x00")
    assert conn.next_event() == AuthRequest(b"", b"")


def test_credentials_are_passed_as_raw_bytes() -> None:
    user, password = bytes(range(255)), bytes(range(255, 0, -1))
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + b"\x01\xff" + user + b"\xff" + password)
    assert conn.next_event() == AuthRequest(user, password)


# -- method selection ---------------------------------------------------------


@pytest.mark.parametrize(
    "require_auth, greeting, chosen",
    [
        (True, b"\x05\x02\x00\x02", Method.USERNAME_PASSWORD),
        (True, b"\x05\x03\x01\x02\x00", Method.USERNAME_PASSWORD),
        (False, b"\x05\x02\x02\x00", Method.NO_AUTH),
        (False, b"\x05\x03\x01\x02\x00", Method.NO_AUTH),
    ],
)
def test_method_selection(require_auth: bool, greeting: bytes, chosen: Method) -> None:
    conn = ServerConnection(require_auth=require_auth)
    conn.receive_data(greeting)
    assert conn.next_event() is NEED_DATA
    assert conn.method is chosen
    assert conn.data_to_send() == bytes((5, chosen))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize(
    "require_auth, greeting",
    [
        (True, b"\x05\x01\x00"),
        (False, b"\x05\x01\x02"),
        (True, b"\x05\x00"),
        (False, b"\x05\x00"),
        (True, b"\x05\x02\x01\xff"),
    ],
    ids=["auth-only-00", "noauth-only-02", "auth-none", "noauth-none", "auth-gssapi"],
)
def test_no_acceptable_method(require_auth: bool, greeting: bytes, split: str) -> None:
    conn = ServerConnection(require_auth=require_auth)
    chunks = SPLITS[split](greeting)
    for chunk in chunks[:-1]:
        conn.receive_data(chunk)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(chunks[-1])
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == METHOD_NONE
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_reject_auth() -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + AUTH + request(1, NAME))
    assert conn.next_event() == CREDENTIALS
    conn.reject_auth()
    assert conn.data_to_send() == METHOD_USERPASS + AUTH_FAILED
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError):
        conn.receive_data(b"\x05")


# -- protocol errors ----------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_socks4_client_gets_a_socks4_rejection(split: str) -> None:
    conn = ServerConnection(require_auth=False)
    # SOCKS4 CONNECT 192.0.2.1:80 for user "alice"; the version byte is enough.
    chunks = SPLITS[split](b"\x04\x01\x00\x50\xc0\x00\x02\x01alice\x00")
    conn.receive_data(chunks[0])
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == SOCKS4_REJECT
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("first", [b"\x00", b"\x01", b"\x06", b"G", b"\x16", b"\xff"])
def test_other_versions_are_refused_without_a_reply(first: bytes) -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(first + b"\x01\x00")
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == b""
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("version", [b"\x00", b"\x02", b"\x05", b"\xff"])
def test_bad_auth_version(version: bytes) -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + version)
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == AUTH_FAILED
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == METHOD_USERPASS


@pytest.mark.parametrize("version", [b"\x04", b"\x00", b"\x01"])
def test_bad_request_version(version: bytes) -> None:
    conn = ServerConnection(require_auth=False)
    conn.receive_data(GREETING_NO_AUTH + version + request(1, V4)[1:])
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == error_reply(Reply.GENERAL_FAILURE)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("command", [0x00, 0x04, 0x80, 0xFF])
def test_unknown_command(command: int, split: str) -> None:
    conn = ServerConnection(require_auth=False)
    chunks = SPLITS[split](GREETING_NO_AUTH + bytes((5, command, 0, 1)))
    for chunk in chunks[:-1]:
        conn.receive_data(chunk)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(chunks[-1])
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_unknown_address_type(atyp: int, split: str) -> None:
    conn = ServerConnection(require_auth=False)
    chunks = SPLITS[split](GREETING_NO_AUTH + bytes((5, 1, 0, atyp)))
    for chunk in chunks[:-1]:
        conn.receive_data(chunk)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(chunks[-1])
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00"
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    "domain",
    [b"\x00", b"\x04caf\xe9", b"\x05caf\xc3\xa9", b"\x04\xff\xfe\xfd\xfc"],
    ids=["empty", "latin1", "utf8", "high-bytes"],
)
def test_bad_domain_in_request(domain: bytes) -> None:
    conn = ServerConnection(require_auth=False)
    conn.receive_data(GREETING_NO_AUTH + b"\x05\x01\x00\x03" + domain + b"\x00\x50")
    with pytest.raises(ProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply == error_reply(Reply.HOST_UNREACHABLE)
    assert conn.state is State.CLOSED


def test_oversized_handshake_overflows() -> None:
    conn = ServerConnection(require_auth=False)
    with pytest.raises(BufferOverflow) as caught:
        conn.receive_data(b"\x05\xff" + bytes(DEFAULT_MAX_BUFFER - 1))
    assert isinstance(caught.value, ProtocolError)
    assert caught.value.reply == b""


def test_handshake_of_exactly_max_buffer_is_buffered() -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + b"\x01" + bytes(DEFAULT_MAX_BUFFER - 4))
    assert conn.next_event() == AuthRequest(b"", b"")


def test_slow_oversized_auth_overflows_byte_by_byte() -> None:
    conn = ServerConnection(require_auth=True, max_buffer=32)
    wire = GREETING_AUTH + b"\x01\xff" + b"u" * 255
    fed = 0
    with pytest.raises(BufferOverflow):
        for byte in bytewise(wire):
            conn.receive_data(byte)
            fed += 1
            assert conn.next_event() is NEED_DATA
    # The greeting (3 bytes) was consumed; the cap applies to what is buffered.
    assert fed == 3 + 32


def test_early_data_counts_against_the_handshake_cap() -> None:
    conn = connection_in(State.REPLY_PENDING)
    conn.receive_data(bytes(DEFAULT_MAX_BUFFER))
    with pytest.raises(BufferOverflow):
        conn.receive_data(b"x")


@pytest.mark.parametrize("state", [State.ESTABLISHED, State.BIND_PENDING, State.UDP])
def test_no_cap_once_established(state: State) -> None:
    conn = connection_in(state)
    conn.receive_data(bytes(4 * DEFAULT_MAX_BUFFER))
    assert conn.next_event() is NEED_DATA
    assert len(conn.take_early_data()) == 4 * DEFAULT_MAX_BUFFER


@pytest.mark.parametrize(
    "close",
    [
        lambda c: c.receive_data(b"\x05\x01\x00"),  # no acceptable method
        lambda c: c.receive_data(b"\x04"),
        lambda c: c.receive_data(b"\x05\x01\x02\x02"),  # bad auth version
    ],
    ids=["no-method", "socks4", "auth-version"],
)
def test_data_after_a_protocol_error(close: Callable[[ServerConnection], None]) -> None:
    conn = ServerConnection(require_auth=True)
    close(conn)
    with pytest.raises(ProtocolError):
        conn.next_event()
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError, match="closed"):
        conn.receive_data(b"\x05")


def test_data_after_a_failed_reply() -> None:
    conn = connection_in(State.CLOSED)
    with pytest.raises(ProtocolError, match="closed"):
        conn.receive_data(b"x")


# -- the application calling at the wrong time --------------------------------

RIGHT_STATES = {
    "accept_auth": {State.AUTH_DECISION},
    "reject_auth": {State.AUTH_DECISION},
    "reply": {State.REPLY_PENDING, State.BIND_PENDING},
}
WRONG_TIMES = [
    (decision, state)
    for decision, right in RIGHT_STATES.items()
    for state in State
    if state not in right
]


@pytest.mark.parametrize("decision, state", WRONG_TIMES, ids=lambda x: getattr(x, "value", x))
def test_decision_in_the_wrong_state(decision: str, state: State) -> None:
    conn = connection_in(state)
    with pytest.raises(RuntimeError, match=f"in state {state.value},"):
        if decision == "reply":
            conn.reply(Reply.SUCCEEDED)
        else:
            getattr(conn, decision)()
    assert conn.state is state
    assert conn.data_to_send() == b""


def test_accept_auth_twice() -> None:
    conn = connection_in(State.AUTH_DECISION)
    conn.accept_auth()
    with pytest.raises(RuntimeError):
        conn.accept_auth()
    assert conn.data_to_send() == AUTH_OK


# -- replies ------------------------------------------------------------------


@pytest.mark.parametrize("bind", [ANY_IPV4, *ADDRESSES], ids=["any", *ADDRESS_IDS])
@pytest.mark.parametrize("code", list(Reply), ids=lambda r: r.name)
def test_reply_encoding(code: Reply, bind: Address) -> None:
    expected = b"\x05" + bytes((code,)) + b"\x00" + PACKED[bind]
    conn = connection_in(State.REPLY_PENDING)
    conn.reply(code, bind)
    assert conn.data_to_send() == expected
    assert pack_reply(code, bind) == expected
    assert conn.state is (State.ESTABLISHED if code is Reply.SUCCEEDED else State.CLOSED)


def test_reply_defaults_to_any_ipv4() -> None:
    conn = connection_in(State.REPLY_PENDING)
    conn.reply(Reply.HOST_UNREACHABLE)
    assert conn.data_to_send() == b"\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00"


def test_bind_answers_twice() -> None:
    conn = ServerConnection(require_auth=False)
    conn.receive_data(GREETING_NO_AUTH + request(2, NAME))
    assert conn.next_event() == CommandRequest(Command.BIND, NAME)
    conn.reply(Reply.SUCCEEDED, V4)  # where the server listens
    assert conn.state is State.BIND_PENDING
    assert conn.next_event() is NEED_DATA
    conn.reply(Reply.SUCCEEDED, V6)  # who connected
    assert conn.state is State.ESTABLISHED
    assert conn.data_to_send() == (
        METHOD_NO_AUTH + b"\x05\x00\x00" + PACKED[V4] + b"\x05\x00\x00" + PACKED[V6]
    )
    with pytest.raises(RuntimeError):
        conn.reply(Reply.SUCCEEDED)


@pytest.mark.parametrize("code", [r for r in Reply if r is not Reply.SUCCEEDED])
def test_bind_second_reply_failure_closes(code: Reply) -> None:
    conn = connection_in(State.BIND_PENDING)
    conn.reply(code)
    assert conn.data_to_send() == error_reply(code)
    assert conn.state is State.CLOSED


def test_bind_first_reply_failure_closes() -> None:
    conn = ServerConnection(require_auth=False)
    conn.receive_data(GREETING_NO_AUTH + request(2, V4))
    conn.next_event()
    conn.reply(Reply.NOT_ALLOWED)
    assert conn.state is State.CLOSED
    with pytest.raises(RuntimeError):
        conn.reply(Reply.SUCCEEDED)


def test_several_replies_leave_in_one_write() -> None:
    conn = ServerConnection(require_auth=True)
    conn.receive_data(GREETING_AUTH + AUTH + request(3, V4))
    conn.next_event()
    conn.accept_auth()
    conn.next_event()
    conn.reply(Reply.SUCCEEDED, V6)
    assert conn.data_to_send() == METHOD_USERPASS + AUTH_OK + b"\x05\x00\x00" + PACKED[V6]
    assert conn.data_to_send() == b""
    assert conn.state is State.UDP


# -- parse_reply (client side) ------------------------------------------------


@pytest.mark.parametrize("bind", [ANY_IPV4, *ADDRESSES], ids=["any", *ADDRESS_IDS])
@pytest.mark.parametrize("code", list(Reply), ids=lambda r: r.name)
def test_parse_reply_three_ways(code: Reply, bind: Address) -> None:
    wire = b"\x05" + bytes((code,)) + b"\x00" + PACKED[bind]
    assert parse_reply(wire) == (code, bind, len(wire))
    for n in range(len(wire)):
        assert parse_reply(wire[:n]) is None
    assert parse_reply(wire + EARLY) == (code, bind, len(wire))
    assert parse_reply(memoryview(bytearray(wire + EARLY))) == (code, bind, len(wire))


@pytest.mark.parametrize("version", [b"\x00", b"\x04", b"\x01", b"\xff"])
def test_parse_reply_bad_version(version: bytes) -> None:
    with pytest.raises(ProtocolError, match="not SOCKS5"):
        parse_reply(version + REPLY_OK[1:])


@pytest.mark.parametrize("code", [0x09, 0x5A, 0xFF])
def test_parse_reply_unknown_code(code: int) -> None:
    with pytest.raises(ProtocolError, match="reply code"):
        parse_reply(bytes((5, code, 0)) + PACKED[V4])


def test_parse_reply_unknown_address_type() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_reply(b"\x05\x00\x00\x02\x00\x00")
    assert caught.value.reply == b""


# -- addresses ----------------------------------------------------------------


@pytest.mark.parametrize("address", [ANY_IPV4, *ADDRESSES], ids=["any", *ADDRESS_IDS])
def test_address_three_ways(address: Address) -> None:
    wire = PACKED[address]
    assert address.pack() == wire
    assert parse_address(wire, 0) == (address, len(wire))
    for n in range(len(wire)):
        assert parse_address(wire[:n], 0) is None
    assert parse_address(wire + EARLY, 0) == (address, len(wire))
    assert parse_address(b"xyz" + wire + EARLY, 3) == (address, 3 + len(wire))
    assert parse_address(bytearray(wire), 0) == (address, len(wire))
    assert parse_address(memoryview(wire), 0) == (address, len(wire))


@pytest.mark.parametrize("port", [0, 1, 255, 256, 65535])
def test_address_ports(port: int) -> None:
    address = Address(AddressType.IPV4, "10.0.0.1", port)
    wire = b"\x01\x0a\x00\x00\x01" + port.to_bytes(2, "big")
    assert address.pack() == wire
    assert parse_address(wire, 0) == (address, 7)


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF])
def test_parse_address_unknown_type(atyp: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_address(bytes((atyp,)), 0)
    assert caught.value.reply == error_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    with pytest.raises(ProtocolError) as caught:
        parse_address(bytes((atyp,)), 0, reply_on_error=False)
    assert caught.value.reply == b""


@pytest.mark.parametrize(
    "wire", [b"\x03\x00\x00\x50", b"\x03\x02\xc3\xa9\x00\x50"], ids=["empty", "non-ascii"]
)
def test_parse_address_bad_domain(wire: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_address(wire, 0)
    assert caught.value.reply == error_reply(Reply.HOST_UNREACHABLE)
    with pytest.raises(ProtocolError) as caught:
        parse_address(wire, 0, reply_on_error=False)
    assert caught.value.reply == b""


def test_parse_address_waits_for_the_whole_domain_before_judging_it() -> None:
    assert parse_address(b"\x03\x00\x00", 0) is None
    assert parse_address(b"\x03\x02\xc3\xa9\x00", 0) is None


def test_parse_address_gives_canonical_ip_text() -> None:
    wire = b"\x04" + bytes(15) + b"\x01\x00\x35"
    assert parse_address(wire, 0) == (Address(AddressType.IPV6, "::1", 53), 19)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.0.2.1", Address(AddressType.IPV4, "192.0.2.1", 1)),
        ("2001:DB8:0::0001", Address(AddressType.IPV6, "2001:db8::1", 1)),
        ("::1", Address(AddressType.IPV6, "::1", 1)),
        ("example.com", Address(AddressType.DOMAIN, "example.com", 1)),
        ("localhost", Address(AddressType.DOMAIN, "localhost", 1)),
        ("1.2.3", Address(AddressType.DOMAIN, "1.2.3", 1)),
    ],
)
def test_from_host(text: str, expected: Address) -> None:
    assert Address.from_host(text, 1) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.0.2.1", Address(AddressType.IPV4, "192.0.2.1", 9)),
        ("::1", Address(AddressType.IPV6, "::1", 9)),
        ("fe80::1%eth0", Address(AddressType.IPV6, "fe80::1", 9)),
        ("fe80::1%3", Address(AddressType.IPV6, "fe80::1", 9)),
    ],
)
def test_from_ip(text: str, expected: Address) -> None:
    assert Address.from_ip(text, 9) == expected


def test_from_host_strips_the_ipv6_scope_like_from_ip() -> None:
    # The scope cannot travel in SOCKS5; an Address holds what goes on the wire.
    address = Address.from_host("fe80::1%eth0", 9)
    assert address == Address.from_ip("fe80::1%eth0", 9)
    assert parse_address(address.pack(), 0) == (address, 19)


def test_domain_lengths() -> None:
    longest = ".".join(["a" * 63] * 4)  # 255 bytes, labels within DNS limits
    assert len(longest) == 255
    assert Address(AddressType.DOMAIN, longest, 1).pack() == b"\x03\xff" + longest.encode() + (
        b"\x00\x01"
    )
    with pytest.raises(ValueError, match="257 bytes"):
        Address(AddressType.DOMAIN, longest + ".b", 1).pack()
    with pytest.raises(ValueError):
        Address(AddressType.DOMAIN, "", 1).pack()


def test_internationalised_domain_is_sent_as_punycode() -> None:
    wire = Address.from_host("bücher.example", 80).pack()
    assert wire == b"\x03\x15xn--bcher-kva.example\x00\x50"


@pytest.mark.parametrize(
    "host", ["a..b", ".", ".example.com", "a" * 64, "x" * 255], ids=lambda h: h[:8]
)
def test_domain_accepted_from_the_wire_packs_again(host: str) -> None:
    # parse_address accepts any ASCII name of 1..255 bytes (as RFC 1928 does),
    # so whatever it returns must serialise again: a relay re-sends it with
    # client_request, a UDP relay answers with udp_header(datagram.address).
    wire = b"\x03" + bytes((len(host),)) + host.encode() + b"\x00\x35"
    parsed = parse_address(wire, 0)
    assert parsed == (Address(AddressType.DOMAIN, host, 53), len(wire))
    address = parsed[0]
    assert address.pack() == wire
    assert udp_header(address) == b"\x00\x00\x00" + wire


# -- UDP ----------------------------------------------------------------------


@pytest.mark.parametrize("fragment", [0, 1, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("address", ADDRESSES, ids=ADDRESS_IDS)
def test_udp_datagram_three_ways(address: Address, fragment: int) -> None:
    header = b"\x00\x00" + bytes((fragment,)) + PACKED[address]
    payload = b"\x12\x34 dns query"
    datagram = UdpDatagram(fragment, address, payload)
    assert datagram.pack() == header + payload
    assert parse_udp_datagram(header + payload) == datagram
    assert parse_udp_datagram(bytearray(header + payload)) == datagram
    assert parse_udp_datagram(memoryview(header + payload)) == datagram
    assert parse_udp_datagram(header) == UdpDatagram(fragment, address, b"")
    # One byte at a time: every prefix is either too short or carries a shorter payload.
    for n in range(len(header)):
        with pytest.raises(ProtocolError) as caught:
            parse_udp_datagram(header[:n])
        assert caught.value.reply == b""
    for n in range(len(payload)):
        assert parse_udp_datagram(header + payload[:n]).payload == payload[:n]


@pytest.mark.parametrize("address", ADDRESSES, ids=ADDRESS_IDS)
def test_udp_header(address: Address) -> None:
    assert udp_header(address) == b"\x00\x00\x00" + PACKED[address]
    assert parse_udp_datagram(udp_header(address) + b"hi") == UdpDatagram(0, address, b"hi")


@pytest.mark.parametrize(
    "host, port, wire",
    [
        ("192.0.2.1", 8080, PACKED[V4]),
        ("2001:db8::1", 443, PACKED[V6]),
        ("2001:db8::1%eth0", 443, PACKED[V6]),
        ("0.0.0.0", 0, PACKED[ANY_IPV4]),
    ],
)
def test_udp_header_for_ip(host: str, port: int, wire: bytes) -> None:
    header = udp_header_for_ip(host, port)
    assert header == b"\x00\x00\x00" + wire
    assert header == udp_header(Address.from_ip(host, port))
    datagram = parse_udp_datagram(header + b"data")
    assert datagram == UdpDatagram(0, Address.from_ip(host, port), b"data")


@pytest.mark.parametrize("reserved", [b"\x01\x00", b"\x00\x01", b"\xff\xff"])
def test_udp_reserved_bytes_must_be_zero(reserved: bytes) -> None:
    with pytest.raises(ProtocolError, match="reserved"):
        parse_udp_datagram(reserved + b"\x00" + PACKED[V4] + b"x")


@pytest.mark.parametrize(
    "wire",
    [b"\x00\x00\x00\x05" + bytes(8), b"\x00\x00\x00\x03\x00\x00\x35", b"\x00\x00\x00\x03\x01\xff"],
    ids=["atyp", "empty-domain", "non-ascii"],
)
def test_udp_bad_address_has_no_reply(wire: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_udp_datagram(wire + b"\x00\x35")
    assert caught.value.reply == b""


# -- fuzzing ------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)

ports = st.integers(0, 65535)
ipv4_addresses = st.builds(Address, st.just(AddressType.IPV4), st.ip_addresses(v=4).map(str), ports)
ipv6_addresses = st.builds(Address, st.just(AddressType.IPV6), st.ip_addresses(v=6).map(str), ports)
ldh = string.ascii_letters + string.digits + ".-"
# Anything RFC 1928 lets through: 1..255 bytes, no DNS label rules.
wire_domains = st.builds(
    Address, st.just(AddressType.DOMAIN), st.text(ldh, min_size=1, max_size=255), ports
)
# Names that also follow DNS label rules, for properties about something else.
dns_names = (
    st.lists(st.text(ldh.replace(".", ""), min_size=1, max_size=63), min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda name: len(name) <= 255)
)
dns_addresses = st.builds(Address, st.just(AddressType.DOMAIN), dns_names, ports)

FRAGMENTS = [
    GREETING_AUTH,
    GREETING_NO_AUTH,
    b"\x05\x02\x00\x02",
    b"\x05\x00",
    AUTH,
    b"\x01\x00\x00",
    b"\x01\xff",
    b"\x04",
    *(request(c, a) for c in (1, 2, 3) for a in ADDRESSES),
    b"\x05\x01\x00\x03",
    b"\x05\x01\x00\x04",
    b"\x05\x09\x00\x01",
    b"\x05\x01\x00\x03\x00\x00\x00",
]
# Mostly-valid streams reach the later states that random bytes never do.
wire_soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=8).map(
    b"".join
)
fuzz_bytes = st.one_of(st.binary(max_size=600), wire_soup)


@FUZZ
@given(
    blob=fuzz_bytes,
    require_auth=st.booleans(),
    max_buffer=st.sampled_from([16, 300, DEFAULT_MAX_BUFFER]),
    data=st.data(),
)
def test_fuzz_server_connection(
    blob: bytes, require_auth: bool, max_buffer: int, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12), label="cuts")
    conn = ServerConnection(require_auth=require_auth, max_buffer=max_buffer)
    try:
        drive(conn, split_at(blob, cuts))
    except ProtocolError as exc:
        assert isinstance(exc.reply, bytes)


@FUZZ
@given(blob=fuzz_bytes, require_auth=st.booleans())
def test_fuzz_server_connection_bytewise_matches_whole(blob: bytes, require_auth: bool) -> None:
    outcomes = []
    for chunks in (whole(blob), bytewise(blob)):
        try:
            outcomes.append(run(chunks, require_auth=require_auth))
        except ProtocolError as exc:
            outcomes.append(exc.reply)
    assert outcomes[0] == outcomes[1]


@FUZZ
@given(blob=st.binary(max_size=300))
def test_fuzz_parse_udp_datagram(blob: bytes) -> None:
    try:
        datagram = parse_udp_datagram(blob)
    except ProtocolError:
        return
    assert datagram.fragment == blob[2]
    assert blob.endswith(datagram.payload)


@FUZZ
@given(blob=st.binary(max_size=300), data=st.data())
def test_fuzz_parse_address(blob: bytes, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(blob) + 2), label="offset")
    try:
        parsed = parse_address(blob, offset)
    except ProtocolError:
        return
    if parsed is not None:
        address, end = parsed
        assert offset < end <= len(blob)
        assert 0 <= address.port <= 65535


@FUZZ
@given(blob=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(b"\x05".__add__)))
def test_fuzz_parse_reply(blob: bytes) -> None:
    try:
        parsed = parse_reply(blob)
    except ProtocolError:
        return
    if parsed is not None:
        code, _address, end = parsed
        assert code in Reply
        assert end <= len(blob)


@FUZZ
@given(address=st.one_of(ipv4_addresses, ipv6_addresses))
def test_ip_address_round_trip(address: Address) -> None:
    wire = address.pack()
    assert parse_address(wire, 0) == (address, len(wire))


@FUZZ
@given(address=wire_domains)
def test_domain_address_round_trip(address: Address) -> None:
    wire = address.pack()
    assert parse_address(wire, 0) == (address, len(wire))


@FUZZ
@given(
    require_auth=st.booleans(),
    username=st.binary(min_size=1, max_size=255),
    password=st.binary(min_size=1, max_size=255),
    command=st.sampled_from(Command),
    address=st.one_of(ipv4_addresses, ipv6_addresses, dns_addresses),
    early=st.binary(max_size=64),
    data=st.data(),
)
def test_any_split_of_a_valid_stream_parses_like_the_whole(
    require_auth: bool,
    username: bytes,
    password: bytes,
    command: Command,
    address: Address,
    early: bytes,
    data: st.DataObject,
) -> None:
    wire = client_greeting(auth=require_auth)
    if require_auth:
        wire += client_auth(username, password)
    wire += client_request(command, address) + early
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20), label="cuts")

    expected = run(whole(wire), require_auth=require_auth)
    assert run(split_at(wire, cuts), require_auth=require_auth) == expected
    auth_events = [AuthRequest(username, password)] if require_auth else []
    assert expected.events == [*auth_events, CommandRequest(command, address)]
    assert expected.early == early
