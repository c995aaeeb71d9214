"""Hostile SOCKS5 and TLS peers on loopback: what a censor can register as a proxy.

:class:`Hostile` serves one kind of misbehaviour (see :data:`KINDS`) from a
thread of its own, on 127.0.0.1, until closed.  It accepts any credentials
and, where a kind gets that far, plays the canary too (the probe's checks
only verify the canary's signature, so the peer may sign with a test key
that stands for the canary's, or forge, or replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.node.identity import CHALLENGE_SUFFIX
from resistance.probe import canary

GREETING = b"\x05\x02"
AUTH = b"\x01\x00"
REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x09"
#: The longest legal reply: its bound address a 255-byte domain (266 bytes).
HUGE_REPLY = b"\x05\x00\x00\x03\xff" + b"a" * 255 + b"\x00\x09"

KINDS = (
    "silent",  # accepts, reads, never answers
    "stall-auth",  # answers the greeting, then nothing
    "stall-connect",  # answers greeting and credentials, then nothing
    "stall-canary",  # accepts the CONNECT, then nothing
    "drip",  # answers the CONNECT with the longest reply, one byte at a time
    "flood",  # sends 64 KiB after 64 KiB from the start
    "bad-version",  # answers as SOCKS4
    "bad-method",  # picks GSSAPI, which nobody offered
    "huge-bound",  # the longest legal reply, on time, then nothing
    "truncated-bound",  # a reply cut off inside its bound address, then FIN
    "reset-greeting",  # a TCP reset at each step...
    "reset-auth",
    "reset-connect",
    "reset-after-connect",  # accepts CONNECT (and answers health checks), resets on data
    "zero-window",  # accepts CONNECT, then never reads again
    "forged-canary",  # a canary answer signed by another key
    "replayed-canary",  # a real canary answer for an earlier nonce
    "huge-canary",  # a real canary answer, then 100 MB more
    "good-canary",  # an honest proxy and canary, to show the harness itself is sound
    "tls-wrong-cert",  # TLS with a certificate that is not the client's pin
    "tls-stall",  # takes the TCP connection, never answers the ClientHello
    "plain-on-tls",  # answers a ClientHello with plain SOCKS5 bytes
    "late",  # not hostile: a good proxy (``forward_to``) whose every answer is ``delay`` late
)


class Hostile:
    def __init__(
        self,
        kind: str,
        *,
        canary_key: Ed25519PrivateKey | None = None,
        drip_every: float = 0.5,
        certificate: tuple[Path, Path] | None = None,
        forward_to: int = 0,
        delay: float = 0.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.canary_key = canary_key or Ed25519PrivateKey.generate()
        self.drip_every = drip_every
        self.forward_to = forward_to
        self.delay = delay
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        context = None
        if kind == "tls-wrong-cert":
            assert certificate is not None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*certificate)
        listener = socket.create_server(("127.0.0.1", 0))
        if kind == "zero-window":
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        self.port = int(listener.getsockname()[1])
        self.tasks: set[asyncio.Task[None]] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, sock=listener, ssl=context), self.loop
        ).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            await self._play(r, w)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass  # cancelled: closing (a cancelled handler would be logged as an error)
        finally:
            self.tasks.discard(task)
            w.transport.abort()

    async def _play(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        kind = self.kind
        if kind == "late":
            await asyncio.sleep(self.delay)
            ur, uw = await asyncio.open_connection("127.0.0.1", self.forward_to)
            try:
                await asyncio.gather(_pipe(r, uw), _pipe(ur, w))
            finally:
                uw.transport.abort()
            return
        if kind in ("silent", "tls-stall"):
            await _idle(r)
            return
        if kind == "flood":
            while True:
                w.write(bytes(65536))
                await w.drain()
        if kind == "plain-on-tls":
            await r.read(1)
            w.write(GREETING + AUTH + REPLY)
            await w.drain()
            await _idle(r)
            return
        head = await r.readexactly(2)
        await r.readexactly(head[1])
        if kind == "reset-greeting":
            _reset(w)
            return
        if kind in ("bad-version", "bad-method"):
            w.write(b"\x04\x00" if kind == "bad-version" else b"\x05\x01")
            await w.drain()
            await _idle(r)
            return
        w.write(GREETING)
        if kind == "stall-auth":
            await _idle(r)
            return
        _, ulen = await r.readexactly(2)
        await r.readexactly(ulen)
        await r.readexactly((await r.readexactly(1))[0])
        if kind == "reset-auth":
            _reset(w)
            return
        w.write(AUTH)
        if kind == "stall-connect":
            await _idle(r)
            return
        host = await _request(r)
        if kind == "reset-connect":
            _reset(w)
            return
        if kind == "drip":
            for byte in HUGE_REPLY:
                w.write(bytes([byte]))
                await w.drain()
                await asyncio.sleep(self.drip_every)
            await _idle(r)
            return
        if kind == "truncated-bound":
            w.write(HUGE_REPLY[:40])
            await w.drain()
            w.close()
            return
        if kind == "huge-bound":
            w.write(HUGE_REPLY)
            await w.drain()
            await _idle(r)
            return
        w.write(REPLY)
        await w.drain()
        if kind == "stall-canary":
            await _idle(r)
            return
        if kind == "reset-after-connect":
            if host.endswith(CHALLENGE_SUFFIX):  # a health check: look alive
                w.write(os.urandom(64))
                await w.drain()
                await _idle(r)
                return
            await r.read(1)
            _reset(w)
            return
        if kind == "zero-window":
            w.transport.pause_reading()
            await asyncio.sleep(3600)
            return
        request = await _canary_request(r)
        nonce, upload_sha256, download = request.nonce, request.upload_sha256, request.download
        key = self.canary_key
        if kind == "forged-canary":
            key = Ed25519PrivateKey.generate()
        elif kind == "replayed-canary":
            nonce = bytes(16)  # an earlier check's (the canary signed it then)
        answer = canary.answer(key, nonce, upload_sha256, download, now=time.time())
        if kind == "huge-canary":
            w.write(answer[:-1])
            for _ in range(100 * 16):  # 100 MB
                w.write(bytes(65536))
                await w.drain()
        else:
            w.write(answer)
            await w.drain()
        await _idle(r)


async def _idle(r: asyncio.StreamReader) -> None:
    """Read and drop until the peer leaves."""
    while await r.read(65536):
        pass


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    if w.can_write_eof():
        w.write_eof()


def _reset(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


async def _request(r: asyncio.StreamReader) -> str:
    """The CONNECT request's destination host."""
    head = await r.readexactly(4)
    if head[3] == 3:
        host = (await r.readexactly((await r.readexactly(1))[0])).decode("ascii", "replace")
    else:
        host = (await r.readexactly(16 if head[3] == 4 else 4)).hex()
    await r.readexactly(2)
    return host


async def _canary_request(r: asyncio.StreamReader) -> canary.CanaryRequest:
    parser = canary.CanaryRequestParser()
    while True:
        data = await r.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        request = parser.feed(data)
        if request is not None:
            return request
