"""Ping-pong latency through each proxy, in alternating runs, beside a bare C relay.

Usage (from the project root, after ``bash bench/setup.sh``)::

    .venv/bin/python bench/pingpong.py                       # 8 alternating runs
    .venv/bin/python bench/pingpong.py --runs 4 --servers microsocks,resist

Why alternating runs: on this shared VM a round trip's p50 moves by 20-40 % from one
minute to the next, more than the gaps between proxies. So each run starts every server
in turn (a fresh process each, pinned to the proxy core), measures one connection's round
trips with ``bench/cyclegen.c`` on the load core, and the table compares medians over the
runs, with each run's ratio to microsocks taken within that run.

Why the floor relays: ``bench/floorrelay.c`` is a relay in C with nothing but the wake-up
path and the system calls the node makes per message (epoll, then splice in and out of a
pipe), in two shapes: ``floor-flat`` (its sockets in the epoll the process sleeps in) and
``floor-nested`` (in an epoll nested in that one, as the node's are in the event loop's).
They show how close to microsocks any event-loop relay can come on this machine, and so
how much of the node's gap is its interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import cyclegen
import peers
from loadgen import BenchError, Proxy

FLOOR_SOURCE = Path(__file__).resolve().with_name("floorrelay.c")
REFERENCE = "microsocks"
DEFAULT_SERVERS = ("microsocks", "floor-flat", "floor-nested", "resist")


def _floor(shape: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, _: Path) -> list[str]:
        binary = cyclegen.ensure_built(FLOOR_SOURCE)
        return [str(binary), "--port", str(port), "--shape", shape]

    return argv


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    argv: Callable[[int, Path], list[str]]
    auth: bool = True


def servers() -> dict[str, Server]:
    known = {name: Server(name, peer.argv, peer.auth) for name, peer in peers.PEERS.items()}
    for shape in ("flat", "nested"):
        known[f"floor-{shape}"] = Server(f"floor-{shape}", _floor(shape))
    return known


def _argv(server: Server, port: int, scratch: Path) -> list[str]:
    argv = server.argv(port, scratch)
    if server.name.startswith("floor-"):
        argv += ["--user", peers.USER, "--pass", peers.PASSWORD]
    return argv


def measure(server: Server, rounds: int, proxy_cpu: int, scratch: Path) -> tuple[float, float]:
    """One fresh process of ``server``: p50 and p99 of ``rounds`` round trips, in µs."""
    scratch.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    process = peers.Process(_argv(server, port, scratch), proxy_cpu, scratch / "log")
    try:
        peers.wait_listening(process, "127.0.0.1", port, timeout=30)
        auth = (peers.USER, peers.PASSWORD) if server.auth else (None, None)
        result = cyclegen.run_pingpong(Proxy("127.0.0.1", port, *auth), rounds, warmup=500)
    finally:
        process.stop()
    return result.p50_us, result.p99_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = servers()
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, in run order ({', '.join(known)})",
    )
    parser.add_argument("--runs", type=int, default=8, help="alternating runs (8)")
    parser.add_argument("--rounds", type=int, default=10_000, help="round trips per run")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--output", type=Path, help="write every run's figures as JSON here")
    args = parser.parse_args()
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}")
    if not 1 <= args.runs <= 100 or not 100 <= args.rounds <= 1_000_000:
        parser.error("--runs must be 1..100 and --rounds 100..1000000")
    console = Console(width=max(132, Console().width))
    try:
        cyclegen.ensure_built()
        cyclegen.ensure_built(FLOOR_SOURCE)
    except cyclegen.BuildError as exc:
        console.print(f"[red]error:[/red] cannot build the C programs: {exc}")
        return 1
    os.sched_setaffinity(0, {args.load_cpu})  # cyclegen inherits the load core
    p50: dict[str, list[float]] = {n: [] for n in names}
    p99: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="resist-pingpong-") as tmp:
        for run in range(args.runs):
            for name in names:
                with console.status(f"run {run + 1}/{args.runs}: {name} …"):
                    try:
                        a, b = measure(
                            known[name], args.rounds, args.proxy_cpu, Path(tmp) / f"{name}-{run}"
                        )
                    except (BenchError, peers.StartError) as exc:
                        console.print(f"[red]error:[/red] {name}: {exc}")
                        return 1
                p50[name].append(a)
                p99[name].append(b)
    table = Table(
        title=f"ping-pong, 32 B, {args.rounds:,} round trips a run, {args.runs} alternating runs"
    )
    table.add_column("server")
    table.add_column("p50 µs, each run")
    table.add_column("median p50 µs", justify="right")
    table.add_column(f"median of runs' p50 / {REFERENCE}", justify="right")
    table.add_column("median p99 µs", justify="right")
    for name in names:
        ratio = "—"
        if REFERENCE in p50 and name != REFERENCE:
            ratios = [x / ref for x, ref in zip(p50[name], p50[REFERENCE], strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
        table.add_row(
            name,
            " ".join(f"{x:.0f}" for x in p50[name]),
            f"{statistics.median(p50[name]):.0f}",
            ratio,
            f"{statistics.median(p99[name]):.0f}",
        )
    console.print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"rounds": args.rounds, "p50_us": p50, "p99_us": p99}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
