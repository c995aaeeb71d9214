"""Build and run the C load generator (``bench/cyclegen.c``) for cycles and ping-pong.

Why: the Python client plus the Python echo sink saturated the load core before the fastest
proxies did (see the comment at the top of ``cyclegen.c``). The C program is the SOCKS5
client *and* the echo server the proxy CONNECTs to, in one epoll loop: the load side of
these two measurements is one cheap process. It inherits this process's CPU affinity, so it
runs on the load core.

The results have the same fields as :mod:`loadgen`'s (``cycles``, ``errors``, ``seconds``,
``first_error``; ``p50_us``, ``p99_us``, ``max_us``), so the report reads either.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import BenchError, LatencyResult, Proxy

SOURCE = Path(__file__).resolve().with_name("cyclegen.c")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")
NAME = "cyclegen (C)"


class BuildError(Exception):
    """No compiler, or the source did not compile: the caller falls back to Python."""


def binary_path(source: Path = SOURCE) -> Path:
    """Where a bench C program is built: ``bench/.build/<name>``."""
    return source.parent / ".build" / source.stem


def build_command(source: Path = SOURCE) -> list[str]:
    return ["gcc", *CFLAGS, "-o", str(binary_path(source)), str(source)]


def ensure_built(source: Path = SOURCE) -> Path:
    """Compile a bench C program (``cyclegen.c`` by default) into ``bench/.build`` unless an
    up-to-date binary is there; return its path."""
    binary = binary_path(source)
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    if shutil.which("gcc") is None:
        raise BuildError("gcc not found")
    binary.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            build_command(source), capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"gcc failed to run: {exc}") from exc
    if out.returncode != 0:
        raise BuildError(f"gcc exited with {out.returncode}: {out.stderr.strip()[-2000:]}")
    return binary


@dataclass(frozen=True, slots=True)
class CycleResult:
    cycles: int
    errors: int
    seconds: float
    first_error: str | None
    started: int
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    load_cpu_seconds: float | None = None
    """CPU time of the generator process itself (client and echo server)."""
    generator: str = NAME

    @property
    def per_second(self) -> float:
        return self.cycles / self.seconds


def _proxy_args(proxy: Proxy | None) -> list[str]:
    if proxy is None:
        return []
    args = ["--proxy", f"{proxy.host}:{proxy.port}"]
    if proxy.username is not None and proxy.password is not None:
        args += ["--user", proxy.username, "--pass", proxy.password]
    return args


def _run(args: list[str], max_seconds: float) -> dict[str, Any]:
    argv = [str(ensure_built()), *args, "--max-seconds", f"{max_seconds:g}"]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=max_seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"cyclegen did not finish within {max_seconds + 30:.0f} s") from exc
    lines = out.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        detail = out.stderr.strip() or out.stdout.strip() or "no output"
        raise BenchError(f"cyclegen exited with {out.returncode}: {detail}") from exc
    return report


def run_cycles(
    proxy: Proxy | None,
    total: int,
    concurrency: int,
    payload_size: int = 64,
    op_seconds: float = 10.0,
    max_seconds: float = 300.0,
    max_errors: int = 100,
) -> CycleResult:
    """``total`` cycles, ``concurrency`` at a time, through ``proxy`` (or direct, if None)."""
    report = _run(
        [
            "--mode",
            "cycles",
            *_proxy_args(proxy),
            "--count",
            str(total),
            "--concurrency",
            str(concurrency),
            "--payload",
            str(payload_size),
            "--timeout",
            f"{op_seconds:g}",
            "--max-errors",
            str(max_errors),
        ],
        max_seconds,
    )
    if not report.get("ok"):
        raise BenchError(f"no cycle completed: {report.get('first_error')}")
    return CycleResult(
        cycles=report["cycles"],
        errors=report["errors"],
        seconds=report["seconds"],
        first_error=report["first_error"],
        started=report["started"],
        errors_by_kind=report["errors_by_kind"],
        load_cpu_seconds=report["cpu_seconds"],
    )


def run_pingpong(
    proxy: Proxy | None,
    rounds: int,
    size: int = 32,
    warmup: int = 200,
    max_seconds: float = 60.0,
) -> LatencyResult:
    """``rounds`` round trips of ``size`` bytes on one connection, each timed on its own."""
    report = _run(
        [
            "--mode",
            "pingpong",
            *_proxy_args(proxy),
            "--rounds",
            str(rounds),
            "--size",
            str(size),
            "--warmup",
            str(warmup),
        ],
        max_seconds,
    )
    if not report.get("ok"):
        raise BenchError(f"ping-pong failed: {report.get('first_error')}")
    return LatencyResult(
        rounds=report["rounds"],
        p50_us=report["p50_us"],
        p99_us=report["p99_us"],
        max_us=report["max_us"],
    )
