"""MTProto proxy benchmark: `resist node --mtproto-listen` beside mtprotoproxy.

Measures, through each proxy in fake-TLS (ee) mode on loopback:

* upload and download MB/s of one connection, and the proxy's CPU seconds
  per GiB (the relay cannot splice: both legs are encrypted);
* ee handshakes per second with 1, 100 and 10,000 user secrets: "returning"
  hellos all come from the last user of the table (a client that connected
  before: our node's hint finds it at once; mtprotoproxy tries every key),
  "cold" hellos from a random user each (our hint misses).

The proxy runs pinned to CPU 0; this process (the client, the data-centre
stand-in and its sink) to CPU 1.  The DC stand-in reads the proxy's 64-byte
obfuscated2 init and then discards (upload, DC 2) or sends (download, DC 4)
bytes without decrypting: the proxy's work is what is measured.

The peer is the newest mtprotoproxy.py (github alexbers/mtprotoproxy, MIT),
fetched by hand, never committed; give its path with --peer or
$MTPROTOPROXY.  Its DC table has no setting, so a launcher written to a
temporary directory at run time sets TG_DATACENTERS_V4 to the stand-in and
replaces its public-IP lookup (which would reach the internet) with
127.0.0.1.  Without the peer, only our node is measured.

    .venv/bin/python bench/mtproto.py --peer /path/to/mtprotoproxy.py

``--workers N`` runs our node with N worker processes (not pinned: they and
this client then share the machine's cores; CPU is summed over the
workers); ``--no-transfer`` measures handshakes only; ``--replay-cost``
times one check-and-insert of the replay cache shared by the workers (a
mapped file under flock) against the per-process cache it replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from resistance.errors import ProtocolError
from resistance.proto import faketls
from resistance.proto.faketls import ProxySecret, SecretMode
from resistance.proto.mtclient import ProxyClient

DOMAIN = "front.test"
CHUNK = 1 << 20
WAIT = 30.0


def user_key(i: int) -> bytes:
    return (0xA5 << 120 | i).to_bytes(16, "big")


@dataclass
class Stand:
    """DC stand-in: DC 2 on 127.0.0.1 sinks, DC 4 on 127.0.0.2 sources."""

    port: int = 0
    sunk: int = 0
    sink_done: asyncio.Event = field(default_factory=asyncio.Event)
    sink_goal: int = 0
    source_bytes: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.servers.append(await asyncio.start_server(self.sink, "127.0.0.1", self.port))
        self.servers.append(await asyncio.start_server(self.source, "127.0.0.2", self.port))

    async def sink(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readexactly(64), 600)
            while data := await reader.read(CHUNK):
                self.sunk += len(data)
                if self.sink_goal and self.sunk >= self.sink_goal:
                    self.sink_done.set()
        writer.close()

    async def source(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readexactly(64), 600)
            block = os.urandom(CHUNK)
            left = self.source_bytes
            while left > 0:
                writer.write(block[: min(left, CHUNK)])
                left -= CHUNK
                await writer.drain()
        writer.close()


@dataclass
class Proxy:
    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def cpu(self) -> float:
        """CPU seconds of the proxy and its worker processes (which stay alive)."""
        proc = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("proxy did not start listening")


def pin(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def spawn(cmd: list[str], cwd: Path | None, *, pinned: bool = True) -> subprocess.Popen[bytes]:
    """A proxy process pinned to CPU 0 (its stderr kept in cwd for the peer)."""
    err = (cwd / "stderr.txt").open("wb") if cwd else subprocess.DEVNULL
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=err,
        preexec_fn=pin(0) if pinned else None,
    )


async def start_resist(users: int, stand: Stand, front: int, tmp: Path, workers: int = 1) -> Proxy:
    state = tmp / f"resist-{users}"
    state.mkdir()
    conf = state / "node.toml"
    conf.write_text(
        "[node]\n[node.mtproto_users]\n"
        + "".join(f'u{i} = "{user_key(i).hex()}"\n' for i in range(users))
    )
    port = free_port()
    cmd = [
        sys.executable, "-m", "resistance", "node", "--state-dir", str(state),
        "--config", str(conf), "--mtproto-listen", f"127.0.0.1:{port}",
        "--mtproto-domain", DOMAIN, "--mtproto-front", f"127.0.0.1:{front}",
        "--mtproto-dc", f"2=127.0.0.1:{stand.port}", "--mtproto-dc", f"4=127.0.0.2:{stand.port}",
    ]  # fmt: skip
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = spawn(cmd, None, pinned=workers == 1)
    await wait_port(port, proc)
    return Proxy("resist", proc, port)


async def start_peer(peer: Path, users: int, stand: Stand, front: int, tmp: Path) -> Proxy:
    work = tmp / f"peer-{users}"
    work.mkdir()
    port = free_port()
    secrets_text = ", ".join(f'"u{i}": "{user_key(i).hex()}"' for i in range(users))
    (work / "cfg.py").write_text(
        textwrap.dedent(f"""
        PORT = {port}
        USERS = {{{secrets_text}}}
        MODES = {{"classic": False, "secure": False, "tls": True}}
        TLS_DOMAIN = "{DOMAIN}"
        MASK_HOST = "127.0.0.1"
        MASK_PORT = {front}
        LISTEN_ADDR_IPV4 = "127.0.0.1"
        LISTEN_ADDR_IPV6 = None
        PREFER_IPV6 = False
        STATS_PRINT_PERIOD = 100000
        """)
    )
    (work / "launch.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(peer.parent)!r})
        sys.argv = ["mtprotoproxy", {str(work / "cfg.py")!r}]
        import mtprotoproxy as m
        m.init_ip_info = lambda: m.my_ip_info.update(ipv4="127.0.0.1", ipv6=None)
        m.print_tg_info = lambda: None
        m.TG_DATACENTERS_V4 = ["127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.1"]
        m.TG_DATACENTER_PORT = {stand.port}
        m.main()
        """)
    )
    proc = spawn([sys.executable, str(work / "launch.py")], work)
    await wait_port(port, proc)
    return Proxy("mtprotoproxy", proc, port)


