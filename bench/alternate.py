"""Ping-pong latency and connection cycles, each server in turn, run after run.

Usage (from the project root, after ``bash bench/setup.sh``)::

    .venv/bin/python bench/alternate.py                       # 8 runs of both
    .venv/bin/python bench/alternate.py --measure pingpong --runs 16
    .venv/bin/python bench/alternate.py --servers microsocks,resist --measure cycles

Why alternating runs: on this shared VM a figure moves by 20-40 % from one minute to the
next (ping-pong p50 between ~27 and ~47 µs, microsocks between ~6,500 and ~8,700 cycles/s),
more than the gaps between the proxies. ``bench/run.py`` measures one server after another,
so a near tie there is decided by when each server ran. Here every run starts each server
in turn (a fresh process, pinned to the proxy core) and measures it with
``bench/cyclegen.c`` on the load core; each run's ratio to microsocks is taken within the
run, and the table shows the medians.

The floor relays: ``bench/floorrelay.c`` is a relay in C with nothing but the wake-up path
and the system calls the node makes per message (epoll, then splice in and out of a pipe),
in two shapes: ``floor-flat`` (its sockets in the epoll the process sleeps in) and
``floor-nested`` (in an epoll nested in that one, as the node's are in the event loop's).
They show how close to microsocks any event-loop relay can come here. ``resist-python``
is the node without its C extension (``RESIST_NO_EXTENSIONS=1``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import cyclegen
import peers
import procstat
from loadgen import BenchError, Proxy

FLOOR_SOURCE = Path(__file__).resolve().with_name("floorrelay.c")
REFERENCE = "microsocks"
DEFAULT_SERVERS = ("microsocks", "floor-flat", "floor-nested", "resist", "resist-python")
MEASURES = ("pingpong", "cycles")
CONCURRENCY = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    name: str
    argv: Callable[[int, Path], list[str]]
    auth: bool = True


def _floor(shape: str) -> Callable[[int, Path], list[str]]:
    def argv(port: int, _: Path) -> list[str]:
        binary = cyclegen.binary_path(FLOOR_SOURCE)  # built by main()
        return [str(binary), "--port", str(port), "--shape", shape, "--user", peers.USER,
                "--pass", peers.PASSWORD]  # fmt: skip

    return argv


def servers() -> dict[str, Server]:
    known = {name: Server(name, peer.argv, peer.auth) for name, peer in peers.PEERS.items()}
    for shape in ("flat", "nested"):
        known[f"floor-{shape}"] = Server(f"floor-{shape}", _floor(shape))
    resist = peers.PEERS["resist"].argv
    known["resist-python"] = Server(
        "resist-python",
        lambda port, scratch: ["env", "RESIST_NO_EXTENSIONS=1", *resist(port, scratch)],
    )
    return known


@dataclasses.dataclass(frozen=True, slots=True)
class Figures:
    p50_us: float | None = None
    p99_us: float | None = None
    cycles_per_s: float | None = None
    cpu_us_per_cycle: float | None = None


def measure(
    server: Server, measures: list[str], rounds: int, cycles: int, cpu: int, scratch: Path
) -> Figures:
    """One fresh process of ``server``, measured in each of ``measures``."""
    scratch.mkdir(parents=True, exist_ok=True)
    port = peers.free_port()
    process = peers.Process(server.argv(port, scratch), cpu, scratch / "log")
    figures: dict[str, float] = {}
    try:
        peers.wait_listening(process, "127.0.0.1", port, timeout=30)
        auth = (peers.USER, peers.PASSWORD) if server.auth else (None, None)
        proxy = Proxy("127.0.0.1", port, *auth)
        if "pingpong" in measures:
            result = cyclegen.run_pingpong(proxy, rounds, warmup=500)
            figures |= {"p50_us": result.p50_us, "p99_us": result.p99_us}
        if "cycles" in measures:
            cyclegen.run_cycles(proxy, 500, CONCURRENCY)  # warm-up
            before = procstat.cpu_seconds(process.pid)
            done = cyclegen.run_cycles(proxy, cycles, CONCURRENCY)
            spent = procstat.cpu_seconds(process.pid) - before
            if done.errors:
                raise BenchError(f"{done.errors} cycle errors: {done.first_error}")
            figures |= {
                "cycles_per_s": done.per_second,
                "cpu_us_per_cycle": 1e6 * spent / done.cycles,
            }
    finally:
        process.stop()
    return Figures(**figures)


def _median_ratio(values: list[float], reference: list[float]) -> str:
    ratios = [v / r for v, r in zip(values, reference, strict=True)]
    return f"{statistics.median(ratios):.2f}x"


def _table(
    title: str,
    runs: dict[str, list[Figures]],
    field: str,
    label: str,
    fmt: str,
    extra: tuple[str, str],
) -> Table:
    """Each run's ``field``, its median, the median of the runs' ratios to the reference,
    and the median of ``extra``."""
    table = Table(title=title)
    table.add_column("server")
    for column in (f"{label}, each run", f"median {label}"):
        table.add_column(column, justify="right")
    table.add_column(f"median of runs' {label} / {REFERENCE}", justify="right")
    table.add_column(f"median {extra[1]}", justify="right")
    reference = runs.get(REFERENCE)
    for name, figures in runs.items():
        values = [getattr(f, field) or 0.0 for f in figures]
        ratio = "—"
        if reference and name != REFERENCE:
            ratio = _median_ratio(values, [getattr(f, field) or 0.0 for f in reference])
        table.add_row(
            name,
            " ".join(fmt.format(x) for x in values),
            fmt.format(statistics.median(values)),
            ratio,
            f"{statistics.median(getattr(f, extra[0]) or 0.0 for f in figures):.0f}",
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = servers()
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, in run order ({', '.join(known)})",
    )
    parser.add_argument("--measure", default=",".join(MEASURES), help="pingpong, cycles or both")
    parser.add_argument("--runs", type=int, default=8, help="alternating runs (8)")
    parser.add_argument("--rounds", type=int, default=10_000, help="ping-pong round trips a run")
    parser.add_argument("--cycles", type=int, default=20_000, help="connection cycles a run")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--output", type=Path, help="write every run's figures as JSON here")
    args = parser.parse_args()
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    measures = [m.strip() for m in args.measure.split(",") if m.strip()]
    if unknown := [n for n in names if n not in known]:
        parser.error(f"unknown server {unknown[0]!r}")
    if not measures or any(m not in MEASURES for m in measures):
        parser.error(f"--measure takes {' and '.join(MEASURES)}")
    if not 1 <= args.runs <= 100 or not 100 <= args.rounds <= 10**6:
        parser.error("--runs must be 1..100 and --rounds 100..1000000")
    if not 1000 <= args.cycles <= 10**6:
        parser.error("--cycles must be 1000..1000000")
    console = Console(width=max(132, Console().width))
    try:
        cyclegen.ensure_built()
        cyclegen.ensure_built(FLOOR_SOURCE)
    except cyclegen.BuildError as exc:
        console.print(f"[red]error:[/red] cannot build the C programs: {exc}")
        return 1
    os.sched_setaffinity(0, {args.load_cpu})  # cyclegen inherits the load core
    runs: dict[str, list[Figures]] = {n: [] for n in names}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="resist-alternate-") as tmp:
        for run in range(args.runs):
            for name in names:
                with console.status(f"run {run + 1}/{args.runs}: {name} …"):
                    try:
                        figures = measure(
                            known[name],
                            measures,
                            args.rounds,
                            args.cycles,
                            args.proxy_cpu,
                            Path(tmp) / f"{name}-{run}",
                        )
                    except (BenchError, peers.StartError) as exc:
                        console.print(f"[red]error:[/red] {name}: {exc}")
                        return 1
                runs[name].append(figures)
    if "pingpong" in measures:
        title = f"ping-pong, 32 B, {args.rounds:,} round trips a run, {args.runs} alternating runs"
        console.print(_table(title, runs, "p50_us", "p50 µs", "{:.0f}", ("p99_us", "p99 µs")))
    if "cycles" in measures:
        title = (
            f"connection cycles, {CONCURRENCY} concurrent, {args.cycles:,} a run, "
            f"{args.runs} alternating runs"
        )
        extra = ("cpu_us_per_cycle", "proxy CPU µs per cycle")
        console.print(_table(title, runs, "cycles_per_s", "cycles/s", "{:,.0f}", extra))
    console.print(
        f"proxy on CPU {args.proxy_cpu}, cyclegen on CPU {args.load_cpu}; "
        f"{time.monotonic() - started:.0f} s"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        raw = {n: [dataclasses.asdict(f) for f in v] for n, v in runs.items()}
        args.output.write_text(json.dumps({"args": vars(args), "runs": raw}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
