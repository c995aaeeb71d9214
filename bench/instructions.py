"""User-space instructions a proxy spends per connection cycle and per ping-pong round trip.

Why instructions: on a shared VM, times move by ±15% from run to run, more than most single
optimizations change them. valgrind's callgrind counts the instructions a process executes in
user space, which repeat to within 0.1% whatever the neighbours do; it does not see the kernel
(system calls, TCP), which `bench/run.py` measures in time. Use this to decide whether a
change to the node's Python made its hot paths cheaper, then `bench/run.py` for the ratios.

How: the proxy runs under ``valgrind --tool=callgrind --instr-atstart=no`` (so start-up is not
counted), is warmed up with a few hundred cycles, then instrumentation is switched on with
``callgrind_control -i on`` for exactly the measured load, switched off, and the counters
dumped. The load is bench/cyclegen.c, as in run.py (64 concurrent cycles of greeting, auth,
CONNECT, 64-byte echo and close; or 32-byte round trips on one connection).

    .venv/bin/python bench/instructions.py                  # resist and microsocks
    .venv/bin/python bench/instructions.py --servers resist --cycles 5000
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import cyclegen
import peers
from loadgen import Proxy

SERVERS = ("resist", "microsocks")


def _argv(name: str, port: int, scratch: Path) -> list[str]:
    argv = peers.PEERS[name].argv(port, scratch)
    if name.startswith("resist"):
        # The interpreter itself, not the console script's wrapper, is what valgrind follows.
        argv = [sys.executable, "-c", "from resistance.cli import main; main()", *argv[1:]]
    return argv


def _total(out_dir: Path) -> int:
    total = 0
    for path in glob.glob(str(out_dir / "callgrind.out*")):
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
    return total


def measure(name: str, cycles: int, rounds: int, scratch: Path) -> tuple[float, float]:
    """Instructions per cycle and per round trip for one server."""
    results: list[float] = []
    for mode, count in (("cycles", cycles), ("pingpong", rounds)):
        out_dir = scratch / f"{name}-{mode}"
        out_dir.mkdir(parents=True)
        port = peers.free_port()
        process = peers.Process(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out_dir}/callgrind.out.%p",
                *_argv(name, port, out_dir),
            ],
            0,
            out_dir / "log",
        )
        try:
            peers.wait_listening(process, "127.0.0.1", port, timeout=120)
            proxy = Proxy("127.0.0.1", port, peers.USER, peers.PASSWORD)
            cyclegen.run_cycles(proxy, 300, 64, max_seconds=300)  # warm-up, not counted
            pid = str(process.pid)
            control = ["callgrind_control", "-i"]
            subprocess.run([*control, "on", pid], check=True, capture_output=True, timeout=60)
            if mode == "cycles":
                done = cyclegen.run_cycles(proxy, count, 64, max_seconds=900).cycles
            else:
                done = cyclegen.run_pingpong(proxy, count, warmup=0, max_seconds=900).rounds
            subprocess.run([*control, "off", pid], check=True, capture_output=True, timeout=60)
            subprocess.run(
                ["callgrind_control", "-d", pid], check=True, capture_output=True, timeout=60
            )
            time.sleep(0.5)
        finally:
            process.stop()
        results.append(_total(out_dir) / done)
    return results[0], results[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated ({', '.join(peers.PEERS)})"
    )
    parser.add_argument("--cycles", type=int, default=3000, help="connection cycles (3000)")
    parser.add_argument("--rounds", type=int, default=3000, help="ping-pong round trips (3000)")
    args = parser.parse_args()
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [n for n in names if n not in peers.PEERS]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r}")
    for tool in ("valgrind", "callgrind_control"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            parser.error(f"{tool} not found: apt-get install valgrind (bench/setup.sh does)")
    cyclegen.ensure_built()
    os.sched_setaffinity(0, {1})  # the load generator on the load core, as in run.py
    console = Console()
    table = Table(title="user-space instructions (callgrind)")
    table.add_column("server")
    table.add_column("per connection cycle", justify="right")
    table.add_column("per ping-pong round trip", justify="right")
    with tempfile.TemporaryDirectory(prefix="resist-instructions-") as tmp:
        for name in names:
            with console.status(f"{name} under callgrind …"):
                per_cycle, per_round = measure(name, args.cycles, args.rounds, Path(tmp))
            table.add_row(name, f"{per_cycle:,.0f}", f"{per_round:,.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
