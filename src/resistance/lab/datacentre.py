"""A stand-in for a Telegram data centre: a TCP service inside the range the censor blocks.

It answers an HTTP request with a short page naming itself (so curl, the
lab's "user application", can fetch it).  A connection that opens with an
obfuscated2 init (a data centre's side: no proxy secret) is MTProto: it
answers ``req_pq_multi`` with a well-formed ``resPQ`` (our nonce echoed, a
random server nonce, a ``pq`` that is the product of two random 31-bit
primes, Telegram's production key fingerprint), in the framing the init
announced and encrypted as a data centre does, and echoes any other packet.
Anything else is echoed, as a plain TCP service would.  Bounded like every
server here: a cap on connections, a deadline per connection, at most 64 KiB
echoed or answered.

Telling an init from other bytes: an init is 64 bytes whose decryption
carries one of three 4-byte protocol tags (a chance of 3 in 2^32 for other
data), and never starts with 0xef (unobfuscated abridged), an HTTP verb or
a TLS record.  A first read shorter than 64 bytes waits up to
``INIT_GRACE`` seconds for the rest before it is echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time

from resistance.config import Endpoint
from resistance.errors import ProtocolError
from resistance.proto import obfuscated2
from resistance.proto.mtproto import ReqPqMulti, ResPQ

BODY = b"telegram data centre stand-in: you got through\n"
MAX_CONNECTIONS = 1024
DEADLINE = 10.0
MAX_ECHO = 64 * 1024
INIT_GRACE = 1.0
#: Telegram's production RSA key fingerprint (0xd09d1d85de64fd85), as resPQ carries it.
FINGERPRINTS = (-3414540481677951611,)
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def is_prime(n: int) -> bool:
    """Miller-Rabin with the witnesses that decide every n < 3.3 * 10^24."""
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(bits: int = 31) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if is_prime(candidate):
            return candidate


def res_pq_for(request: ReqPqMulti, now: float) -> ResPQ:
    """A data centre's answer to ``request``: a fresh server nonce and pq."""
    pq = random_prime() * random_prime()
    message_id = (int(now * 2**32) & 0x7FFF_FFFF_FFFF_FFFC) | 1
    return ResPQ(
        nonce=request.nonce,
        server_nonce=secrets.token_bytes(16),
        pq=pq.to_bytes((pq.bit_length() + 7) // 8, "big"),
        fingerprints=FINGERPRINTS,
        message_id=message_id,
    )


async def _serve_mtproto(
    init: obfuscated2.Init,
    rest: bytes,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One obfuscated2 connection: resPQ for req_pq_multi, other packets echoed."""
    frames = obfuscated2.FrameDecoder(init.tag, max_packet=MAX_ECHO)
    answered = 0
    data = rest
    while answered < MAX_ECHO:
        try:
            packets = frames.feed(init.decryptor.update(data))
        except ProtocolError:
            return
        for packet in packets:
            try:
                answer = res_pq_for(ReqPqMulti.parse(packet.payload), time.time()).serialize()
            except ProtocolError:
                answer = packet.payload
            frame = obfuscated2.encode_frame(init.tag, answer)
            writer.write(init.encryptor.update(frame))
            answered += len(frame)
        await writer.drain()
        data = await reader.read(4096)
        if not data:
            return


async def _read_init(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """``first`` and whatever follows it within the grace, up to a whole init."""
    data = first
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(INIT_GRACE):
            while len(data) < obfuscated2.INIT_LEN:
                more = await reader.read(4096)
                if not more:
                    break
                data += more
    return data


def _init_of(data: bytes) -> obfuscated2.Init | None:
    if len(data) < obfuscated2.INIT_LEN or not obfuscated2.init_is_allowed(data):
        return None
    try:
        return obfuscated2.parse_init(data[: obfuscated2.INIT_LEN])
    except ProtocolError:
        return None


def http_answer(body: bytes = BODY) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
) -> None:
    if slots.locked():
        writer.close()
        return
    async with slots:
        try:
            async with asyncio.timeout(DEADLINE):
                first = await reader.read(4096)
                if first[:4] in (b"GET ", b"HEAD", b"POST"):
                    while b"\r\n\r\n" not in first and len(first) < 16384:
                        more = await reader.read(4096)
                        if not more:
                            break
                        first += more
                    writer.write(http_answer())
                else:
                    # Any init a client may send is tried (one starting 0x16 included:
                    # only 16 03 01 02 is forbidden); what is no init is echoed.
                    if first and first[0] != 0xEF:
                        first = await _read_init(reader, first)
                        init = _init_of(first)
                        if init is not None:
                            rest = first[obfuscated2.INIT_LEN :]
                            await _serve_mtproto(init, rest, reader, writer)
                            return
                    echoed = 0
                    data = first
                    while data and echoed < MAX_ECHO:
                        writer.write(data)
                        echoed += len(data)
                        await writer.drain()
                        data = await reader.read(4096)
                await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def serve(listen: Endpoint, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    slots = asyncio.Semaphore(MAX_CONNECTIONS)
    server = await asyncio.start_server(
        lambda r, w: _serve_one(r, w, slots), listen.host, listen.port, limit=16384
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"data centre stand-in listening on {listen}", flush=True)
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()