async def ee_connect(
    port: int, key: bytes, dc: int
) -> tuple[ProxyClient, asyncio.StreamReader, asyncio.StreamWriter]:
    client = ProxyClient(ProxySecret(key, SecretMode.EE, DOMAIN), dc)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(client.start())
    while not client.established:
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        if not data:
            raise RuntimeError("proxy closed the handshake")
        client.receive(data)
    return client, reader, writer


def record_block() -> bytes:
    """1 MiB of ApplicationData records (random content: the proxy cannot tell)."""
    return faketls.encode_records(os.urandom(CHUNK))


def load_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def upload(proxy: Proxy, stand: Stand, total: int) -> tuple[float, float, float]:
    client, _reader, writer = await ee_connect(proxy.port, user_key(0), 2)
    stand.sunk, stand.sink_goal = 0, total
    stand.sink_done.clear()
    writer.write(client.send(b""))  # CCS and the init
    block = record_block()
    cpu0, load0, t0 = proxy.cpu(), load_cpu(), time.perf_counter()
    for _ in range(total // CHUNK):
        writer.write(block)
        await writer.drain()
    await asyncio.wait_for(stand.sink_done.wait(), 600)
    elapsed, cpu = time.perf_counter() - t0, proxy.cpu() - cpu0
    load = (load_cpu() - load0) / elapsed
    writer.close()
    return total / elapsed / 2**20, cpu / (total / 2**30), load


async def download(proxy: Proxy, stand: Stand, total: int) -> tuple[float, float, float]:
    stand.source_bytes = total
    client, reader, writer = await ee_connect(proxy.port, user_key(0), 4)
    cpu0, load0, t0 = proxy.cpu(), load_cpu(), time.perf_counter()
    writer.write(client.send(b""))
    got = 0
    while data := await asyncio.wait_for(reader.read(CHUNK), WAIT):
        got += len(data)
    elapsed, cpu = time.perf_counter() - t0, proxy.cpu() - cpu0
    load = (load_cpu() - load0) / elapsed
    writer.close()
    if got < total:
        raise RuntimeError(f"download got {got} of {total} bytes")
    return total / elapsed / 2**20, cpu / (total / 2**30), load


def make_hellos(users: int, count: int, cold: bool) -> list[tuple[bytes, bytes]]:
    rng = random.Random(users * 2 + cold)
    now = time.time()
    out = []
    for _ in range(count):
        key = user_key(rng.randrange(users) if cold else users - 1)
        out.append((key, faketls.build_client_hello(key, DOMAIN, now)))
    return out


async def handshakes(
    proxy: Proxy, hellos: list[tuple[bytes, bytes]], seconds: float, *, cold: bool = False
) -> tuple[float, float, float]:
    it = iter(hellos)
    numbers = itertools.count()
    done = refused = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, refused
        for key, hello in it:
            i = next(numbers)
            if time.perf_counter() > deadline:
                return
            # Cold hellos come from ever new client networks (127.A.B.1), as new
            # apps would; returning ones from the same address.
            local = (f"127.{1 + i // 256 % 200}.{i % 256}.1", 0) if cold else None
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", proxy.port, local_addr=local
            )
            writer.write(hello)
            answer = b""
            ok = False
            with contextlib.suppress(ConnectionError, ProtocolError):
                while data := await asyncio.wait_for(reader.read(65536), WAIT):
                    answer += data
                    if faketls.parse_server_answer(key, hello[11:43], answer) is not None:
                        ok = True
                        break
            writer.close()
            if ok:
                done += 1
            else:
                refused += 1  # fronted: the front's answer is no signed ServerHello

    cpu0, t0 = proxy.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    elapsed, cpu = time.perf_counter() - t0, proxy.cpu() - cpu0
    return done / elapsed, cpu / max(done + refused, 1) * 1e6, refused / elapsed


