"""The far end of every benchmark connection, run in its own process on the load core.

Why a separate process: the sink must not share a GIL with the load generator, and it must
be cheap enough that the proxy under test, not the sink, is what limits the numbers.

It listens on two ports on 127.0.0.1:

* the *bulk* port takes one command per connection, served by a blocking thread with a
  preallocated 1 MiB buffer (no per-chunk allocation):

  - ``b"U" + u64 length``: read and discard exactly ``length`` bytes, then answer ``b"K"``
    (so the client's clock stops only when the last byte has crossed the proxy);
  - ``b"D" + u64 length``: send ``length`` zero bytes, then close.

* the *echo* port echoes whatever it reads until EOF; it runs on uvloop (when installed)
  with a bare Protocol so that thousands of idle connections cost little.

On start it prints ``READY bulk=PORT echo=PORT`` on stdout; the ports are picked by the
kernel, so several sinks never collide.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import socket
import struct
import sys
import threading
from typing import cast

CHUNK = 1 << 20
HEADER = struct.Struct("!cQ")
UPLOAD = b"U"
DOWNLOAD = b"D"
UPLOAD_DONE = b"K"


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed during header")
        data += chunk
    return bytes(data)


def _serve_bulk(sock: socket.socket) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        command, length = HEADER.unpack(_recv_exactly(sock, HEADER.size))
        if command == UPLOAD:
            remaining = length
            while remaining > 0:
                got = sock.recv_into(view, min(CHUNK, remaining))
                if got == 0:
                    raise ConnectionError("peer closed during upload")
                remaining -= got
            sock.sendall(UPLOAD_DONE)
        elif command == DOWNLOAD:
            remaining = length
            while remaining >= CHUNK:
                sock.sendall(view)
                remaining -= CHUNK
            if remaining:
                sock.sendall(view[:remaining])
            sock.shutdown(socket.SHUT_WR)
            # Wait for the client's close so the data is not cut short by an RST.
            sock.settimeout(30)
            while sock.recv_into(view):
                pass
    except OSError:
        pass
    finally:
        sock.close()


def _bulk_accept_loop(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_bulk, args=(conn,), daemon=True).start()


class _Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        # Both asyncio and uvloop set TCP_NODELAY on TCP transports already.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(host: str) -> None:
    loop = asyncio.get_running_loop()
    bulk = socket.create_server((host, 0), backlog=4096)
    threading.Thread(target=_bulk_accept_loop, args=(bulk,), daemon=True).start()
    echo = await loop.create_server(_Echo, host, 0, backlog=4096)
    echo_port = echo.sockets[0].getsockname()[1]
    print(f"READY bulk={bulk.getsockname()[1]} echo={echo_port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    echo.close()
    bulk.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    _raise_nofile()
    runner: contextlib.AbstractContextManager[asyncio.Runner]
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner as r:
        r.run(_serve(args.host))
    sys.exit(0)


if __name__ == "__main__":
    main()
