"""How fast `resist` starts: imports of its help, and exec to the first accepted connection.

Usage (from the project root)::

    .venv/bin/python bench/startup.py                 # 15 runs of each, medians
    .venv/bin/python bench/startup.py --runs 31 --servers resist,microsocks

Why: every command used to import every other's libraries (bdkpython, httpx,
SQLAlchemy) just to print its help, and a node that restarts under a supervisor
is a node that does not serve meanwhile (issue 16: `resist --help` and `resist
node --help` under 0.15 s of imports, `resist node` accepting under 0.3 s).

Two tables:

* **Help**: ``resist --help`` and ``resist node --help`` run as the installed
  console script, beside ``python -c pass`` (the interpreter alone).  "imports"
  is the sum of the top-level entries of ``python -X importtime`` (everything
  the process imported, the interpreter's own start-up modules included);
  "wall" is exec to exit without ``-X importtime``.
* **Start**: exec to the first TCP connection accepted on 127.0.0.1, for
  ``resist node`` (its state directory made by a first, unmeasured start, as on
  any restart) and the peers of ``bench/peers.py`` that are installed
  (microsocks, Dante, pproxy, asyncio-socks-server), plus a bare asyncio
  listener (the floor for any Python server on this interpreter).  The
  connection is polled every millisecond; each server is stopped (its whole
  process tree) before the next starts.  Runs go round the servers in turn, so
  a busy minute on this shared machine hits all of them alike.  For
  ``resist node`` the start's imports are also summed (``-X importtime`` up to
  the accepted connection).

Every command runs once unmeasured first, with ``PYTHONDONTWRITEBYTECODE``
removed from its environment, so Python's bytecode caches exist as on an
installed system (without them every run compiles the package again: ~40 ms).
Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import peers
import procstat

VENV_BIN = Path(sys.executable).parent
RESIST = str(VENV_BIN / "resist")
PYTHON = sys.executable
POLL = 0.001
START_TIMEOUT = 20.0

ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
"""Bytecode caches written and used, as on an installed system."""

ASYNCIO_FLOOR = """
import asyncio, sys
async def main():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


def _import_total(stderr: str) -> float:
    """Seconds of imports: the top-level (unindented) cumulative times of -X importtime."""
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|", 2)
        if cumulative.strip().isdigit() and not name[1:].startswith(" "):
            total_us += int(cumulative)
    return total_us / 1e6


def _traced(argv: list[str]) -> list[str]:
    """``argv`` under ``python -X importtime`` (through an ``env VAR=...`` prefix)."""
    if argv[0] == "env":
        assignments = [a for a in argv[1:] if "=" in a and not a.startswith("/")]
        return ["env", *assignments, *_traced(argv[1 + len(assignments) :])]
    if argv[0] == PYTHON:
        return [PYTHON, "-X", "importtime", *argv[1:]]
    return [PYTHON, "-X", "importtime", *argv]  # a console script: run by this Python


def _from(src: str | None, argv: list[str]) -> list[str]:
    """``argv`` importing the package from ``src`` (another checkout's src/), if given."""
    return argv if src is None else ["env", f"PYTHONPATH={src}", *argv]


def _help_commands(before: str | None) -> dict[str, list[str]]:
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "resist --help": [PYTHON, RESIST, "--help"],
        "resist node --help": [PYTHON, RESIST, "node", "--help"],
    }
    if before is not None:
        commands["resist --help (before)"] = _from(before, commands["resist --help"])
        commands["resist node --help (before)"] = _from(before, commands["resist node --help"])
    return commands


def measure_help(runs: int, before: str | None) -> list[tuple[str, float, float, float, float]]:
    """(what, median and min import seconds, median and min wall seconds), each
    command in turn, ``runs`` times."""
    commands = _help_commands(before)
    imports: dict[str, list[float]] = {name: [] for name in commands}
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # writes the bytecode caches
        subprocess.run(argv, capture_output=True, timeout=60, check=True, env=ENV)
    for _ in range(runs):
        for name, argv in commands.items():
            traced = subprocess.run(
                _traced(argv), capture_output=True, text=True, timeout=60, check=True, env=ENV
            )
            imports[name].append(_import_total(traced.stderr))
            started = time.perf_counter()
            subprocess.run(argv, capture_output=True, timeout=60, check=True, env=ENV)
            walls[name].append(time.perf_counter() - started)
    return [
        (
            name,
            statistics.median(imports[name]),
            min(imports[name]),
            statistics.median(walls[name]),
            min(walls[name]),
        )
        for name in commands
    ]


