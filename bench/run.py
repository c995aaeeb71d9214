"""Benchmark `resist node` against peer SOCKS5 proxies, side by side, in one run.

Usage (from the project root)::

    bash bench/setup.sh                    # once: microsocks, dante, pproxy, asyncio-socks-server
    .venv/bin/python bench/run.py --quick --servers resist,microsocks,pproxy

Why this shape: each server is started alone on the proxy core (``taskset -c 0``) while the
load generator (this process) and a fresh sink process share the other core, and the same
measurements run against each server and against a direct connection to the sink. Ratios to
the direct run make numbers from different machines comparable. Raw numbers go to a JSON
file; a table with ratios goes to the terminal.

Connection cycles and ping-pong are driven by ``bench/cyclegen.c`` (built on first use into
``bench/.build/``), a C client with its own echo server, because the Python client and sink
ran out of load core before the fast proxies did; ``--python-load`` brings back the Python
ones (``bench/loadgen.py`` against ``bench/sink.py``), and they are used anyway when gcc is
missing. Bulk transfers and held connections always use the Python side.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

import cyclegen
import loadgen
import peers
import procstat
from loadgen import Direction, Proxy, Route

BENCH_DIR = Path(__file__).resolve().parent
MIB = 1 << 20
GIB = 1 << 30
DIRECT = "direct"
T = TypeVar("T")

console = Console(width=max(160, Console().width))


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    quick: bool
    servers: list[str]
    bulk_bytes: int
    streams: int
    cycles: int
    cycle_concurrency: int
    idle: int
    concurrent: int
    rounds: int
    repeat: int
    proxy_cpu: int
    load_cpu: int
    python_load: bool
    """Cycles and ping-pong with the Python generator and sink instead of cyclegen (C)."""
    host: str = "127.0.0.1"

    @property
    def load_generator(self) -> str:
        return "loadgen.py + sink.py" if self.python_load else cyclegen.NAME


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 256M or 2G)")
    unit = (match.group(2) or "")[:1].upper()
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": MIB, "G": GIB}[unit]


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a fast check")
    parser.add_argument(
        "--servers",
        default=",".join(peers.PEERS),
        help=f"comma-separated subset of: {', '.join(peers.PEERS)} (default: all)",
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/…)")
    parser.add_argument("--bulk-bytes", type=_size, help="bytes per bulk transfer (2G; quick 256M)")
    parser.add_argument("--streams", type=int, default=8, help="parallel bulk streams (8)")
    parser.add_argument(
        "--cycles",
        type=int,
        help="connection cycles (50000, quick 10000; with --python-load 20000, quick 3000)",
    )
    parser.add_argument("--cycle-concurrency", type=int, default=64)
    parser.add_argument("--idle", type=int, help="idle connections held (5000; quick 1000)")
    parser.add_argument(
        "--concurrent", type=int, help="connections held at once, 0 to skip (10000; quick 2000)"
    )
    parser.add_argument("--rounds", type=int, default=10_000, help="ping-pong round trips")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of bulk/latency/cycles; best is kept (1)"
    )
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="cycles and ping-pong with the Python generator (loadgen.py + sink.py) instead "
        "of the C one (bench/cyclegen.c); it saturates the load core near 6,000 cycles/s",
    )
    args = parser.parse_args(argv)

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in peers.PEERS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(peers.PEERS)}")
    quick = args.quick
    python_load = args.python_load
    if not python_load:
        try:
            cyclegen.ensure_built()
        except cyclegen.BuildError as exc:
            console.print(
                f"[yellow]note: C load generator unavailable ({exc}); cycles and ping-pong "
                "fall back to the Python generator, which saturates the load core first[/]"
            )
            python_load = True
    if args.cycles is not None:
        cycles = args.cycles
    elif python_load:
        cycles = 3_000 if quick else 20_000
    else:
        cycles = 10_000 if quick else 50_000
    settings = Settings(
        quick=quick,
        servers=servers,
        bulk_bytes=args.bulk_bytes or (256 * MIB if quick else 2 * GIB),
        streams=args.streams,
        cycles=cycles,
        cycle_concurrency=args.cycle_concurrency,
        idle=args.idle if args.idle is not None else (1_000 if quick else 5_000),
        concurrent=args.concurrent if args.concurrent is not None else (2_000 if quick else 10_000),
        rounds=args.rounds,
        repeat=args.repeat,
        proxy_cpu=args.proxy_cpu,
        load_cpu=args.load_cpu,
        python_load=python_load,
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = args.output or BENCH_DIR / "results" / f"{stamp}-{'quick' if quick else 'full'}.json"
    return settings, output


# --- machine --------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "uvloop": _module_version("uvloop"),
        "loadavg_at_start": os.getloadavg(),
    }


def _module_version(name: str) -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version(name)
    except Exception:
        return "not installed"


def prepare_process(settings: Settings, fds_needed: int) -> None:
    """Pin the load generator to its core and raise the descriptor limit for children too."""
    os.sched_setaffinity(0, {settings.load_cpu})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, fds_needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        console.print(f"[yellow]RLIMIT_NOFILE capped at {hard}; large runs may fail[/]")


# --- measurements ---------------------------------------------------------------------------


class TargetBench:
    """Every measurement against one target (a server, or direct), in a fixed order.

    A failing measurement is recorded in ``result["errors"]`` and the next one runs.
    Around each one the bench records how busy both cores were and how much of that was
    other people's work (``foreign``): on a shared machine that says which numbers to trust.
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        routes: tuple[Route, Route],
        server_pid: int | None,
        sink_pid: int,
    ) -> None:
        self.name = name
        self.settings = settings
        self.bulk_route, self.echo_route = routes
        self.proxy = self.echo_route.proxy
        self.server_pid = server_pid
        self.sink_pid = sink_pid
        self.result: dict[str, Any] = {"bulk": {}, "errors": {}, "cores": {}}

    def say(self, text: str) -> None:
        console.print(f"  {self.name}: {text}")

    def proxy_cpu(self) -> float | None:
        return None if self.server_pid is None else procstat.cpu_seconds(self.server_pid)

    def load_cpu(self) -> float:
        # Reaped children: cyclegen, which runs (and is reaped) inside one measurement.
        # Servers are children too, but are reaped only after the last measurement.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (
            time.process_time()
            + children.ru_utime
            + children.ru_stime
            + procstat.cpu_seconds(self.sink_pid)
        )

    def attempt(self, key: str, label: str, fn: Callable[[], T]) -> T | None:
        """Run one measurement; record how the cores were used, or the error."""
        self.say(f"[dim]{label} …[/]")
        ticks0, wall0 = procstat.core_ticks(), time.monotonic()
        proxy0, load0 = self.proxy_cpu(), self.load_cpu()
        try:
            value = fn()
        except Exception as exc:
            self.result["errors"][key] = f"{exc.__class__.__name__}: {exc}"
            self.say(f"[red]{label} failed: {exc!r}[/]")
            return None
        ticks1, wall = procstat.core_ticks(), max(time.monotonic() - wall0, 1e-9)
        proxy1, load1 = self.proxy_cpu(), self.load_cpu()
        cores = {}
        for role, cpu, ours in (
            (
                "proxy",
                self.settings.proxy_cpu,
                None if proxy0 is None or proxy1 is None else proxy1 - proxy0,
            ),
            ("load", self.settings.load_cpu, load1 - load0),
        ):
            use = procstat.core_use(ticks0, ticks1, cpu)
            cores[role] = {
                "busy": use.busy,
                "ours": None if ours is None else ours / wall,
                "foreign": max(0.0, use.tasks - (ours or 0.0) / wall),
            }
        self.result["cores"][key] = cores
        self.say(
            f"[dim]cores busy {_pct(cores['proxy']['busy'])}/{_pct(cores['load']['busy'])}, "
            f"others' share {_pct(cores['proxy']['foreign'])}/{_pct(cores['load']['foreign'])}"
            " (proxy/load)[/]"
        )
        return value

    def best_of(
        self, key: str, label: str, fn: Callable[[], T], better: Callable[[T, T], bool]
    ) -> list[T]:
        """Repeat a measurement; return all runs, best first (noise only ever slows down)."""
        runs: list[T] = []
        for i in range(self.settings.repeat):
            suffix = f" (run {i + 1}/{self.settings.repeat})" if self.settings.repeat > 1 else ""
            value = self.attempt(key, label + suffix, fn)
            if value is not None:
                runs.append(value)
        for i in range(1, len(runs)):
            if better(runs[i], runs[0]):
                runs[0], runs[i] = runs[i], runs[0]
        return runs

    def run(self) -> dict[str, Any]:
        if self.server_pid is not None:
            # First, while the server's heap is fresh: later tests grow heaps that would
            # then absorb the idle connections and hide their cost.
            self.hold("idle", self.settings.idle)
        for streams in (1, self.settings.streams):
            for direction in (Direction.UPLOAD, Direction.DOWNLOAD):
                self.bulk(direction, streams)
        self.latency()
        self.cycles()
        if self.server_pid is not None and self.settings.concurrent:
            self.hold("concurrent", self.settings.concurrent)
        cores = self.result["cores"].values()
        self.result["foreign_max"] = {
            role: max((c[role]["foreign"] for c in cores), default=None)
            for role in ("proxy", "load")
        }
        return self.result

    def bulk(self, direction: Direction, streams: int) -> None:
        key = f"{direction}-{streams}"
        total = self.settings.bulk_bytes
        cpu_clock = None if self.server_pid is None else self.proxy_cpu_strict
        runs = self.best_of(
            key,
            f"{direction} {total / MIB:.0f} MiB over {streams} stream(s)",
            lambda: loadgen.run_bulk(
                self.bulk_route,
                direction,
                total,
                streams,
                cpu_clock,
                max_seconds=max(120.0, total / 20e6),
            ),
            better=lambda a, b: a.gb_per_s > b.gb_per_s,
        )
        if not runs:
            return
        best = runs[0]
        self.result["bulk"][key] = dataclasses.asdict(best) | {
            "gb_per_s": best.gb_per_s,
            "cpu_s_per_gb": best.cpu_s_per_gb,
            "all_gb_per_s": [r.gb_per_s for r in runs],
        }
        cpu = "" if best.cpu_s_per_gb is None else f", {best.cpu_s_per_gb:.2f} proxy CPU s/GB"
        self.say(f"{key}: {best.gb_per_s:.2f} GB/s{cpu}")

    def proxy_cpu_strict(self) -> float:
        assert self.server_pid is not None
        return procstat.cpu_seconds(self.server_pid)

    def latency(self) -> None:
        rounds = self.settings.rounds

        def measure() -> loadgen.LatencyResult:
            if self.settings.python_load:
                return loadgen.run_pingpong(self.echo_route, rounds)
            return cyclegen.run_pingpong(self.proxy, rounds)

        runs = self.best_of(
            "latency",
            f"ping-pong {rounds} x 32 B ({self.settings.load_generator})",
            measure,
            better=lambda a, b: a.p50_us < b.p50_us,
        )
        if runs:
            best = runs[0]
            self.result["latency"] = dataclasses.asdict(best)
            self.say(f"p50 {best.p50_us:.0f} µs, p99 {best.p99_us:.0f} µs")

    def cycles(self) -> None:
        settings = self.settings

        def generate() -> loadgen.CycleResult | cyclegen.CycleResult:
            if settings.python_load:
                return loadgen.run_async(
                    lambda: loadgen.run_cycles(
                        self.echo_route,
                        settings.cycles,
                        settings.cycle_concurrency,
                        max_seconds=300,
                    ),
                    max_seconds=330,
                )
            return cyclegen.run_cycles(
                self.proxy, settings.cycles, settings.cycle_concurrency, max_seconds=300
            )

        def measure() -> tuple[loadgen.CycleResult | cyclegen.CycleResult, float | None, float]:
            cpu0, load0 = self.proxy_cpu(), self.load_cpu()
            result = generate()
            cpu1, load1 = self.proxy_cpu(), self.load_cpu()
            return result, None if cpu0 is None or cpu1 is None else cpu1 - cpu0, load1 - load0

        runs = self.best_of(
            "cycles",
            f"{settings.cycles} cycles, {settings.cycle_concurrency} concurrent "
            f"({settings.load_generator})",
            measure,
            better=lambda a, b: a[0].per_second > b[0].per_second,
        )
        if not runs:
            return
        best, cpu, load = runs[0]
        self.result["cycles"] = dataclasses.asdict(best) | {
            "per_second": best.per_second,
            "cpu_seconds": cpu,
            "cpu_us_per_cycle": None if cpu is None else cpu / max(best.cycles, 1) * 1e6,
            # CPU time of the load generator and sink processes (rusage / /proc stat).
            "load_cpu_us_per_cycle": load / max(best.cycles, 1) * 1e6,
            "all_per_second": [r[0].per_second for r in runs],
        }
        first = f", first: {best.first_error}" if best.first_error else ""
        self.say(f"{best.per_second:,.0f} cycles/s ({best.errors} errors{first})")

    def hold(self, key: str, count: int) -> None:
        """Hold ``count`` connections through the server and read its memory meanwhile."""
        pid = self.server_pid
        assert pid is not None
        before = procstat.memory(pid)
        held = self.attempt(
            key,
            f"hold {count} connections",
            lambda: loadgen.run_async(
                lambda: loadgen.hold_connections(
                    self.echo_route, count, lambda: procstat.memory(pid)
                ),
                max_seconds=120 + count / 50,
            ),
        )
        if held is None:
            return
        after: procstat.Memory = held.measured
        opened = max(held.opened, 1)
        row = dataclasses.asdict(held) | {
            "errors": held.errors,
            "measured": None,
            "before": dataclasses.asdict(before),
            "after": dataclasses.asdict(after),
            "pss_kib_per_conn": (after.pss_kib - before.pss_kib) / opened,
            "rss_kib_per_conn": (after.rss_kib - before.rss_kib) / opened,
        }
        self.result[key] = row
        self.say(
            f"{key}: {held.opened}/{count} open, {held.errors} errors, "
            f"{row['pss_kib_per_conn']:.1f} KiB/conn (PSS; {after.processes} process(es))"
        )


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def run_target(
    name: str, settings: Settings, scratch: Path, peer: peers.Peer | None
) -> dict[str, Any]:
    """Start a fresh sink (and the server), measure, stop both."""
    try:
        sink, bulk_port, echo_port = peers.start_sink(
            settings.load_cpu, scratch / f"sink-{name}.log"
        )
    except peers.StartError as exc:
        return {"status": "skipped", "reason": str(exc)}
    server: peers.Process | None = None
    try:
        info: dict[str, Any] = {"status": "ok"}
        proxy: Proxy | None = None
        if peer is not None:
            port = peers.free_port(settings.host)
            workdir = scratch / name
            workdir.mkdir(exist_ok=True)
            auth = peer.auth
            proxy = Proxy(
                settings.host,
                port,
                peers.USER if auth else None,
                peers.PASSWORD if auth else None,
            )
            try:
                server = peers.Process(
                    peer.argv(port, workdir), settings.proxy_cpu, workdir / "server.log"
                )
                info["command"] = shlex.join(server.argv)
                peers.wait_listening(server, settings.host, port)
                loadgen.echo_once(Route((settings.host, echo_port), proxy))
            except (peers.StartError, OSError, loadgen.BenchError) as exc:
                tail = server.log_tail() if server is not None else ""
                reason = str(exc) if tail in str(exc) else f"{exc} {tail}".strip()
                console.print(f"[yellow]SKIP {name}: {reason}[/]")
                return info | {"status": "skipped", "reason": reason}
            info["pid"] = server.pid
            info["auth"] = "user/pass" if auth else "none"
        console.print(f"[bold]{name}[/]: measuring")

        results = TargetBench(
            name,
            settings,
            routes=(
                Route((settings.host, bulk_port), proxy),
                Route((settings.host, echo_port), proxy),
            ),
            server_pid=server.pid if server else None,
            sink_pid=sink.pid,
        ).run()
        if server is not None and not server.alive():
            results["errors"]["server"] = f"server died: {server.log_tail()}"
        return info | results
    finally:
        if server is not None:
            server.stop()
        sink.stop()


