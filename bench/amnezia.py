"""AmneziaWG benchmark: tunnel throughput and CPU per GB, with and without the translator.

Two network namespaces joined by a veth pair (made here, named with this
process's PID, deleted at the end).  The server is the product as an
operator runs it: ``resist vpn init --amnezia`` (wireguard-go), ``resist vpn
serve`` (which runs the AmneziaWG translator), ``resist vpn add``.  The
client is stock wg-quick (wireguard-go) with the same user's config:

* ``plain``: WireGuard straight to the server's WireGuard port;
* ``amnezia``: ``resist vpn amnezia-client`` in front of wg-quick, so each
  packet crosses two translators (client and server) as well as both
  wireguard-go processes.

Both modes use the same tunnel MTU (the AmneziaWG config's 1420 - S4).  For
each mode and direction one TCP connection inside the tunnel moves bytes
for ``--seconds`` (``--runs`` times; the median is reported), and the CPU
seconds of every process involved (both wireguard-go, both translators)
are read from /proc before and after (see bench/procstat.py).

    sudo .venv/bin/python bench/amnezia.py --seconds 5 --runs 3
    sudo RESIST_NO_EXTENSIONS=1 .venv/bin/python bench/amnezia.py --seconds 5 --runs 3
    sudo .venv/bin/python bench/amnezia.py --seconds 5 --runs 3 --awg3

(the second with both translators in Python, as before ``_awg.c``; the
third with an AWG 3 server, ``init --amnezia --amnezia-v3``: header
protection and random trailers).

``rewriter`` and ``sockets`` print AWG 2 and AWG 3 parameters both.
``rewriter`` instead times the per-packet work alone, in this process: the
sans-IO rewriting of a 1,420-byte transport packet each way, without sockets
(no root needed):

    .venv/bin/python bench/amnezia.py rewriter

``sockets`` times one translator hop socket to socket, the C path beside
the Python one (no root needed):

    .venv/bin/python bench/amnezia.py sockets
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.vpn.test_tunnel import wireguard_go_pids

from procstat import cpu_seconds

ROOT = Path(__file__).resolve().parents[1]
TAG = f"{os.getpid() % 100000}"
SERVER_NS, CLIENT_NS = f"bawgs{TAG}", f"bawgc{TAG}"
SERVER_IF = f"bwgs{TAG}"
SERVER_ADDR, CLIENT_ADDR = "198.18.0.1", "198.18.0.2"
PORT = 51820
SINK_PORT = 5201
CHUNK = 256 * 1024


# --- the two ends of a transfer (run inside the namespaces) ----------------------------


def sink(port: int) -> None:
    """Accept connections; each first line says 'up SECONDS' or 'down SECONDS'."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                line += conn.recv(1)
            mode, seconds = line.decode().split()
            if mode == "up":
                while conn.recv(CHUNK):
                    pass
            else:
                data = bytes(CHUNK)
                deadline = time.monotonic() + float(seconds)
                try:
                    while time.monotonic() < deadline:
                        conn.sendall(data)
                except OSError:
                    pass


def transfer(host: str, port: int, mode: str, seconds: float) -> None:
    """Move bytes for `seconds`; print the byte count and the elapsed time."""
    data = bytes(CHUNK)
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(f"{mode} {seconds}\n".encode())
        moved = 0
        started = time.monotonic()
        if mode == "up":
            deadline = started + seconds
            while time.monotonic() < deadline:
                conn.sendall(data)
                moved += len(data)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
        else:
            while chunk := conn.recv(CHUNK):
                moved += len(chunk)
        print(json.dumps({"bytes": moved, "seconds": time.monotonic() - started}))


# --- the world ---------------------------------------------------------------------------


def run(*cmd: str, ns: str | None = None, text_input: str | None = None) -> str:
    argv = [*(("ip", "netns", "exec", ns) if ns else ()), *cmd]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, input=text_input, cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {done.stdout} {done.stderr}")
    return done.stdout


def resist(*args: str, ns: str | None = None) -> str:
    return run(sys.executable, "-m", "resistance", "vpn", *args, ns=ns)


def wireguard_go_pid(interface: str) -> int:
    pids = wireguard_go_pids(interface)
    if not pids:
        raise SystemExit(f"no wireguard-go for {interface}")
    return pids[0]


