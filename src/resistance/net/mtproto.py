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
``unreachable``, ``wrong-answer``, ``error``, ``slow``).

Bounds: ``within`` is each step's idle timeout (a silent proxy fails with
``timeout``) and twice it the step's deadline, which bytes do not move (a
proxy that drips its answer is cut off with ``slow``); a proxy that sends
more than an answer fails with ``wrong-answer``.  So an answer comes within
``5 * within`` seconds (TCP, then two steps) whatever the proxy does.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from dataclasses import dataclass

from resistance.errors import ProtocolError
from resistance.proto import obfuscated2
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.mtclient import ProxyClient
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


def tag_for(secret: ProxySecret | None) -> obfuscated2.ProtocolTag:
    """The framing Telegram's apps use with this kind of secret (or none, to a DC)."""
    if secret is None or secret.mode is SecretMode.CLASSIC:
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
    """One connection's bytes, with an idle timeout and a deadline per step."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within: float
    ) -> None:
        self.reader, self.writer, self.within = reader, writer, within
        self.received = 0
        self.handshake_us: int | None = None
        self.step = ""
        self.deadline = 0.0

    def _until(self, step: str) -> tuple[float, bool]:
        """When this wait ends, and whether that is the step's deadline."""
        now = asyncio.get_running_loop().time()
        if step != self.step:
            self.step, self.deadline = step, now + 2 * self.within
        idle_end = now + self.within
        return min(idle_end, self.deadline), self.deadline <= idle_end

    async def read(self, step: str) -> bytes:
        until, last = self._until(step)
        try:
            async with asyncio.timeout_at(until):
                data = await self.reader.read(_READ)
        except TimeoutError:
            if last:
                raise _Failed(step, "slow", f"not done in {2 * self.within:g} s") from None
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
        until, _ = self._until(step)
        try:
            self.writer.write(data)
            async with asyncio.timeout_at(until):
                await self.writer.drain()
        except TimeoutError:
            raise _Failed(step, "timeout", "the proxy does not take our bytes") from None
        except OSError as exc:
            raise _Failed(step, _os_failure(exc), exc.strerror or type(exc).__name__) from None


async def _exchange(
    session: _Session, secret: ProxySecret | None, dc: int, now: float, started: float
) -> int:
    """The microseconds from req_pq_multi to its resPQ (the handshake's go to ``session``).

    The protocol is :class:`~resistance.proto.mtclient.ProxyClient`'s; this
    only moves its bytes, names the step each failure belongs to, and times.
    """
    client = ProxyClient(secret, dc, tag_for(secret), now=lambda: now)
    first = client.start()
    plain = b""
    if client.fake_tls:
        await session.send("handshake", first)
        first = b""
        while not client.established:
            data = await session.read("handshake")
            try:
                plain = client.receive(data)
            except ProtocolError as exc:
                raise _Failed("handshake", "wrong-answer", str(exc)) from None
        session.handshake_us = int((time.perf_counter() - started) * 1e6)
    request = req_pq_multi(time.time())
    frame = obfuscated2.encode_frame(client.tag, request.serialize())
    sent_at = time.perf_counter()
    await session.send("respq", first + client.send(frame))
    frames = obfuscated2.FrameDecoder(client.tag, max_packet=4096)
    while True:
        try:
            packets = frames.feed(plain)
            if packets:
                check_res_pq(packets[0].payload, request)
                return int((time.perf_counter() - sent_at) * 1e6)
            plain = client.receive(await session.read("respq"))
        except ProtocolError as exc:
            raise _Failed("respq", "wrong-answer", str(exc)) from None


async def ask_res_pq(
    host: str,
    port: int,
    secret: ProxySecret | None,
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
