"""Freeze detection: a download through an upstream that stops partway.

Why.  Since 2025 Russia's TSPU lets a TCP flow to foreign hosting open and
carry its first ~16 KB from the server, then drops the rest: the connection
stays open and the data stops.  A dial and the node's 64-byte challenge both
pass; only a longer download shows it.  So the health check, when it knows a
bulk source, asks for :data:`DOWNLOAD` bytes through the upstream and watches
the reads: no byte for ``stall`` seconds before the end is a freeze, reported
with the byte count where the flow stopped, and the upstream is treated as
failed (the ladder learns it, new connections take another transport).

The bulk source is a registry's canary (:mod:`resistance.probe.canary`): it
answers a nonce with a signature and then the bytes asked for, so the check
needs no third party.  The signature is not checked here; what counts is
whether the bytes keep coming.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from resistance.client.dial import Dialed, DialError, dial
from resistance.client.upstreams import Upstream
from resistance.config import Endpoint
from resistance.probe.canary import SIGNATURE_BYTES, request_bytes
from resistance.proto.socks5 import Address, Command

#: Bytes asked for: four times the freeze size TSPU is reported to use.
DOWNLOAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    received: int
    wanted: int
    stalled: bool
    error: str = ""

    @property
    def frozen(self) -> bool:
        """Data came, then stopped with the connection still open."""
        return self.stalled and 0 < self.received < self.wanted


class _Counter(asyncio.Protocol):
    """Counts bytes from a TLS upstream; wakes the reader on each chunk or the end."""

    def __init__(self, already: int) -> None:
        self.received = already
        self.ended = False
        self.event = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.event.set()

    def eof_received(self) -> bool:
        self.ended = True
        self.event.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.event.set()


async def _count(dialed: Dialed, want: int, stall: float, deadline: float) -> tuple[int, bool]:
    """Bytes received until ``want``, the end, a stall, or the deadline: (count, stalled)."""
    loop = asyncio.get_running_loop()
    if dialed.sock is not None:
        received = len(dialed.early)
        while received < want:
            wait = min(stall, deadline - time.monotonic())
            if wait <= 0:
                return received, False
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(dialed.sock, 65536), wait)
            except TimeoutError:
                return received, wait >= stall
            if not chunk:
                return received, False
            received += len(chunk)
        return received, False
    assert dialed.transport is not None
    counter = _Counter(len(dialed.early))
    dialed.transport.set_protocol(counter)
    dialed.transport.resume_reading()
    while counter.received < want and not counter.ended:
        wait = min(stall, deadline - time.monotonic())
        if wait <= 0:
            return counter.received, False
        counter.event.clear()
        try:
            await asyncio.wait_for(counter.event.wait(), wait)
        except TimeoutError:
            return counter.received, wait >= stall
    return counter.received, False


async def bulk_through(
    upstream: Upstream,
    source: Endpoint,
    *,
    want: int = DOWNLOAD,
    stall: float = 3.0,
    seconds: float = 20.0,
) -> BulkOutcome:
    """Ask ``source`` (a canary) for ``want`` bytes through ``upstream`` and count them."""
    deadline = time.monotonic() + seconds
    total = SIGNATURE_BYTES + want
    try:
        dialed = await dial(
            upstream, Command.CONNECT, Address.from_host(source.host, source.port),
            seconds=min(seconds, 10.0),
        )  # fmt: skip
    except DialError as exc:
        return BulkOutcome(0, total, False, str(exc))
    try:
        request = request_bytes(os.urandom(16), b"", want)
        if dialed.sock is not None:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_sendall(dialed.sock, request), stall
            )
        else:
            assert dialed.transport is not None
            dialed.transport.write(request)
        received, stalled = await _count(dialed, total, stall, deadline)
    except (OSError, TimeoutError) as exc:
        return BulkOutcome(0, total, False, f"bulk check: {exc}")
    finally:
        dialed.close()
    return BulkOutcome(received, total, stalled)
