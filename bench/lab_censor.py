"""Loading a censor's registry into the lab's nftables blocklist, and what it costs a packet.

Makes a throw-away namespace with only loopback and a veth pair into a second
one (root only), installs the lab censor's table there, loads ``--prefixes``
random prefixes (the same mix as bench/blocklist_lookup.py: mostly /32, some
wide prefixes, 2 % IPv6) with ``resist lab block``'s code, and reports parse
and load time.  Then it times TCP connects across the censor to a host that
is not blocked, with the set empty and full, so the cost of the lookup shows
as a ratio (the kernel's interval set is a tree: it should not depend much
on size).

    sudo .venv/bin/python bench/lab_censor.py --prefixes 1000000
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import threading
import time

from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(__file__))
from blocklist_lookup import make_list
from resistance.lab import censor, netns

SERVER, ROUTER_IN, CLIENT = "198.18.200.2", "198.18.201.1", "198.18.201.2"


def build(tag: str) -> tuple[str, str, str]:
    cl, rt, sv = f"bc{tag}-c", f"bc{tag}-r", f"bc{tag}-s"
    for ns in (cl, rt, sv):
        netns.run("ip", "netns", "add", ns)
        netns.run("ip", "-n", ns, "link", "set", "lo", "up")
    netns.run("ip", "link", "add", "eth0", "netns", cl, "type", "veth",
              "peer", "name", "in0", "netns", rt)  # fmt: skip
    netns.run("ip", "link", "add", "out0", "netns", rt, "type", "veth",
              "peer", "name", "eth0", "netns", sv)  # fmt: skip
    links = [
        (cl, "eth0", f"{CLIENT}/24"),
        (rt, "in0", f"{ROUTER_IN}/24"),
        (rt, "out0", "198.18.200.1/24"),
        (sv, "eth0", f"{SERVER}/24"),
    ]
    for ns, dev, addr in links:
        netns.run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        netns.run("ip", "-n", ns, "link", "set", dev, "up")
    netns.run("ip", "-n", cl, "route", "add", "default", "via", ROUTER_IN)
    netns.run("ip", "-n", sv, "route", "add", "default", "via", "198.18.200.1")
    netns.in_ns(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    censor.install(rt)
    return cl, rt, sv


def serve(ns: str, stop: threading.Event) -> None:
    def run() -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((SERVER, 9000))
            s.listen(512)
            s.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = s.accept()
                except TimeoutError:
                    continue
                conn.close()

    netns.call_in(ns, run, timeout=3600)


def connects(ns: str, count: int) -> list[float]:
    def run() -> list[float]:
        times = []
        for _ in range(count):
            t = time.perf_counter()
            with socket.create_connection((SERVER, 9000), timeout=5):
                pass
            times.append(time.perf_counter() - t)
        return times

    return netns.call_in(ns, run, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefixes", type=int, default=1_000_000)
    parser.add_argument("--connects", type=int, default=2000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("root is needed (network namespaces)")
    tag = str(os.getpid() % 10000)
    cl, rt, sv = build(tag)
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(sv, stop), daemon=True)
    server.start()
    time.sleep(0.5)
    try:
        empty = connects(cl, args.connects)
        data = make_list(args.prefixes, random.Random(42))
        t0 = time.perf_counter()
        ranges, count, _ = censor.ranges_from_file(data, "bench")
        t1 = time.perf_counter()
        censor.block(rt, ranges)
        t2 = time.perf_counter()
        full = connects(cl, args.connects)
    finally:
        stop.set()
        for ns in (cl, rt, sv):
            netns.run("ip", "netns", "del", ns)
    p50e, p50f = statistics.median(empty) * 1e6, statistics.median(full) * 1e6
    table = Table(title=f"lab censor: {count:,} prefixes into nftables")
    for col in ("measure", "value"):
        table.add_column(col)
    table.add_row("parse + merge (registry parser)", f"{t1 - t0:.1f} s")
    table.add_row("nft load (one transaction)", f"{t2 - t1:.1f} s")
    table.add_row("TCP connect p50 across censor, empty set", f"{p50e:.0f} µs")
    table.add_row("TCP connect p50 across censor, full set", f"{p50f:.0f} µs")
    table.add_row("full / empty", f"{p50f / p50e:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
