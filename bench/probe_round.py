"""One probe round against a farm of simulated SOCKS5 proxies on loopback.

The farm is one process (its own core): ``--proxies`` listeners, each on its
own loopback address (127.1.x.y, all one port, so no ephemeral ports are used
up), speaking SOCKS5 with username/password and relaying CONNECTs to the
registry's real canary (also in the farm process).  The agent side is the
agent's own round code (``Agent.run_round``): every check does TCP, greeting,
auth, CONNECT, the signed canary exchange with verification, and a short
download; results are signed into batches and written to the on-disk spool
as in production.  Uploading is not part of the round and is not measured.

Reports proxies/s and peak RSS (agent and farm) as a table.

    .venv/bin/python bench/probe_round.py --proxies 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from resistance.config import Endpoint
from resistance.probe.agent import Agent, AgentSettings, Assignment
from resistance.probe.runner import Canary, CheckSettings, Target
from resistance.registry.canary import CanaryServer

FARM_PORT = 21080
USER, PASSWORD = b"probe", b"bench-secret"


def farm_address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _socks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readexactly(2)
        await reader.readexactly(head[1])
        writer.write(b"\x05\x02")
        ver_ulen = await reader.readexactly(2)
        user = await reader.readexactly(ver_ulen[1])
        plen = (await reader.readexactly(1))[0]
        password = await reader.readexactly(plen)
        if (user, password) != (USER, PASSWORD):
            writer.write(b"\x01\x01")
            return
        writer.write(b"\x01\x00")
        req = await reader.readexactly(4)
        if req[3] != 1:
            writer.write(b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00")
            return
        host = socket.inet_ntoa(await reader.readexactly(4))
        port = int.from_bytes(await reader.readexactly(2), "big")
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
        await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
        up_writer.close()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def run_farm(
    count: int,
    canary_port: int,
    ready: multiprocessing.synchronize.Event,
    done: multiprocessing.synchronize.Event,
) -> None:  # type: ignore[name-defined]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))

    async def main() -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
        canary = CanaryServer(key)
        await canary.start(Endpoint("127.0.0.1", canary_port))
        servers = [
            await asyncio.start_server(
                _socks, farm_address(i), FARM_PORT, backlog=64, reuse_address=True
            )
            for i in range(count)
        ]
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        for server in servers:
            server.close()
        await canary.close()

    asyncio.run(main())


class NoLink:
    async def close(self) -> None:
        return None


def rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def agent_round(
    args: argparse.Namespace, canary_port: int, state: Path
) -> tuple[float, int, int, int]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    settings = AgentSettings(
        registry="http://127.0.0.1:9", token="bench", vantage="bench", country="NL",
        state_dir=state, concurrency=args.concurrency,
        check=CheckSettings(step_timeout=10, transfer_timeout=10,
                            upload=args.upload, download=args.download),
    )  # fmt: skip
    agent = Agent(settings, link=NoLink())  # type: ignore[arg-type]
    public = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
    targets = tuple(
        (0, Target(farm_address(i), FARM_PORT, USER.decode(), PASSWORD.decode(), i + 1))
        for i in range(args.proxies)
    )
    assignment = Assignment("bench", "NL", 0, Canary("127.0.0.1", canary_port, public), targets)
    started = time.perf_counter()
    stats = await agent.run_round(assignment)
    agent.flush()
    seconds = time.perf_counter() - started
    return seconds, stats.checked, stats.ok, agent.batches_made


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proxies", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--upload", type=int, default=1024, help="bytes up per check")
    parser.add_argument("--download", type=int, default=8192, help="bytes down per check")
    args = parser.parse_args()
    if not 1 <= args.proxies <= 62_500:
        parser.error("--proxies must be 1-62500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        canary_port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    farm = ctx.Process(target=run_farm, args=(args.proxies, canary_port, ready, done), daemon=True)
    t0 = time.perf_counter()
    farm.start()
    if not ready.wait(120):
        print("farm did not start", file=sys.stderr)
        farm.kill()
        return 1
    farm_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        seconds, checked, ok, batches = asyncio.run(agent_round(args, canary_port, Path(tmp)))
        spooled = sum(p.stat().st_size for p in (Path(tmp) / "spool").glob("*.json"))
    farm_rss = rss_mb(farm.pid)
    done.set()
    farm.join(10)
    if farm.is_alive():
        farm.kill()
    table = Table(
        title=f"probe round: {args.proxies} simulated proxies on loopback ({os.cpu_count()} CPUs)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in (
        ("proxies checked", f"{checked}"),
        ("functional (all steps, canary verified)", f"{ok}"),
        ("round time", f"{seconds:.1f} s"),
        ("proxies/s", f"{checked / seconds:.0f}"),
        ("concurrency", f"{args.concurrency}"),
        ("bytes up/down per check", f"{args.upload}/{args.download}"),
        ("signed batches spooled", f"{batches} ({spooled / 1e6:.1f} MB)"),
        ("agent peak RSS", f"{rss_mb():.0f} MB"),
        ("farm peak RSS (proxies + canary)", f"{farm_rss:.0f} MB"),
        ("farm start-up", f"{farm_start:.1f} s"),
    ):
        table.add_row(name, value)
    Console().print(table)
    return 0 if checked == ok == args.proxies else 1


if __name__ == "__main__":
    sys.exit(main())
