"""req_pq_multi and resPQ: the wire bytes, and every input parses or raises ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.errors import ProtocolError
from resistance.proto.mtproto import (
    MAX_FINGERPRINTS,
    ReqPqMulti,
    ResPQ,
    check_res_pq,
    client_message_id,
    req_pq_multi,
)

NONCE = bytes(range(16))
SERVER_NONCE = bytes(range(100, 116))


def test_req_pq_multi_wire_bytes() -> None:
    request = req_pq_multi(1_700_000_000.25, NONCE)
    wire = request.serialize()
    assert wire[:8] == bytes(8)  # auth_key_id 0: unencrypted
    message_id = struct.unpack_from("<q", wire, 8)[0]
    assert message_id == 1_700_000_000 * 2**32 + 2**30  # time * 2^32, .25 s = 2^30
    assert message_id % 4 == 0
    assert wire[16:20] == (20).to_bytes(4, "little")
    assert wire[20:24] == bytes.fromhex("f18e7ebe")  # req_pq_multi#be7e8ef1, little-endian
    assert wire[24:] == NONCE
    assert ReqPqMulti.parse(wire) == request


def test_client_message_ids_are_divisible_by_four() -> None:
    for now in (0.0, 1.0, 1_700_000_000.123456, 4_000_000_000.999):
        assert client_message_id(now) % 4 == 0


def _res_pq(**changes: object) -> ResPQ:
    fields: dict[str, object] = {
        "nonce": NONCE,
        "server_nonce": SERVER_NONCE,
        "pq": bytes.fromhex("17ed48941a08f981"),  # the example from Telegram's docs
        "fingerprints": (-3414540481677951611,),
        "message_id": 0x51E57AC91E83C801,
    }
    fields.update(changes)
    return ResPQ(**fields)  # type: ignore[arg-type]


def test_res_pq_wire_bytes_match_telegrams_example() -> None:
    # core.telegram.org/mtproto/samples-auth_key, step 2 (with our own nonces).
    wire = _res_pq().serialize()
    assert wire[20:24] == bytes.fromhex("63241605")
    assert wire[56:68] == bytes.fromhex("08 17ed48941a08f981 000000")
    assert wire[68:76] == bytes.fromhex("15c4b51c 01000000")
    assert len(wire) == 20 + 4 + 32 + 12 + 8 + 8
    parsed = check_res_pq(wire, ReqPqMulti(NONCE, 4))
    assert parsed == _res_pq()


def test_wrong_nonce_is_refused() -> None:
    with pytest.raises(ProtocolError, match="nonce"):
        check_res_pq(_res_pq().serialize(), ReqPqMulti(SERVER_NONCE, 4))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda w: b"\x01" + w[1:], "encrypted"),
        (lambda w: w[:8] + struct.pack("<q", 4) + w[16:], "odd"),
        (lambda w: w[:16] + struct.pack("<i", 1000) + w[20:], "length"),
        (lambda w: w[:20] + b"\x00\x00\x00\x00" + w[24:], "not resPQ"),
        (lambda w: w[:-1], "length"),
        (lambda w: w + b"\x00" * 8, "length"),
        (lambda w: w[:56] + b"\x00" + w[57:], "pq"),
        (lambda w: w[:65] + b"\x01" + w[66:], "padding"),
        (lambda w: w[:68] + b"\x00" * 4 + w[72:], "vector"),
        (lambda w: w[:72] + struct.pack("<i", MAX_FINGERPRINTS + 1) + w[76:], "fingerprints"),
        (lambda w: w[:72] + struct.pack("<i", 0) + w[76:], "fingerprints"),
    ],
)
def test_broken_res_pq_is_refused(change, match: str) -> None:  # type: ignore[no-untyped-def]
    wire = change(_res_pq().serialize())
    with pytest.raises(ProtocolError, match=match):
        ResPQ.parse(wire)


@given(
    nonce=st.binary(min_size=16, max_size=16),
    server_nonce=st.binary(min_size=16, max_size=16),
    pq=st.binary(min_size=1, max_size=16),
    fingerprints=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=8),
    message_id=st.integers(0, 2**61 - 1).map(lambda m: m * 4 + 1),  # a server id fits int64
)
def test_res_pq_round_trips(
    nonce: bytes, server_nonce: bytes, pq: bytes, fingerprints: list[int], message_id: int
) -> None:
    answer = ResPQ(nonce, server_nonce, pq, tuple(fingerprints), message_id)
    assert check_res_pq(answer.serialize(), ReqPqMulti(nonce, 0)) == answer


@given(nonce=st.binary(min_size=16, max_size=16), now=st.floats(0, 2**31, allow_nan=False))
def test_req_pq_multi_round_trips(nonce: bytes, now: float) -> None:
    request = req_pq_multi(now, nonce)
    assert ReqPqMulti.parse(request.serialize()) == request


@given(st.binary(max_size=700))
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for parse in (ResPQ.parse, ReqPqMulti.parse):
        try:
            parse(data)
        except ProtocolError:
            pass


@given(st.binary(max_size=80), st.integers(0, 75))
def test_any_corruption_of_a_res_pq_parses_or_raises(noise: bytes, at: int) -> None:
    wire = _res_pq().serialize()
    corrupt = wire[:at] + noise + wire[at + len(noise) :]
    try:
        parsed = ResPQ.parse(corrupt)
    except ProtocolError:
        return
    assert parsed.serialize() == corrupt
