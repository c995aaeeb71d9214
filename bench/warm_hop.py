"""A bridge's connect over its TLS hop, cold against warm, on a path with a round trip.

The lab's links have no delay (this kernel has no ``sch_netem``), so what a warm
hop connection saves (the TCP and TLS handshakes' round trips between bridge and
exit) does not show there; its CPU cost is the same, only paid earlier.  Here an
exit node (``resist node``, a subprocess) sits behind a userspace delay line on
loopback that holds every chunk ``--delay`` seconds each way (and a new
connection's handshake one round trip), and the bridge's network seam
(:class:`~resistance.node.upstream.UpstreamNetwork`, on uvloop as the node runs
it) opens ``--connects`` sequential connections through it to an echo server,
with ``upstream_warm`` 0 and 2, twice each.  Loopback only, no root.

    .venv/bin/python bench/warm_hop.py --delay 0.010
    .venv/bin/python bench/warm_hop.py --delay 0.025
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from resistance.node.upstream import UpstreamNetwork, parse_upstream_url
from resistance.proto.socks5 import Address

PIN = re.compile(r"TLS certificate sha256 ([0-9a-f]{64})")
TLS_PORT = re.compile(r"socks5s://127\.0\.0\.1:(\d+)")


def echo_server() -> int:
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port: int = server.getsockname()[1]
    return port


async def delay_line(target: int, delay: float) -> asyncio.Server:
    """A forwarder to 127.0.0.1:target: each chunk leaves ``delay`` after it came."""
    loop = asyncio.get_running_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def out() -> None:
            while (item := await queue.get())[1]:
                await asyncio.sleep(max(0.0, item[0] - loop.time()))
                writer.write(item[1])
            writer.close()

        sender = asyncio.ensure_future(out())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, data))
        except OSError:
            pass
        queue.put_nowait((0.0, b""))
        await sender

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2 * delay)  # the TCP handshake's round trip
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def start_exit(state: Path) -> tuple[subprocess.Popen[str], str, int]:
    """The exit node, its certificate's pin and its TLS port."""
    exit_ = subprocess.Popen(
        [sys.executable, "-m", "resistance", "node", "--listen", "127.0.0.1:0",
         "--tls-listen", "127.0.0.1:0", "--user", "hop:hop", "--allow", "127.0.0.0/8",
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert exit_.stdout is not None
    banner = ""
    while not PIN.search(banner):
        banner += exit_.stdout.readline()
    pin, port = PIN.search(banner), TLS_PORT.search(banner)
    assert pin is not None and port is not None
    return exit_, pin.group(1), int(port.group(1))


async def measure(args: argparse.Namespace, pin: str, port: int) -> list[tuple[int, float, int]]:
    line = await delay_line(port, args.delay)
    echo = Address.from_host("127.0.0.1", echo_server())
    hop = parse_upstream_url(
        f"socks5s://hop:hop@127.0.0.1:{line.sockets[0].getsockname()[1]}#sha256={pin}"
    )
    rows = []
    try:
        for warm in (0, 2, 0, 2):
            net = UpstreamNetwork([hop], loop=asyncio.get_running_loop(), warm_size=warm)
            times = []
            for _ in range(args.connects):
                started = time.perf_counter()
                dialed = await net.connect(echo)
                times.append(time.perf_counter() - started)
                dialed.close()
            net.close()
            rows.append((warm, statistics.median(times[1:]) * 1e3, net.warm_hits))
    finally:
        line.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.010, help="one-way seconds")
    parser.add_argument("--connects", type=int, default=20)
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        exit_, pin, port = start_exit(Path(tmp) / "exit")
        try:
            rows = uvloop.run(measure(args, pin, port))
        finally:
            exit_.kill()  # its connections through the delay line would drain for 10 s
            exit_.wait(10)
    print(f"bridge → exit over TLS, one-way delay {args.delay * 1e3:g} ms (round trip "
          f"{2 * args.delay * 1e3:g} ms), {args.connects} sequential connects:")  # fmt: skip
    for warm, p50, hits in rows:
        print(f"  upstream_warm {warm}: connect p50 {p50:6.1f} ms ({hits} on a warm connection)")


if __name__ == "__main__":
    main()
