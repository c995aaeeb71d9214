"""Through an MTProto proxy as a Telegram client goes, as far as a data centre's resPQ.

Theory of operation.  :func:`ask_res_pq` connects to the proxy, and for an
``ee`` secret first does the fake-TLS handshake: our ClientHello (made like
a Telegram app's, with the HMAC'd random and the timestamp) and the proxy's
ServerHello / ChangeCipherSpec / ApplicationData answer, whose random must
be the HMAC made with our key, so a front that hands us a real website (or
a proxy without our key) fails here.  Then the obfuscated2 init made with
the secret (padded intermediate for ``dd`` and ``ee``, intermediate for
classic secrets, as the apps do), inside TLS ApplicationData records for
``ee``, and one unencrypted ``req_pq_multi``.  The proxy opens its own
obfuscated2 connection to the data centre named in the init; the data
centre's ``resPQ`` comes back through it and must echo our nonce.  Nothing
needs an account, and nothing but a working path gives that answer.

It is shared by the probe (a check's steps and timings), the registry (proof
of control with the operator's prober secret) and the lab's Telegram-like
client.  It never raises for anything the proxy does: the answer names the
step that failed (``tcp``, ``handshake``, ``respq``) and how, in the probe's
failure words (``timeout``, ``refused``, ``reset``, ``closed``,
``unreachable``, ``wrong-answer``, ``error``).
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

from resistance.errors import ProtocolError
from resistance.links import MTProtoSecret
from resistance.proto import faketls, obfuscated2
from resistance.proto.mtproto import check_res_pq, req_pq_multi

#: The data centre a probe asks for (any of 1-5 answers req_pq_multi alike).
DEFAULT_DC = 2
_READ = 16 * 1024
#: A resPQ is under 200 bytes; fake-TLS answers are a few KiB.  Stop reading well past both.
_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True, slots=True)
class ResPQAnswer:
    """How far we got: ``ok``, or the failed step, the kind of failure and why."""

    ok: bool
    step: str
    failure: str | None = None
    detail: str = ""
    tcp_us: int | None = None
    handshake_us: int | None = None
    #: From sending req_pq_multi to the whole resPQ.
    respq_us: int | None = None

    @property
    def reason(self) -> str:
        if self.ok:
            return "resPQ received"
        return f"{self.step}: {self.failure}" + (f" ({self.detail})" if self.detail else "")


class _Failed(Exception):
    def __init__(self, step: str, failure: str, detail: str = "") -> None:
        super().__init__(detail)
        self.step, self.failure, self.detail = step, failure, detail


def tag_for(secret: MTProtoSecret | None) -> obfuscated2.ProtocolTag:
    """The framing Telegram's apps use with this kind of secret (or none, to a DC)."""
    if secret is None or secret.mode == "classic":
        return obfuscated2.ProtocolTag.INTERMEDIATE
    return obfuscated2.ProtocolTag.PADDED


def _os_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "error"


