"""Registry ingest: signed probe results stored per second by `resist registry serve`.

Usage (from the project root; PostgreSQL on 127.0.0.1:5432 as in the tests)::

    .venv/bin/python bench/registry_ingest.py                       # 2,000 proxies, 100 probes
    .venv/bin/python bench/registry_ingest.py --proxies 10000 --probes 100 --batches 400
    .venv/bin/python bench/registry_ingest.py --probes 10 --workers 2    # two server processes
    .venv/bin/python bench/registry_ingest.py --cprofile /tmp/ingest.prof   # cProfile the server
    .venv/bin/python bench/registry_ingest.py --profile /tmp/ingest.svg   # py-spy, if installed

Why: issue 25 measured 333 results/s at 100 probes, one server core
saturated, most of it in loading every probe's evidence as ORM objects.
This drives the registry as probes do and says how many results it stores
per second and what each costs the server's process.

What it does: creates a database of its own (dropped at the end), starts
`resist registry serve` on it (one process, or ``--workers N``; a canary so
successful results carry a proof that verifies), adds the proxies through
the repositories and the probe accounts through the admin API, marks every
probe live (as after its first round), and has every probe pull its
assignment: with sharding (``--replicas`` probes per proxy and vantage
network, the registry's default 3) each gets only its share.  The steady
state of every probe having measured its share once is seeded as one
evidence row per (proxy, assigned probe) (``--all-evidence``: per (proxy,
probe), every probe having measured every proxy, as before sharding).  It then signs ``--batches``
batches of 50 results with the probe's own code
(:func:`resistance.probe.batch.sign_batch`, canary proofs signed with the
registry's canary key: 90 % successes, 10 % failures), each probe walking
its own share, before timing anything, and sends them over HTTP from
``--senders`` keep-alive connections, each sending its next batch when the
answer comes.  Printed: results counted per second over the wall time (a
result the registry does not count is reported, not counted), the server's
CPU time per result (its process tree, user + system, /proc), and the same
for the database's PostgreSQL backends.  ``--cprofile FILE`` runs the
server (one process) under cProfile and writes its stats there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
#: Results per batch (``--per-batch``; the protocol's most, probe.batch.MAX_RESULTS).
PER_BATCH = 50


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """User + system seconds of a process and its live children (``serve --workers``)."""
    import psutil

    total = cpu_seconds(pid)
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(OSError, psutil.Error):
            total += cpu_seconds(child.pid)
    return total


def backend_cpu(database: str) -> dict[int, float]:
    """User + system seconds of each PostgreSQL backend serving ``database``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            title = (entry / "cmdline").read_bytes().decode(errors="replace")
            if title.startswith("postgres: ") and f" {database} " in title:
                found[int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def backend_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the backends spent between two readings (new backends from zero)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def start_server(
    db_url: str, state: Path, *, workers: int = 1, replicas: int = 3, cprofile: str = ""
) -> tuple[subprocess.Popen[str], int, str]:
    python = [sys.executable, "-m", "cProfile", "-o", cprofile] if cprofile else [sys.executable]
    command = [
        *python, "-m", "resistance", "registry", "serve", "--db", db_url,
        "--state-dir", str(state), "--listen", "127.0.0.1:0", "--canary", "127.0.0.1:0",
        "--publish-interval", "0", "--allow-private-endpoints", "--network", "regtest",
        "--max-connections", "10000", "--workers", str(workers),
        "--probe-replicas", str(replicas),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    token, port = "", 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (token and port):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"the registry exited at start (rc {proc.wait()})")
        if line.startswith("admin token"):
            token = line.rsplit(":", 1)[1].strip()
        elif line.startswith("registry listening on http://"):
            port = int(line.split()[3].rsplit(":", 1)[1])
    if not (token and port):
        proc.kill()
        raise SystemExit("the registry did not say its port and admin token in time")
    return proc, port, token


def start_profiler(pid: int, out: str, fmt: str) -> subprocess.Popen[bytes]:
    """py-spy recording the server (installed beside this Python: ``pip install py-spy``)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "-p", str(pid), "-o", out, "--format", fmt, "--rate", "200"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def seed(db_url: str, proxies: int, probes: list[int], now: int) -> list[int]:
    """Proxies through the repositories; every probe live (a batch a minute ago)."""
    from sqlalchemy import update

    from resistance.registry import repositories as repo
    from resistance.registry.db import make_engine, make_sessions
    from resistance.registry.models import ProbeAccount

    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    ids: list[int] = []
    try:
        async with sessions.begin() as session:
            operator = await repo.add_operator(session, name="bench-op", now=now)
            for n in range(proxies):
                net = f"10.{n >> 16 & 255}.{n >> 8 & 255}"
                proxy = await repo.save_proxy(
                    session,
                    fields={
                        "operator_id": operator.id, "host": f"{net}.{n & 255}",
                        "port": 1080, "network": f"{net}.0/24",
                        "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                        "probe_password": "q", "credentials": [], "public": True,
                        "status": "active", "registered_at": now, "verified_at": now,
                    },
                )  # fmt: skip
                ids.append(proxy.id)
            await session.execute(
                update(ProbeAccount)
                .where(ProbeAccount.id.in_(probes))
                .values(last_batch_at=now - 60)
            )
    finally:
        await engine.dispose()
    return ids


async def seed_evidence(db_url: str, shares: dict[int, list[int]], now: int) -> int:
    """One evidence row per (proxy, probe it is assigned to): every probe has measured its
    share once (its last check worked)."""
    from sqlalchemy import insert

    from resistance.registry import repositories as repo
    from resistance.registry.db import make_engine, make_sessions
    from resistance.registry.models import ProbeEvidenceRow

    engine = make_engine(db_url)
    sessions = make_sessions(engine)
    try:
        async with sessions.begin() as session:
            accounts = {p.id: p for p in await repo.all_probes(session)}
            rows = [
                {
                    "proxy_id": proxy_id,
                    "probe_id": probe_id,
                    "country": accounts[probe_id].country,
                    "control": accounts[probe_id].control,
                    "last_at": now - 300,
                    "last_ok": True,
                    "fail_streak": 0,
                    "fail_windows": [],
                    "mechanism": "ok",
                    "transports": None,
                }
                for probe_id, share in shares.items()
                for proxy_id in share
            ]
            for start in range(0, len(rows), 5000):
                await session.execute(insert(ProbeEvidenceRow), rows[start : start + 5000])
    finally:
        await engine.dispose()
    return len(rows)


def make_batches(
    keys: list[tuple[Any, str, str]],
    shares: list[list[int]],
    count: int,
    canary_key: Any,
    now: int,
    per_batch: int = PER_BATCH,
) -> list[tuple[int, bytes]]:
    """``count`` signed batches (probe index, body), each probe walking its own share."""
    from resistance.directory.keys import b64url, public_key_text
    from resistance.probe import canary
    from resistance.probe.batch import new_batch_id, sign_batch

    cursor = [secrets.randbelow(len(share)) if share else 0 for share in shares]
    batches: list[tuple[int, bytes]] = []
    senders = [i for i, share in enumerate(shares) if share]
    for n in range(count):
        index = senders[n % len(senders)]
        key, name, country = keys[index]
        proxy_ids = shares[index]
        probe_key = public_key_text(key.public_key())
        results = []
        for k in range(min(per_batch, len(proxy_ids))):
            proxy_id = proxy_ids[(cursor[index] + k) % len(proxy_ids)]
            at = now - per_batch + k
            if secrets.randbelow(10):
                nonce = canary.bound_nonce(probe_key, proxy_id, at)
                upload = hashlib.sha256(secrets.token_bytes(8)).digest()
                sig = canary_key.sign(
                    canary.proof_message(nonce, upload, 1024, canary.window_of(at))
                )
                results.append({
                    "proxy_id": proxy_id, "at": at, "ok": True, "step": None, "failure": None,
                    "detail": "", "tcp_us": 900, "connect_us": 40_000 + 97 * k,
                    "ttfb_us": 60_000, "throughput_kbps": 3000 + k,
                    "canary": {"nonce": b64url(nonce), "upload_sha256": b64url(upload),
                               "download": 1024, "signature": b64url(sig)},
                })  # fmt: skip
            else:
                results.append({
                    "proxy_id": proxy_id, "at": at, "ok": False, "step": "tcp",
                    "failure": "timeout", "detail": "no answer in 5 s", "tcp_us": None,
                    "connect_us": None, "ttfb_us": None, "throughput_kbps": None,
                    "canary": None,
                })  # fmt: skip
        cursor[index] = (cursor[index] + per_batch) % len(proxy_ids)
        body = sign_batch(
            key=key, probe_key=probe_key, batch_id=new_batch_id(), vantage=name,
            country=country, created_at=now, results=results,
        )  # fmt: skip
        batches.append((index, body))
    return batches


async def send_all(
    port: int, tokens: list[str], batches: list[tuple[int, bytes]], senders: int
) -> tuple[int, int]:
    """Send every batch from ``senders`` keep-alive connections: (results counted, results
    the registry kept but did not count)."""
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)
    counted = uncounted = 0

    async def sender() -> None:
        nonlocal counted, uncounted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                index, body = queue.get_nowait()
                head = (
                    f"POST /api/v1/probe/batches HTTP/1.1\r\nHost: bench\r\n"
                    f"Authorization: Bearer {tokens[index]}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                writer.write(head + body)
                status_line = await asyncio.wait_for(reader.readline(), 120)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answer = await reader.readexactly(length)
                if b" 201 " not in status_line:
                    raise SystemExit(f"batch refused: {status_line!r} {answer[:300]!r}")
                receipt = json.loads(answer)
                counted += receipt["results"]
                uncounted += len(json.loads(body)["document"]["results"]) - receipt["results"]
        finally:
            writer.close()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return counted, uncounted


async def pull_shares(port: int, tokens: list[str]) -> list[list[int]]:
    """Every probe's assignment, as its agent pulls it at the start of a round."""
    import httpx

    shares = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for token in tokens:
            got = await client.get(
                "/api/v1/probe/assignment", headers={"Authorization": f"Bearer {token}"}
            )
            got.raise_for_status()
            shares.append(sorted(t["proxy_id"] for t in got.json()["proxies"]))
    return shares


async def run(args: argparse.Namespace) -> None:
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.directory.keys import public_key_text
    from resistance.registry.canary import load_or_create_canary_key

    name = f"{args.db_prefix}_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    db_url = PG_URL.format(name=name)
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="i25-ingest-bench-") as tmp:
            state = Path(tmp)
            proc, port, admin = start_server(
                db_url, state, workers=args.workers, replicas=args.replicas, cprofile=args.cprofile
            )
            now = int(time.time())
            keys: list[tuple[Any, str, str]] = []
            tokens: list[str] = []
            probe_ids: list[int] = []
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {admin}"},
            ) as client:
                for n in range(args.probes):
                    key = Ed25519PrivateKey.generate()
                    control = n % 5 == 0  # every fifth probe a control vantage abroad
                    country = "DE" if control else "RU"
                    created = await client.post(
                        "/api/v1/probes",
                        json={"name": f"bench-{n}", "country": country, "control": control,
                              "public_key": public_key_text(key.public_key())},
                    )  # fmt: skip
                    created.raise_for_status()
                    keys.append((key, f"bench-{n}", country))
                    tokens.append(created.json()["token"])
                    probe_ids.append(created.json()["probe_id"])
            proxy_ids = await seed(db_url, args.proxies, probe_ids, now)
            shares = await pull_shares(port, tokens)
            seeded = [proxy_ids if args.all_evidence else share for share in shares]
            evidence = await seed_evidence(db_url, dict(zip(probe_ids, seeded, strict=True)), now)
            canary_key = load_or_create_canary_key(state)
            warm = make_batches(keys, shares, args.senders * 2, canary_key, now, args.per_batch)
            batches = make_batches(keys, shares, args.batches, canary_key, now, args.per_batch)
            await send_all(port, tokens, warm, args.senders)
            spy = None
            if args.profile:
                spy = start_profiler(proc.pid, args.profile, args.profile_format)
                await asyncio.sleep(1)
            cpu0, pg0, t0 = tree_cpu(proc.pid), backend_cpu(name), time.perf_counter()
            stored, uncounted = await send_all(port, tokens, batches, args.senders)
            elapsed = time.perf_counter() - t0
            cpu = tree_cpu(proc.pid) - cpu0
            pg = backend_delta(pg0, backend_cpu(name))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            share = sum(map(len, shares)) / len(shares)
            print(
                f"proxies {args.proxies}, probes {args.probes} (share {share:,.0f} proxies each, "
                f"{args.replicas} per network; {evidence:,} evidence rows), "
                f"{args.workers} worker(s), {len(batches)} batches of {args.per_batch}, "
                f"{args.senders} senders: {stored} results counted "
                f"({uncounted} not counted) in {elapsed:.2f} s = {stored / elapsed:,.0f} "
                f"results/s; registry CPU {cpu / stored * 1e6:.0f} µs per result "
                f"({cpu / elapsed:.0%} of a core); PostgreSQL backends "
                f"{pg / stored * 1e6:.0f} µs per result ({pg / elapsed:.0%} of a core); "
                f"CPU seconds registry {cpu:.2f}, PostgreSQL {pg:.2f}; "
                f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxies", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument(
        "--per-batch", type=int, default=PER_BATCH, help="results per batch (at most 50)"
    )
    parser.add_argument(
        "--db-prefix",
        default="i25ingest_bench",
        help="name of the bench's database, before a random suffix (created and dropped)",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--replicas", type=int, default=3, help="probes per proxy and network")
    parser.add_argument(
        "--all-evidence",
        action="store_true",
        help="seed every probe's evidence of every proxy (as before sharding, or after much "
        "churn: rows of probes that are no longer a proxy's replicas), not only the shares'",
    )
    parser.add_argument("--cprofile", metavar="FILE", default="", help="cProfile the server")
    parser.add_argument("--profile", metavar="FILE", help="record the server with py-spy")
    parser.add_argument(
        "--profile-format", default="speedscope", choices=["speedscope", "flamegraph", "raw"]
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