def relay_pid(state: Path) -> int:
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and b"amnezia-relay" in argv and str(state).encode() in argv:
            return int(entry.name)
    raise SystemExit("the AmneziaWG translator is not running")


def measure(mode: str, direction: str, seconds: float, pids: list[int]) -> dict[str, float]:
    before = {pid: cpu_seconds(pid) for pid in pids}
    out = run(
        sys.executable, __file__, "transfer", SERVER_TUNNEL, str(SINK_PORT), direction,
        str(seconds), ns=CLIENT_NS,
    )  # fmt: skip
    after = {pid: cpu_seconds(pid) for pid in pids}
    result = json.loads(out)
    gb = result["bytes"] / 1e9
    cpu = sum(after[p] - before[p] for p in pids)
    return {
        "mbit_s": result["bytes"] * 8 / result["seconds"] / 1e6,
        "cpu_s_per_gb": cpu / gb if gb else float("nan"),
        "cpu": cpu,
    }


# The sink listens on an address of the server's loopback that only the tunnel
# routes to (the server's tunnel address takes only pings: its firewall refuses
# private space, and the veth's own subnet would bypass the tunnel).
SERVER_TUNNEL = "198.18.5.1"


def rewriter_cost(count: int = 200_000) -> None:
    """Microseconds per transport packet in each direction, sans-IO (best of 5)."""

    from resistance.vpn.amnezia import AmneziaParams

    for awg3 in (False, True):
        _rewriter_cost(AmneziaParams.generate(awg3=awg3), count)


def _rewriter_cost(params: Any, count: int) -> None:
    import timeit

    from resistance.vpn import noise
    from resistance.vpn.amnezia import Rewriter

    client_key, server_key = os.urandom(32), os.urandom(32)
    client = Rewriter(
        params,
        wireguard_public=noise.public_key(client_key),
        amnezia_publics=lambda: [noise.public_key(server_key)],
    )
    server = Rewriter(
        params,
        wireguard_public=noise.public_key(server_key),
        amnezia_publics=lambda: [noise.public_key(client_key)],
    )
    initiation = noise.Initiator(client_key, noise.public_key(server_key)).initiation
    server.to_wireguard(client.to_amnezia(initiation)[-1])
    server._wg_indices[7] = None  # the index a response from the server would announce
    packet = b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + os.urandom(1412)
    (wire,) = client.to_amnezia(packet)
    assert server.to_wireguard(wire) == packet
    for name, call in (
        ("WireGuard -> AmneziaWG", lambda: client.to_amnezia(packet)),
        ("AmneziaWG -> WireGuard", lambda: server.to_wireguard(wire)),
    ):
        best = min(timeit.repeat(call, number=count, repeat=5)) / count
        print(f"{name}, {params.version}: {best * 1e6:.2f} us per 1,420-byte transport packet")


def socket_cost(rounds: int = 20, burst: int = 1024) -> None:
    """CPU microseconds per transport packet through one socket hop: C path against Python.

    ``burst`` 1,420-byte transport packets wait in a loopback socket; one
    direction of the translator (``_awg.relay`` in C, or the Python path:
    recvfrom, the rewriter, send) moves them to another socket, and only that
    is timed (process CPU time); best of ``rounds``.  The kernel's work for
    the receive and the send is included: it is most of a translator's cost.
    """
    from resistance.vpn.amnezia import AmneziaParams

    for awg3 in (False, True):
        _socket_cost(AmneziaParams.generate(awg3=awg3), rounds, burst)