class _Session:
    """One connection's bytes, with a deadline per step."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within: float
    ) -> None:
        self.reader, self.writer, self.within = reader, writer, within
        self.received = 0
        self.handshake_us: int | None = None

    async def read(self, step: str) -> bytes:
        try:
            async with asyncio.timeout(self.within):
                data = await self.reader.read(_READ)
        except TimeoutError:
            raise _Failed(step, "timeout", f"no answer within {self.within:g} s") from None
        except OSError as exc:
            raise _Failed(step, _os_failure(exc), exc.strerror or type(exc).__name__) from None
        if not data:
            raise _Failed(step, "closed", "the proxy closed the connection")
        self.received += len(data)
        if self.received > _MAX_ANSWER:
            raise _Failed(step, "wrong-answer", "far more bytes than an answer")
        return data

    async def send(self, step: str, data: bytes) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.within):
                await self.writer.drain()
        except TimeoutError:
            raise _Failed(step, "timeout", "the proxy does not take our bytes") from None
        except OSError as exc:
            raise _Failed(step, _os_failure(exc), exc.strerror or type(exc).__name__) from None


async def _fake_tls(session: _Session, secret: MTProtoSecret, now: float) -> bytes:
    """Do the ee handshake; returns ApplicationData bytes that came with the answer."""
    assert secret.domain is not None
    hello = faketls.build_client_hello(secret.key, secret.domain, now)
    client_random = hello[faketls.RANDOM_OFFSET : faketls.RANDOM_OFFSET + faketls.RANDOM_LEN]
    await session.send("handshake", hello)
    data = b""
    while True:
        data += await session.read("handshake")
        try:
            length = faketls.parse_server_answer(secret.key, client_random, data)
        except ProtocolError as exc:
            raise _Failed("handshake", "wrong-answer", str(exc)) from None
        if length is not None:
            return data[length:]


async def _exchange(
    session: _Session, secret: MTProtoSecret | None, dc: int, now: float, started: float
) -> int:
    """The microseconds from req_pq_multi to its resPQ (the handshake's go to ``session``)."""
    tls = secret is not None and secret.mode == "ee"
    records = faketls.RecordReader(allow_ccs=False)
    pending = b""
    if tls:
        assert secret is not None
        pending = await _fake_tls(session, secret, now)
        session.handshake_us = int((time.perf_counter() - started) * 1e6)
    tag = tag_for(secret)
    init_bytes, init = obfuscated2.generate_init(tag, dc, secret.key if secret else None)
    request = req_pq_multi(time.time())
    payload = init_bytes + init.encryptor.update(obfuscated2.encode_frame(tag, request.serialize()))
    if tls:
        payload = faketls.CCS_RECORD + faketls.encode_records(payload)
    sent_at = time.perf_counter()
    await session.send("respq", payload)
    frames = obfuscated2.FrameDecoder(tag, max_packet=4096)
    while True:
        data = pending or await session.read("respq")
        pending = b""
        try:
            plain = init.decryptor.update(records.feed(data) if tls else data)
            packets = frames.feed(plain)
        except ProtocolError as exc:
            raise _Failed("respq", "wrong-answer", str(exc)) from None
        if packets:
            try:
                check_res_pq(packets[0].payload, request)
            except ProtocolError as exc:
                raise _Failed("respq", "wrong-answer", str(exc)) from None
            return int((time.perf_counter() - sent_at) * 1e6)


async def ask_res_pq(
    host: str,
    port: int,
    secret: MTProtoSecret | None,
    *,
    within: float,
    dc: int = DEFAULT_DC,
    source: str | None = None,
    clock: Callable[[], float] = time.time,
) -> ResPQAnswer:
    """Send req_pq_multi through the MTProto proxy at host:port; never raises for the proxy.

    ``secret`` ``None`` speaks to a data centre directly (obfuscated2
    without a secret, as a client with no proxy does).  ``within`` bounds
    each step (connect, handshake, the resPQ); ``source`` binds our end to a
    local address.
    """
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    session: _Session | None = None
    tcp_us = None
    try:
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(source, 0) if source else None
                )
        except TimeoutError:
            raise _Failed("tcp", "timeout", f"no connection within {within:g} s") from None
        except OSError as exc:
            raise _Failed("tcp", _os_failure(exc), exc.strerror or type(exc).__name__) from None
        tcp_us = int((time.perf_counter() - started) * 1e6)
        session = _Session(reader, writer, within)
        respq_us = await _exchange(session, secret, dc, clock(), time.perf_counter())
        return ResPQAnswer(True, "respq", None, "", tcp_us, session.handshake_us, respq_us)
    except _Failed as exc:
        handshake_us = session.handshake_us if session is not None else None
        return ResPQAnswer(False, exc.step, exc.failure, exc.detail[:120], tcp_us, handshake_us)
    finally:
        if writer is not None:
            writer.close()