# --- report ---------------------------------------------------------------------------------


def _get(result: dict[str, Any], *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{v:,.{digits}f}"


def _count(v: Any) -> str:
    return str(v)


def _busy_cell(v: Any) -> str:
    return f"{_pct(v['proxy']['busy'])}/{_pct(v['load']['busy'])}"


LOAD_BOUND = 0.9


def _load_bound(result: dict[str, Any], path: tuple[str, ...]) -> bool:
    """True if the load core was nearly saturated during the measurement behind ``path``."""
    key = path[1] if path[0] == "bulk" else path[0]
    busy = _get(result, "cores", key, "load", "busy")
    return busy is not None and busy >= LOAD_BOUND and path[0] in ("bulk", "cycles", "latency")


def _pair_cell(v: Any) -> str:
    return f"{_pct(v['proxy'])}/{_pct(v['load'])}"


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    label: str
    path: tuple[str, ...]
    fmt: Callable[[Any], str]
    ratio: bool = False
    """Show value / direct value beside the value."""


def table_rows(settings: Settings) -> list[Row]:
    s = settings.streams
    rows: list[Row] = []
    for streams in (1, s):
        for d in ("upload", "download"):
            label = f"{d} GB/s, {streams} stream{'s' if streams > 1 else ''}"
            rows.append(Row(label, ("bulk", f"{d}-{streams}", "gb_per_s"), _fixed(2), True))
    for streams in (1, s):
        for d in ("upload", "download"):
            label = f"proxy CPU s/GB, {d} {streams}"
            rows.append(Row(label, ("bulk", f"{d}-{streams}", "cpu_s_per_gb"), _fixed(2)))
    conc = settings.cycle_concurrency
    rows += [
        Row(f"cycles/s, {conc} concurrent", ("cycles", "per_second"), _fixed(0), True),
        Row("cycle errors", ("cycles", "errors"), _count),
        Row("proxy CPU µs per cycle", ("cycles", "cpu_us_per_cycle"), _fixed(0)),
        Row("load side CPU µs per cycle", ("cycles", "load_cpu_us_per_cycle"), _fixed(0)),
        Row("ping-pong p50 µs", ("latency", "p50_us"), _fixed(0)),
        Row("ping-pong p99 µs", ("latency", "p99_us"), _fixed(0)),
        Row(f"KiB per idle conn ({settings.idle}, PSS)", ("idle", "pss_kib_per_conn"), _fixed(1)),
        Row("idle conn errors", ("idle", "errors"), _count),
    ]
    if settings.concurrent:
        label = f"errors at {settings.concurrent} concurrent"
        rows.append(Row(label, ("concurrent", "errors"), _count))
    rows += [
        Row("cores busy proxy/load: upload 1", ("cores", "upload-1"), _busy_cell),
        Row("cores busy proxy/load: download 1", ("cores", "download-1"), _busy_cell),
        Row("cores busy proxy/load: cycles", ("cores", "cycles"), _busy_cell),
        Row("others' share proxy/load core, max", ("foreign_max",), _pair_cell),
    ]
    return rows


def render_table(settings: Settings, results: dict[str, dict[str, Any]]) -> Table:
    mode = "quick" if settings.quick else "full"
    table = Table(
        caption=f"{mode} run; proxy pinned to CPU {settings.proxy_cpu}, load generator and "
        f"sink to CPU {settings.load_cpu}; cycles and ping-pong by {settings.load_generator}; "
        "(N.NNx) = ratio to direct TCP; "
        f"* = load core ≥{LOAD_BOUND:.0%} busy, the load generator may be the limit",
        caption_justify="left",
    )
    table.add_column("metric")
    names = list(results)
    for name in names:
        table.add_column(name, justify="right")
    auth = []
    for name in names:
        r = results[name]
        if r.get("status") != "ok":
            auth.append("[yellow]skipped[/]")
        else:
            auth.append("—" if name == DIRECT else r.get("auth", "?"))
    table.add_row("auth", *auth, end_section=True)
    direct = results.get(DIRECT, {})
    for row in table_rows(settings):
        cells = []
        base = _get(direct, *row.path)
        for name in names:
            r = results[name]
            value = _get(r, *row.path)
            errors = r.get("errors", {})
            if r.get("status") != "ok":
                cells.append("")
            elif value is None:
                failed = any(key in errors for key in row.path[:2])
                cells.append("[red]failed[/]" if failed else "—")
            else:
                text = row.fmt(value)
                if row.ratio and base and name != DIRECT:
                    text += f" ({value / base:.2f}x)"
                if row.ratio and name != DIRECT and _load_bound(r, row.path[:2]):
                    text += "*"
                cells.append(text)
        table.add_row(row.label, *cells)
    return table


def _git_revision() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown (no commit)"


def main(argv: list[str] | None = None) -> int:
    settings, output = parse_args(argv)
    prepare_process(settings, fds_needed=3 * max(settings.idle, settings.concurrent) + 4096)
    facts = machine_facts()
    versions = {name: peers.PEERS[name].version() for name in settings.servers}
    command = shlex.join(sys.orig_argv)
    console.rule("resist benchmark")
    console.print(f"command: {command}")
    for key, value in facts.items():
        console.print(f"{key}: {value}")
    for name, version in versions.items():
        console.print(f"{name}: {version}")
    console.print(f"settings: {dataclasses.asdict(settings)}")
    console.print(f"cycles and ping-pong: {settings.load_generator}")

    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="resist-bench-") as tmp:
        for name in [DIRECT, *settings.servers]:
            console.rule(name)
            peer = None if name == DIRECT else peers.PEERS[name]
            results[name] = run_target(name, settings, Path(tmp), peer)
            if peer is not None:
                results[name]["version"] = versions[name]
                results[name]["note"] = peer.note

    document = {
        "command": command,
        "cwd": os.getcwd(),
        "revision": _git_revision(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "machine": facts,
        "settings": dataclasses.asdict(settings),
        "load_generator": settings.load_generator,
        "results": results,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str) + "\n")

    console.rule("results")
    console.print(render_table(settings, results))
    for name, r in results.items():
        if r.get("status") != "ok":
            console.print(f"[yellow]{name} skipped:[/] {r.get('reason')}")
        for key, message in r.get("errors", {}).items():
            console.print(f"[red]{name} {key}:[/] {message}")
    console.print(f"raw numbers: {output}  ({document['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
