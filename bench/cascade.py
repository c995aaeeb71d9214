"""A cascade against one node: bridge + exit versus the exit alone, in the same lab run.

Needs root (network namespaces).  Builds a lab of its own (the user's network,
the censor's router, the free network abroad and the domestic hosting network,
pid-suffixed names, no censor rules).  A sink (bulk and echo) and the exit node
sit abroad, the bridge on domestic hosting; the load generator runs in the
user's network and measures, through the exit alone and through bridge → exit
(the hop over SOCKS5 inside TLS with warm connections and without, then
plain SOCKS5):

* round trip of 32 bytes on an established connection (p50 of ``--rounds``);
* connect: TCP connect to the first proxy until a 64-byte echo came back
  (p50 of ``--connects`` sequential connections; over the TLS hop the
  bridge keeps warm connections to the exit after the first, so a
  connection pays the hop's round trip, not its TLS handshake);
* bulk download of ``--bulk`` bytes on one stream.

``--user-rate 100mbit`` limits the user's link (tbf on both its ends), as a
mobile link limits it; 0 leaves every link at veth speed.  The links have no
delay: this kernel has no netem, so the round trips are the proxies' own
cost, the number a path's round-trip time is then added to.

    sudo .venv/bin/python bench/cascade.py [--bulk 256M] [--user-rate 100mbit]

Target (issue 24): round trip ≤ 1.3x and throughput ≥ 0.8x the single hop's.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import loadgen
from resistance.lab import netns
from resistance.lab import topology as topo

RESIST = [sys.executable, "-m", "resistance"]
EXIT, _, SINK = topo.NODE_ADDRS
BRIDGE = topo.BRIDGE_ADDR
PIN = re.compile(r"TLS certificate sha256 ([0-9a-f]{64})")
LISTENING = re.compile(r"listening on socks5://")


def start(ns: str, args: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [*netns.exec_prefix(ns), *RESIST, *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        listening = any(LISTENING.search(x) for x in lines)
        if listening and ("--tls-listen" not in args or any(PIN.search(x) for x in lines)):
            return proc, lines
    proc.kill()
    raise SystemExit(f"resist {args[0]} did not start in {ns}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def shape(t: topo.Topology, user_rate: str) -> None:
    """tbf on both ends of the user's link (a qdisc shapes what leaves an interface)."""
    if user_rate == "0":
        return
    for ns, dev in ((t.censored, "eth0"), (t.censor, "inside")):
        subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", user_rate,
             "burst", "1mbit", "latency", "50ms"],
            check=True,
        )  # fmt: skip


def connect_p50(route: loadgen.Route, count: int) -> float:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        with loadgen.open_connection(route, timeout=30) as sock:
            sock.sendall(b"x" * 64)
            loadgen._recv_exactly(sock, 64)
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def measure(proxy: loadgen.Proxy, ports: dict[str, int], args: argparse.Namespace) -> dict:
    echo = loadgen.Route((SINK, ports["echo"]), proxy)
    bulk = loadgen.Route((SINK, ports["bulk"]), proxy)
    ping = loadgen.run_pingpong(echo, args.rounds, warmup=20, max_seconds=120)
    connect = connect_p50(echo, args.connects)
    result = loadgen.run_bulk(bulk, loadgen.Direction.DOWNLOAD, args.size, 1, None, 300)
    return {
        "rtt ms": ping.p50_us / 1e3,
        "connect ms": connect,
        "MB/s": result.bytes / result.seconds / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bulk", default="64M")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--user-rate", default="0", help="e.g. 100mbit; 0: unshaped")
    args = parser.parse_args()
    args.size = int(args.bulk[:-1]) << {"K": 10, "M": 20, "G": 30}[args.bulk[-1]]
    if os.geteuid() != 0:
        raise SystemExit("the cascade benchmark builds network namespaces: run it as root")
    console = Console()
    t = topo.Topology(f"bc{os.getpid() % 100000}")
    procs: list[subprocess.Popen[str]] = []
    results: dict[str, dict] = {}
    try:
        for cmd in t.build_commands():
            netns.run(*cmd)
        shape(t, args.user_rate)
        with tempfile.TemporaryDirectory() as tmp:
            sink = subprocess.Popen(
                [*netns.exec_prefix(t.free), sys.executable,
                 str(Path(__file__).with_name("sink.py")), "--host", SINK],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(sink)
            assert sink.stdout is not None
            ready = sink.stdout.readline()
            ports = {
                "bulk": int(ready.split("bulk=")[1].split()[0]),
                "echo": int(ready.split("echo=")[1]),
            }
            exit_, lines = start(t.free, [
                "node", "--listen", f"{EXIT}:1080", "--tls-listen", f"{EXIT}:443",
                "--user", "bench:bench", "--user", "bridge:hop", "--allow", topo.LAB_RANGE,
                "--state-dir", f"{tmp}/exit",
            ])  # fmt: skip
            procs.append(exit_)
            pin = next(m.group(1) for x in lines if (m := PIN.search(x)))
            tls = f"socks5s://bridge:hop@{EXIT}:443#sha256={pin}"
            hops = {  # label: (hop URL, warm TLS connections the bridge keeps)
                "bridge → exit (TLS hop)": (tls, 2),
                "bridge → exit (TLS hop, none warm)": (tls, 0),
                "bridge → exit (plain hop)": (f"socks5://bridge:hop@{EXIT}:1080", 2),
            }
            paths = {"exit alone": loadgen.Proxy(EXIT, 1080, "bench", "bench")}
            for i, (label, (url, warm)) in enumerate(hops.items()):
                port = 1080 + i
                config = Path(tmp) / f"b{i}.toml"
                config.write_text(f"[node]\nupstream_warm = {warm}\n")
                bridge, _ = start(t.domestic, [
                    "node", "--listen", f"{BRIDGE}:{port}", "--user", "bench:bench",
                    "--allow", topo.LAB_RANGE, "--upstream", url, "--state-dir", f"{tmp}/b{i}",
                    "--config", str(config),
                ])  # fmt: skip
                procs.append(bridge)
                paths[label] = loadgen.Proxy(BRIDGE, port, "bench", "bench")
            for label, proxy in paths.items():
                console.print(f"[bold]{label}[/]")
                results[label] = netns.call_in(t.censored, measure, proxy, ports, args, timeout=900)
    finally:
        for proc in procs:
            stop(proc)
        for ns in t.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    table = Table("path", "round trip p50 µs", "connect p50 ms", "MB/s, 1 stream",
                  title="cascade against one node")  # fmt: skip
    base = results["exit alone"]
    for label, row in results.items():
        table.add_row(
            label, f"{row['rtt ms'] * 1e3:.0f}", f"{row['connect ms']:.2f}", f"{row['MB/s']:.1f}"
        )
        if label != "exit alone":
            table.add_row(
                "  ratio",
                f"{row['rtt ms'] / base['rtt ms']:.2f}x",
                f"{row['connect ms'] / base['connect ms']:.2f}x",
                f"{row['MB/s'] / base['MB/s']:.2f}x",
            )
    console.print(table)
    rate = f"the user's link at {args.user_rate}" if args.user_rate != "0" else "unshaped links"
    console.print(f"{rate}; {os.cpu_count()} cores, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
