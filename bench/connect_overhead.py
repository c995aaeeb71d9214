"""What `resist connect` costs, and how fast it gets around a block.

Runs on loopback: a sink, two `resist node` processes and one `resist connect`
pointed at both.  Measures, through the node alone and through client + node:

* bulk download throughput of one stream (``--bulk``, default 512 MiB);
* connect latency: time from TCP connect to the SOCKS5 reply, then a 64-byte
  echo (median and p99 of ``--connects`` sequential connections);

and the failover time of the client: the node in use is *blocked* (SIGSTOP:
its port still completes TCP handshakes but nothing answers, like a censor
that drops the traffic after the SYN) or *killed* (connections refused), and
the time from the block to the first successful new connection is printed.

    .venv/bin/python bench/connect_overhead.py [--bulk 512M] [--connects 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))

import loadgen

ROOT = Path(__file__).resolve().parent.parent
RESIST = [sys.executable, "-m", "resistance"]
LISTENING = re.compile(r"listening on socks5://([0-9.]+):(\d+)")


def start(
    cmd: list[str], pattern: re.Pattern[str], seconds: float = 20
) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := pattern.search(line):
            return proc, m
    proc.kill()
    raise SystemExit(f"{cmd[3]} did not start")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def connect_latencies(route: loadgen.Route, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        sock = loadgen.open_connection(route)
        with sock:
            out.append(time.perf_counter() - t0)
            sock.sendall(b"x" * 64)
            loadgen._recv_exactly(sock, 64)
    return out


def first_success_after(route: loadgen.Route, block: float, limit: float = 30.0) -> float:
    """Seconds from ``block`` until a new connection through ``route`` echoes."""
    while time.monotonic() - block < limit:
        try:
            with loadgen.open_connection(route, timeout=limit) as sock:
                sock.sendall(b"y" * 64)
                loadgen._recv_exactly(sock, 64)
                return time.monotonic() - block
        except (OSError, loadgen.BenchError):
            time.sleep(0.01)
    return float("nan")


def active_node(state: Path, ports: list[int]) -> int:
    """Index of the upstream the client uses now (its status file is rewritten every 2 s)."""
    labels = [f"127.0.0.1:{p}" for p in ports]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        active = json.loads((state / "connect-status.json").read_text()).get("active")
        if active in labels:
            return labels.index(active)
        time.sleep(0.2)
    raise SystemExit("the client never reported an active upstream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bulk", default="512M")
    parser.add_argument("--connects", type=int, default=300)
    args = parser.parse_args()
    size = int(args.bulk[:-1]) << {"K": 10, "M": 20, "G": 30}[args.bulk[-1]]
    console = Console()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sink = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sink.py")], stdout=subprocess.PIPE, text=True
        )
        assert sink.stdout is not None
        ready = sink.stdout.readline()
        bulk_port = int(ready.split("bulk=")[1].split()[0])
        echo_port = int(ready.split("echo=")[1])
        procs = [sink]
        try:
            nodes = []
            for i in range(2):
                proc, m = start(
                    [*RESIST, "node", "--listen", "127.0.0.1:0", "--user", "bench:bench",
                     "--allow", "127.0.0.0/8", "--state-dir", f"{tmp}/node{i}"],
                    LISTENING,
                )  # fmt: skip
                procs.append(proc)
                nodes.append((proc, int(m.group(2))))
            ups = [f"socks5://bench:bench@127.0.0.1:{port}" for _, port in nodes]
            client, m = start(
                [*RESIST, "connect", "--listen", "127.0.0.1:0", "--upstream", ups[0],
                 "--upstream", ups[1], "--state-dir", f"{tmp}/client"],
                LISTENING,
            )  # fmt: skip
            procs.append(client)
            client_port = int(m.group(2))
            via = {
                "node": loadgen.Proxy("127.0.0.1", nodes[0][1], "bench", "bench"),
                "client + node": loadgen.Proxy("127.0.0.1", client_port, None, None),
            }
            for label, proxy in via.items():
                console.print(f"[bold]{label}[/]: bulk and connect latency")
                bulk = loadgen.run_bulk(
                    loadgen.Route(("127.0.0.1", bulk_port), proxy),
                    loadgen.Direction.DOWNLOAD,
                    size,
                    1,
                    None,
                    120,
                )
                lat = sorted(
                    connect_latencies(loadgen.Route(("127.0.0.1", echo_port), proxy), args.connects)
                )
                results[label] = {
                    "GB/s": bulk.bytes / bulk.seconds / 1e9,
                    "connect p50 ms": statistics.median(lat) * 1e3,
                    "connect p99 ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
                }
            route = loadgen.Route(("127.0.0.1", echo_port), via["client + node"])
            ports = [p for _, p in nodes]
            state = Path(f"{tmp}/client")
            echo_through_client = loadgen.Route(("127.0.0.1", echo_port), via["client + node"])
            loadgen.echo_once(echo_through_client)
            time.sleep(2.5)
            index = active_node(state, ports)
            blocked = nodes[index][0]
            console.print(f"blocking the node in use (127.0.0.1:{ports[index]}) with SIGSTOP")
            t0 = time.monotonic()
            blocked.send_signal(signal.SIGSTOP)
            failover_stop = first_success_after(route, t0)
            blocked.send_signal(signal.SIGCONT)
            time.sleep(2.5)  # the status file catches up
            index = active_node(state, ports)
            console.print(f"killing the node in use (127.0.0.1:{ports[index]})")
            t0 = time.monotonic()
            nodes[index][0].kill()
            failover_kill = first_success_after(route, t0)
        finally:
            for proc in procs:
                stop(proc)
    table = Table(
        "path",
        "GB/s, 1 stream",
        "connect p50 ms",
        "connect p99 ms",
        title="resist connect overhead",
    )
    for label, row in results.items():
        table.add_row(
            label,
            f"{row['GB/s']:.2f}",
            f"{row['connect p50 ms']:.2f}",
            f"{row['connect p99 ms']:.2f}",
        )
    node, both = results["node"], results["client + node"]
    table.add_row(
        "ratio",
        f"{both['GB/s'] / node['GB/s']:.2f}x",
        f"{both['connect p50 ms'] / node['connect p50 ms']:.2f}x",
        f"{both['connect p99 ms'] / node['connect p99 ms']:.2f}x",
    )
    console.print(table)
    failover = Table("block", "seconds to the first new connection", title="failover")
    failover.add_row("node stops answering (SIGSTOP)", f"{failover_stop:.2f}")
    failover.add_row("node killed (connection refused)", f"{failover_kill:.3f}")
    console.print(failover)
    console.print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
