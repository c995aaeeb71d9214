"""A stand-in for a Telegram data centre: a TCP service inside the range the censor blocks.

It answers an HTTP request with a short page naming itself (so curl, the
lab's "user application", can fetch it) and echoes anything else, as a plain
TCP service would.  Bounded like every server here: a cap on connections, a
deadline per connection, at most 64 KiB echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from resistance.config import Endpoint

BODY = b"telegram data centre stand-in: you got through\n"
MAX_CONNECTIONS = 1024
DEADLINE = 10.0
MAX_ECHO = 64 * 1024


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