def _socket_cost(params: Any, rounds: int, burst: int) -> None:
    from resistance.vpn import noise
    from resistance.vpn.amnezia import BASE_SIZE, Rewriter
    from resistance.vpn.translator import _grow_buffers, _native_module

    awg = _native_module()
    rw = Rewriter(params, wireguard_public=noise.public_key(os.urandom(32)), amnezia_publics=list)
    rw.wireguard_indices[7] = None
    plain = b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + os.urandom(1412)
    (wire,) = rw.to_amnezia(plain)
    socks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        _grow_buffers(sock)
        socks.append(sock)
    sender, middle, target = socks
    host, port = target.getsockname()
    dest = socket.AF_INET.to_bytes(2, sys.byteorder) + port.to_bytes(2, "big")
    dest += socket.inet_aton(host) + bytes(8)  # a struct sockaddr_in
    sizes = tuple(params.padding(t) + BASE_SIZE[t] for t in sorted(BASE_SIZE)[:3])
    route = (middle.fileno(), dest, rw.wireguard_indices, None)
    candidates = tuple(
        (params.padding(t) + BASE_SIZE[t], params.padding(t), params.header(t).lo,
         params.header(t).hi)
        for t in sorted(BASE_SIZE)[:3]
        if params.random_trailers
    )  # fmt: skip

    def drain() -> int:
        n = 0
        while True:
            try:
                target.recv(2048)
            except BlockingIOError:
                return n
            n += 1

    def python(to_wireguard: bool) -> None:
        while True:
            try:
                data = middle.recv(65535)
            except BlockingIOError:
                return
            if to_wireguard:
                out = rw.to_wireguard(data)
                if out is not None:
                    middle.sendto(out, (host, port))
            else:
                for datagram in rw.to_amnezia(data):
                    middle.sendto(datagram, (host, port))

    def c(to_wireguard: bool) -> None:
        assert awg is not None
        while True:
            slow, received, *_ = awg.relay(
                middle.fileno(), to_wireguard, params.s4, params.h4.lo, params.h4.hi,
                sizes if to_wireguard else (-1, -1, -1), route, -1,
                params.header_protection_key or None, candidates,
            )  # fmt: skip
            assert not slow
            if not received:
                return

    paths = [("Python", python)] + ([("C", c)] if awg is not None else [])
    for to_wireguard, packet, label in ((False, plain, "WireGuard -> AmneziaWG"),
                                        (True, wire, "AmneziaWG -> WireGuard")):  # fmt: skip
        for name, move in paths:
            best = float("inf")
            for _ in range(rounds):
                for _ in range(burst):
                    sender.sendto(packet, middle.getsockname())
                start = time.process_time()
                move(to_wireguard)
                best = min(best, time.process_time() - start)
                moved = drain()
                assert moved == burst, f"{name} moved {moved} of {burst}"
            print(
                f"{label}, {params.version}, {name:6}: {best / burst * 1e6:.2f} us per packet, "
                "socket to socket"
            )
    for sock in socks:
        sock.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "rewriter":
        rewriter_cost()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "sockets":
        socket_cost()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        sink(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "transfer":
        transfer(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--awg3", action="store_true", help="an AWG 3 server (init --amnezia --amnezia-v3)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    for tool in ("ip", "wg", "wg-quick", "wireguard-go", "nft"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}")
    tmp = Path(tempfile.mkdtemp(prefix="awgbench"))
    procs: list[subprocess.Popen[str]] = []
    confs: list[Path] = []
    try:
        for ns in (SERVER_NS, CLIENT_NS):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", f"bva{TAG}", "netns", SERVER_NS, "type", "veth", "peer",
            "name", f"bvb{TAG}", "netns", CLIENT_NS)  # fmt: skip
        for ns, dev, addr in (
            (SERVER_NS, f"bva{TAG}", SERVER_ADDR),
            (CLIENT_NS, f"bvb{TAG}", CLIENT_ADDR),
        ):
            run("ip", "-n", ns, "address", "add", f"{addr}/30", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", SERVER_NS, "address", "add", f"{SERVER_TUNNEL}/32", "dev", "lo")
        state = tmp / "state"
        resist(
            "init", "--endpoint", f"{SERVER_ADDR}:{PORT}", "--interface", SERVER_IF,
            "--netns", SERVER_NS, "--amnezia", "--allow", "198.18.0.0/15",
            *(["--amnezia-v3"] if args.awg3 else []), "--state-dir", str(state),
        )  # fmt: skip
        serve = subprocess.Popen(
            [sys.executable, "-m", "resistance", "vpn", "serve", "--interval", "30",
             "--state-dir", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )  # fmt: skip
        procs.append(serve)
        assert serve.stdout is not None
        serve.stdout.readline()
        sinker = subprocess.Popen(
            ["ip", "netns", "exec", SERVER_NS, sys.executable, __file__, "sink", str(SINK_PORT)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(sinker)
        assert sinker.stdout is not None and sinker.stdout.readline().strip() == "ready"
        config = resist("add", "bench", "--state-dir", str(state))
        awg_conf = tmp / "bench.conf"
        awg_conf.write_text(config)
        plain = re.sub(
            r"^(Jc|Jmin|Jmax|S\d|H\d|I\d|HeaderProtectionKey|RandomTrailers) = .*\n",
            "",
            config,
            flags=re.M,
        )
        plain = plain.replace(f":{PORT + 1}", f":{PORT}")
        server_wg = wireguard_go_pid(SERVER_IF)
        relay = relay_pid(state)
        results: dict[str, dict[str, dict[str, float]]] = {}
        for mode in ("plain", "amnezia"):
            client_if = f"bwgc{TAG}{mode[0]}"
            conf = tmp / f"{client_if}.conf"
            pids = [server_wg]
            if mode == "plain":
                conf.write_text(plain)
            else:
                client = subprocess.Popen(
                    ["ip", "netns", "exec", CLIENT_NS, sys.executable, "-m", "resistance", "vpn",
                     "amnezia-client", str(awg_conf), "--listen", "127.0.0.1:51821",
                     "--wg-config", str(conf)],
                    stdout=subprocess.PIPE, text=True, cwd=ROOT,
                )  # fmt: skip
                procs.append(client)
                assert client.stdout is not None
                client.stdout.readline()
                pids += [relay, client.pid]
            conf.chmod(0o600)
            run("wg-quick", "up", str(conf), ns=CLIENT_NS)
            confs.append(conf)
            pids.append(wireguard_go_pid(client_if))
            run("ping", "-c1", "-W5", "10.66.0.1", ns=CLIENT_NS)
            results[mode] = {}
            for direction in ("up", "down"):
                runs = [measure(mode, direction, args.seconds, pids) for _ in range(args.runs)]
                results[mode][direction] = {
                    "mbit_s": statistics.median(r["mbit_s"] for r in runs),
                    "cpu_s_per_gb": statistics.median(r["cpu_s_per_gb"] for r in runs),
                }
                if mode == "amnezia":
                    translators = [relay, pids[2]]
                    before = {p: cpu_seconds(p) for p in translators}
                    r = measure(mode, direction, args.seconds, pids)
                    share = sum(cpu_seconds(p) - before[p] for p in translators)
                    results[mode][direction]["translator_share"] = share / r["cpu"]
            run("wg-quick", "down", str(conf), ns=CLIENT_NS)
            confs.remove(conf)
        load = os.getloadavg()[0]
        from resistance.vpn.translator import _native_module

        path = "Python" if _native_module() is None else "C (_awg.c) for transport"
        print(
            f"cores {os.cpu_count()}, load average {load:.1f} at the end; translators: {path}; "
            f"{'AWG 3' if args.awg3 else 'AWG 2'} parameters"
        )
        print(f"{'mode':10} {'dir':5} {'Mbit/s':>8} {'CPU s/GB':>9} {'translators':>12}")
        for mode, by_dir in results.items():
            for direction, r in by_dir.items():
                share = r.get("translator_share")
                shown = "" if share is None else f"{share * 100:.0f} % of CPU"
                print(
                    f"{mode:10} {direction:5} {r['mbit_s']:8.0f} {r['cpu_s_per_gb']:9.1f} "
                    f"{shown:>12}"
                )
        for direction in ("up", "down"):
            ratio = results["amnezia"][direction]["mbit_s"] / results["plain"][direction]["mbit_s"]
            print(f"{direction}: AmneziaWG moves {ratio * 100:.0f} % of plain WireGuard's rate")
    finally:
        for conf in confs:
            subprocess.run(["ip", "netns", "exec", CLIENT_NS, "wg-quick", "down", str(conf)],
                           capture_output=True, timeout=60)  # fmt: skip
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if (tmp / "state" / "vpn" / "server.json").exists():
            down = [sys.executable, "-m", "resistance", "vpn", "down"]
            down += ["--state-dir", str(tmp / "state")]
            subprocess.run(down, capture_output=True, timeout=60, cwd=ROOT)
        for ns in (SERVER_NS, CLIENT_NS):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
