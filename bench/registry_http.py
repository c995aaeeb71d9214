"""What the registry's HTTP limits cost: requests/s with and without them.

Usage (from the project root)::

    .venv/bin/python bench/registry_http.py              # 3 rounds of 5 s per variant
    .venv/bin/python bench/registry_http.py --seconds 10 --rounds 5

Why: issue 26 put a header deadline in front of uvicorn's h11 protocol and a
request guard (header count and bytes, body read whole under a size and time
limit, the strict JSON parser) before every route.  This measures whether
that costs throughput that matters.

Variants, each a `resist registry` app on SQLite served in its own process on
127.0.0.1 (one uvicorn worker):

* **before**: uvicorn's defaults (h11, no limits) and no request guard, as
  `serve` ran until issue 26;
* **after**: :func:`resistance.registry.server.server_config` and the guard,
  as `serve` runs now.

The load is 16 keep-alive connections from one asyncio process, each sending
its next request when the answer arrives: ``GET /healthz`` (no body) and
``POST /api/v1/operators`` with a JSON body the validation refuses (422: the
guard parses it, FastAPI parses it again, no database write).  Rounds
alternate the variants so a busy minute on this shared machine hits both.
Besides requests/s (which follows the machine's load), the table shows the
server process's CPU time per request (user + system, from /proc), which a
busy neighbour changes much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUESTS = {
    "GET /healthz": b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n",
    "POST json (422)": (
        b"POST /api/v1/operators HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b'Content-Length: 22\r\n\r\n{"name": "not valid!"}'
    ),
}


def serve(variant: str, port: int, state: Path) -> None:
    import uvicorn

    from resistance.registry.app import create_app
    from resistance.registry.guard import RequestGuard
    from resistance.registry.server import server_config
    from resistance.registry.settings import RateLimit, RegistrySettings

    lots = RateLimit(per_second=1e9, burst=10**9)
    settings = RegistrySettings(
        state_dir=state, publish_interval=0, public_limit=lots, signup_limit=lots
    )
    app = create_app(settings)
    if variant == "before":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestGuard]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", http="h11")
    else:
        config = server_config(app, settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    uvicorn.Server(config).run(sockets=[sock])


async def _client(port: int, request: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    while time.monotonic() < until:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        done += 1
    writer.close()
    counts.append(done)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    pid: int, port: int, request: bytes, seconds: float, connections: int
) -> tuple[float, float]:
    """Requests/s and the server's CPU microseconds per request."""
    counts: list[int] = []
    until = time.monotonic() + seconds
    cpu = _cpu_seconds(pid)
    await asyncio.gather(*(_client(port, request, until, counts) for _ in range(connections)))
    cpu = _cpu_seconds(pid) - cpu
    return sum(counts) / seconds, cpu * 1e6 / max(1, sum(counts))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(variant: str, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, "--port", str(port), "--state", str(state)]
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {variant} server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.state)
        return
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for variant in ("before", "after"):
                state = Path(tmp) / variant
                proc, port = _start(variant, state)
                try:
                    time.sleep(0.5)  # the lifespan (migration) finishes before serving
                    for name, request in REQUESTS.items():
                        measured = asyncio.run(
                            _load(proc.pid, port, request, args.seconds, args.connections)
                        )
                        results.setdefault((variant, name), []).append(measured)
                finally:
                    proc.terminate()
                    proc.wait(15)
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, {args.connections} connections, "
          f"{args.rounds} rounds of {args.seconds:g} s")  # fmt: skip
    print(f"  {'request':16} {'variant':7} {'req/s median (min-max)':>24} {'server CPU/req':>15}")
    for name in REQUESTS:
        for variant in ("before", "after"):
            rates = [r for r, _ in results[(variant, name)]]
            cpu = statistics.median(c for _, c in results[(variant, name)])
            spread = f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"
            print(f"  {name:16} {variant:7} {spread:>24} {cpu:>12.0f} us")


if __name__ == "__main__":
    main()