async def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    if args.workers == 1:
        os.sched_setaffinity(0, {1})
    stand = Stand()
    await stand.start()
    front_server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    front = front_server.sockets[0].getsockname()[1]
    total = args.mib * 2**20
    results: dict[str, dict[str, float]] = {}
    peers: list[str] = (["resist"] if not args.peer_only else []) + (
        ["mtprotoproxy"] if args.peer else []
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in peers:
            row = results.setdefault(name, {})
            for users in args.users:
                if name == "resist":
                    proxy = await start_resist(users, stand, front, tmp, args.workers)
                else:
                    proxy = await start_peer(Path(args.peer), users, stand, front, tmp)
                try:
                    if users == args.users[0] and not args.no_transfer:
                        up = [await upload(proxy, stand, total) for _ in range(args.repeat)]
                        down = [await download(proxy, stand, total) for _ in range(args.repeat)]
                        for label, runs in (("upload", up), ("download", down)):
                            best = max(runs)
                            cpu = min(r[1] for r in runs)
                            row[f"{label} MiB/s"] = best[0]
                            row[f"{label} proxy CPU s/GiB"] = cpu
                            row[f"{label} MiB per proxy CPU second"] = 1024 / cpu
                            row[f"{label} proxy core busy %"] = 100 * best[0] * best[1] / 1024
                            row[f"{label} load core busy %"] = 100 * best[2]
                    for cold in (False, True):
                        hellos = make_hellos(users, args.hellos, cold)
                        rate, cpu_us, refused = await handshakes(
                            proxy, hellos, args.seconds, cold=cold
                        )
                        label = "cold" if cold else "returning"
                        row[f"ee handshakes/s, {users} users, {label}"] = rate
                        row[f"proxy CPU µs/hello, {users} users, {label}"] = cpu_us
                        if refused:
                            row[f"hellos/s fronted by the scan budget, {users} users"] = refused
                        print(
                            f"{name} {users} {label}: {rate:.0f}/s {cpu_us:.0f} µs", file=sys.stderr
                        )
                finally:
                    proxy.stop()
                    err = tmp / f"peer-{users}" / "stderr.txt"
                    if err.exists():
                        print(err.read_text()[-2000:], file=sys.stderr)
    front_server.close()
    for server in stand.servers:
        server.close()
    return results


def replay_cost(count: int = 200_000) -> dict[str, float]:
    """µs per check-and-insert: the shared cache (mapped file, flock) and the old one."""
    from resistance.node.mtproto_shared import SharedReplayCache
    from resistance.node.mtproto_users import ReplayCache

    tokens = [os.urandom(32) for _ in range(count)]
    now = time.time()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        caches = {
            "shared (mmap + flock) µs/check": SharedReplayCache(Path(d) / "r.map"),
            "per-process (dict of sets) µs/check": ReplayCache(),
        }
        for label, cache in caches.items():
            start = time.perf_counter()
            for token in tokens:
                cache.seen(token, now + 300, now)
            for token in tokens[: count // 4]:  # replays: found
                cache.seen(token, now + 300, now)
            out[label] = (time.perf_counter() - start) / (count + count // 4) * 1e6
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    metrics = list(dict.fromkeys(m for n in names for m in results[n]))
    lines = ["| metric | " + " | ".join(names) + (" | ratio |" if len(names) > 1 else " |")]
    lines.append("|---" * (len(names) + 1 + (len(names) > 1)) + "|")
    for metric in metrics:
        cells = [results[n].get(metric) for n in names]
        text = ["—" if c is None else f"{c:,.1f}" if c < 100 else f"{c:,.0f}" for c in cells]
        ratio = " | " if len(cells) > 1 else ""
        if len(cells) > 1 and cells[0] and cells[1] and "busy" not in metric:
            ratio = f" | {cells[0] / cells[1]:.2f}x"
        lines.append(f"| {metric} | " + " | ".join(text) + ratio + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", default=os.environ.get("MTPROTOPROXY"), help="mtprotoproxy.py")
    parser.add_argument("--mib", type=int, default=1024, help="MiB per transfer")
    parser.add_argument("--repeat", type=int, default=2, help="transfers per direction (best)")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 100, 10000])
    parser.add_argument("--hellos", type=int, default=6000, help="hellos made per case")
    parser.add_argument("--seconds", type=float, default=3.0, help="per handshake case")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--peer-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help="our node's --workers")
    parser.add_argument("--no-transfer", action="store_true", help="handshakes only")
    parser.add_argument("--replay-cost", action="store_true", help="time the replay caches")
    ns = parser.parse_args()
    if ns.replay_cost:
        print(json.dumps(replay_cost(), indent=1, ensure_ascii=False))
        raise SystemExit(0)
    if ns.peer and not Path(ns.peer).exists():
        parser.error(f"--peer {ns.peer} does not exist")
    try:
        import uvloop

        res = uvloop.run(main(ns))
    except ImportError:
        res = asyncio.run(main(ns))
    if ns.output:
        ns.output.write_text(json.dumps(res, indent=2))
    print(table(res))
