"""What the lab censor's rules cost a bulk TCP flow through its router, and a TLS dial.

Builds a client, router and server namespace joined by veth pairs (root only;
all addresses in 198.18.0.0/15 inside them), then, alternating the censor's
configurations round after round so drift hits all alike:

* ``no table``: the router forwards with no censor table at all;
* ``ip only``: today's censor, with ``--prefixes`` random blocked prefixes
  (none covering the server);
* ``all on``: every rule on, each with a list that does not cover the server
  (so every rule is evaluated and none drops): SNI and hello lists, a freeze
  prefix elsewhere, the server on the whitelist, active probing armed.

For each it times a bulk upload and download of ``--megabytes`` (median of
``--rounds``) and a TLS dial (connect, handshake with a server name, one
request and answer; median of ``--dials``).  With a watched rule on, every
ClientHello waits for the verdict program (one TCP retransmission), which the
TLS dial row shows.

    sudo .venv/bin/python bench/censor_cost.py --megabytes 256 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(__file__))
from lab_censor import SERVER, build
from resistance.lab import censor, netns

SINK, SOURCE, TLS = 5001, 5002, 5443
SERVER_CODE = textwrap.dedent(
    """
    import socket, ssl, sys, threading
    SERVER, CERT, KEY = sys.argv[1:4]
    def sink(c):
        buf = bytearray(1 << 20)
        while c.recv_into(buf):
            pass
        c.sendall(b"k")
    def source(c):
        n = int(c.recv(32).split(b"\\n")[0])
        block = bytes(1 << 20)
        while n > 0:
            c.sendall(block[: min(n, len(block))]); n -= len(block)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(CERT, KEY)
    def site(c):
        with ctx.wrap_socket(c, server_side=True) as t:
            t.recv(4096); t.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
    def serve(port, handle):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((SERVER, port)); s.listen(64)
        def one(c):
            try:
                c.settimeout(60); handle(c)
            except Exception:
                pass
            finally:
                c.close()
        def loop():
            while True:
                c, _ = s.accept(); threading.Thread(target=one, args=(c,), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
    serve(5001, sink); serve(5002, source); serve(5443, site)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def upload(size: int) -> float:
    block = bytes(1 << 20)
    t = time.perf_counter()
    with socket.create_connection((SERVER, SINK), timeout=30) as s:
        left = size
        while left > 0:
            s.sendall(block[: min(left, len(block))])
            left -= len(block)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    return size / (time.perf_counter() - t)


def download(size: int) -> float:
    buf = bytearray(1 << 20)
    t = time.perf_counter()
    with socket.create_connection((SERVER, SOURCE), timeout=30) as s:
        s.sendall(f"{size}\n".encode())
        got = 0
        while got < size and (n := s.recv_into(buf)):
            got += n
    return got / (time.perf_counter() - t)


def dials(count: int) -> list[float]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    times = []
    for _ in range(count):
        t = time.perf_counter()
        with (
            socket.create_connection((SERVER, TLS), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="site.example") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: site.example\r\n\r\n")
            tls.recv(4096)
        times.append(time.perf_counter() - t)
    return times


def configure(rt: str, mode: str, prefixes: int) -> None:
    tables = netns.in_ns(rt, "nft", "list", "tables")
    if mode == "no table":
        censor.disable(rt, "all") if censor.TABLE in tables else None
        if censor.TABLE in tables:
            netns.in_ns(rt, "nft", "delete", "table", "inet", censor.TABLE)
        return
    if censor.TABLE not in tables:
        censor.install(rt)
        rng = random.Random(7)
        nets = {f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24" for _ in range(prefixes)}
        censor.block(rt, censor.ranges_of(sorted(nets)))
    if mode == "ip only":
        censor.disable(rt, "all")
        censor.enable(rt, "ip")
    else:
        censor.enable(
            rt,
            "all",
            sni=["blocked.example"],
            freeze_prefixes=["198.18.100.0/24"],
            whitelist=[f"{SERVER}/32", "198.18.201.0/24"],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dials", type=int, default=20)
    parser.add_argument("--prefixes", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("root is needed (network namespaces)")
    size = args.megabytes << 20
    modes = ("no table", "ip only", "all on")
    up: dict[str, list[float]] = {m: [] for m in modes}
    down: dict[str, list[float]] = {m: [] for m in modes}
    dial: dict[str, list[float]] = {m: [] for m in modes}
    tag = str(os.getpid() % 10000)
    cl, rt, sv = build(tag)
    tmp = Path(tempfile.mkdtemp(prefix="censor-cost-"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=x"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    server = subprocess.Popen(
        [*netns.exec_prefix(sv), sys.executable, "-c", SERVER_CODE, SERVER, str(cert), str(key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for _ in range(args.rounds):
            for mode in modes:
                configure(rt, mode, args.prefixes)
                up[mode].append(netns.call_in(cl, upload, size, timeout=600))
                down[mode].append(netns.call_in(cl, download, size, timeout=600))
                dial[mode] += netns.call_in(cl, dials, args.dials, timeout=600)
        caught = censor.report(rt)["rules"]
    finally:
        settings = censor.load_settings(rt)
        if settings.watcher:
            censor.disable(rt, "all")
        server.kill()
        server.wait(10)
        for ns in (cl, rt, sv):
            netns.run("ip", "netns", "del", ns)
        censor.forget(rt)
    base_up, base_down = statistics.median(up["no table"]), statistics.median(down["no table"])
    base_dial = statistics.median(dial["no table"])
    table = Table(title=f"censor cost: {args.megabytes} MB each way, median of {args.rounds}")
    for col in ("censor", "upload MB/s", "ratio", "download MB/s", "ratio", "TLS dial p50",
                "ratio"):  # fmt: skip
        table.add_column(col)
    for mode in modes:
        u, d, t = (statistics.median(x[mode]) for x in (up, down, dial))
        table.add_row(
            mode, f"{u / 1e6:.0f}", f"{u / base_up:.2f}", f"{d / 1e6:.0f}",
            f"{d / base_down:.2f}", f"{t * 1e3:.1f} ms", f"{t / base_dial:.1f}x",
        )  # fmt: skip
    Console().print(table)
    dropped = sum(int(r["dropped"]) for r in caught.values())
    print(f"packets any rule dropped during the 'all on' runs: {dropped} (must be 0)")


if __name__ == "__main__":
    main()