def start_to_accept(argv: list[str], port: int, log_path: Path) -> tuple[float, str]:
    """Seconds from exec to the first accepted connection, and the server's output."""
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=ENV
        )
        try:
            deadline = started + START_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None:
                        tail = log_path.read_text(errors="replace")[-400:]
                        raise peers.StartError(
                            f"{argv[0]} exited with {process.returncode}: {tail}"
                        ) from None
                    if time.perf_counter() > deadline:
                        raise peers.StartError(f"{argv[0]} did not listen") from None
                    time.sleep(POLL)
            elapsed = time.perf_counter() - started
        finally:
            _stop_tree(process)
    return elapsed, log_path.read_text(errors="replace")


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process and what it started (Dante forks), then SIGKILL what is left."""
    tree = procstat.process_tree(process.pid) if process.poll() is None else []
    for pid in tree:
        _signal(pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass
    for pid in tree:
        _signal(pid, signal.SIGKILL)  # gone already, unless it ignored SIGTERM
    if process.poll() is None:
        process.wait(10)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


ArgvFor = Callable[[int, Path], list[str]]


def _servers(names: list[str], before: str | None) -> dict[str, ArgvFor]:
    resist = peers.PEERS["resist"].argv
    table: dict[str, ArgvFor] = {"resist node": resist}
    if before is not None:
        table["resist node (before)"] = lambda port, scratch: _from(before, resist(port, scratch))
    table["asyncio listener (floor)"] = lambda port, _: [PYTHON, "-c", ASYNCIO_FLOOR, str(port)]
    for name in ("microsocks", "dante", "pproxy", "asyncio-socks-server"):
        table[name] = peers.PEERS[name].argv
    chosen = {}
    for name, argv_for in table.items():
        if names and name.split()[0] not in names and name not in names:
            continue
        program = argv_for(0, Path(tempfile.gettempdir()))[0]
        if shutil.which(program) is None and not Path(program).exists():
            print(f"skipped {name}: {program} is not installed", file=sys.stderr)
            continue
        if name == "pproxy" and importlib.util.find_spec("pproxy") is None:
            print("skipped pproxy: not installed in this venv", file=sys.stderr)
            continue
        chosen[name] = argv_for
    return chosen


StartRow = tuple[str, float, float, float | None]
"""Server, median and min seconds from exec to accept, median seconds of imports."""


def measure_start(runs: int, names: list[str], before: str | None) -> list[StartRow]:
    servers = _servers(names, before)
    times: dict[str, list[float]] = {name: [] for name in servers}
    imports: dict[str, list[float]] = {name: [] for name in servers if name.startswith("resist")}
    with tempfile.TemporaryDirectory(prefix="resist-startup-") as scratch_dir:
        scratch = Path(scratch_dir)
        for name in servers:
            (scratch / name.replace(" ", "_")).mkdir()
        for name, argv_for in servers.items():  # state directory, bytecode caches
            port = peers.free_port()
            argv = argv_for(port, scratch / name.replace(" ", "_"))
            start_to_accept(argv, port, scratch / "first.log")
        for _ in range(runs):
            for name, argv_for in servers.items():
                port = peers.free_port()
                argv = argv_for(port, scratch / name.replace(" ", "_"))
                seconds, _ = start_to_accept(argv, port, scratch / "server.log")
                times[name].append(seconds)
            for name in imports:  # separately: -X importtime slows the start it measures
                port = peers.free_port()
                argv = _traced(servers[name](port, scratch / name.replace(" ", "_")))
                _, output = start_to_accept(argv, port, scratch / "traced.log")
                imports[name].append(_import_total(output))
    return [
        (
            name,
            statistics.median(t),
            min(t),
            statistics.median(imports[name]) if name in imports else None,
        )
        for name, t in times.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each (median) [15]")
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated: resist,asyncio,microsocks,dante,pproxy,asyncio-socks-server "
        "[all installed]",
    )
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also run resist from another checkout's src/ (PYTHONPATH), e.g. the commit "
        "before a change: git archive COMMIT src | tar -x -C /tmp/before",
    )
    args = parser.parse_args()
    names = [n for n in args.servers.split(",") if n]
    python = sys.version.split()[0]
    print(f"# bench/startup.py --runs {args.runs}; {os.cpu_count()} CPUs, Python {python}\n")
    help_rows = measure_help(args.runs, args.before)
    base_wall = help_rows[0][3]
    print("| command | imports, median (min) ms | wall, median (min) ms | wall / python -c pass |")
    print("| --- | ---: | ---: | ---: |")
    for name, imports, imports_min, wall, wall_min in help_rows:
        cells = f"{imports * 1000:.0f} ({imports_min * 1000:.0f}) | "
        cells += f"{wall * 1000:.0f} ({wall_min * 1000:.0f}) | {wall / base_wall:.2f}"
        print(f"| `{name}` | {cells} |")
    print()
    start_rows = measure_start(args.runs, names, args.before)
    medians = {name: median for name, median, _, _ in start_rows}
    reference, floor = medians.get("microsocks"), medians.get("asyncio listener (floor)")
    print(
        "| server | exec to accept, median (min) ms | imports, median ms "
        "| / microsocks | / asyncio floor |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, median, fastest, imports in start_rows:
        imported = f"{imports * 1000:.0f}" if imports is not None else ""
        to_reference = f"{median / reference:.1f}" if reference else "-"
        to_floor = f"{median / floor:.2f}" if floor else "-"
        cells = f"{median * 1000:.0f} ({fastest * 1000:.0f}) | {imported} | "
        print(f"| {name} | {cells}{to_reference} | {to_floor} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
