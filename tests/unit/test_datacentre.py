"""The lab's data-centre stand-in speaks MTProto's first exchange over obfuscated2."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resistance.config import Endpoint
from resistance.lab import datacentre
from resistance.proto import obfuscated2
from resistance.proto.mtproto import ResPQ, check_res_pq, req_pq_multi


@pytest.fixture
async def dc_port() -> AsyncIterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield port
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _packets(
    reader: asyncio.StreamReader, init: obfuscated2.Init, count: int
) -> list[obfuscated2.Packet]:
    frames = obfuscated2.FrameDecoder(init.tag)
    packets: list[obfuscated2.Packet] = []
    for _ in range(100):
        if len(packets) >= count:
            break
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "the stand-in closed early"
        packets += frames.feed(init.decryptor.update(data))
    return packets


@pytest.mark.parametrize("tag", list(obfuscated2.ProtocolTag))
async def test_req_pq_multi_gets_a_res_pq_in_every_framing(
    dc_port: int, tag: obfuscated2.ProtocolTag
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", dc_port)
    wire, init = obfuscated2.generate_init(tag, -2)  # a media DC index is fine too
    request = req_pq_multi(time.time())
    other = b"\x01\x02\x03\x04" * 5
    # The init alone first (as a proxy may send it), then two packets in one write.
    writer.write(wire)
    await writer.drain()
    frames = obfuscated2.encode_frame(tag, request.serialize()) + obfuscated2.encode_frame(
        tag, other
    )
    writer.write(init.encryptor.update(frames))
    first, second = await _packets(reader, init, 2)
    answer = check_res_pq(first.payload, request)
    assert answer.message_id % 4 == 1 and answer.fingerprints == datacentre.FINGERPRINTS
    pq = int.from_bytes(answer.pq, "big")
    assert pq.bit_length() in (61, 62) and not datacentre.is_prime(pq)
    assert second.payload == other  # any other packet is echoed
    writer.close()


@pytest.mark.parametrize("first", [0x16, 0x47, 0x00])
async def test_any_init_a_client_may_send_is_answered(dc_port: int, first: int) -> None:
    """Regression: inits starting 0x16 (one in 256) were echoed as if TLS, not answered."""

    def random(n: int) -> bytes:
        return bytes([first]) + os.urandom(n - 1)

    tag = obfuscated2.ProtocolTag.INTERMEDIATE
    wire, init = obfuscated2.generate_init(tag, 2, random=random)
    assert wire[0] == first
    reader, writer = await asyncio.open_connection("127.0.0.1", dc_port)
    request = req_pq_multi(time.time())
    writer.write(wire + init.encryptor.update(obfuscated2.encode_frame(tag, request.serialize())))
    (answer,) = await _packets(reader, init, 1)
    assert check_res_pq(answer.payload, request).nonce == request.nonce
    writer.close()


async def test_plain_bytes_and_http_keep_their_old_answers(dc_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", dc_port)
    noise = bytes(range(1, 65)) + b"tail"  # 64+ bytes that are no init: echoed
    writer.write(noise)
    assert await asyncio.wait_for(reader.readexactly(len(noise)), 5) == noise
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", dc_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: dc\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == datacentre.http_answer()
    writer.close()


def test_primes() -> None:
    small = [n for n in range(60) if datacentre.is_prime(n)]
    assert small == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
    assert datacentre.is_prime(2**31 - 1) and not datacentre.is_prime(2**32 + 1)
    assert not datacentre.is_prime(3215031751)  # a strong pseudoprime to bases 2, 3, 5, 7


@settings(max_examples=30)
@given(st.binary(min_size=16, max_size=16))
def test_res_pq_for_any_nonce_parses_and_echoes_it(nonce: bytes) -> None:
    request = req_pq_multi(time.time(), nonce)
    answer = datacentre.res_pq_for(request, time.time())
    assert check_res_pq(answer.serialize(), request) == ResPQ.parse(answer.serialize())
    p_q = int.from_bytes(answer.pq, "big")
    assert len(answer.pq) == 8 and not datacentre.is_prime(p_q)
