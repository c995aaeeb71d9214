"""`resist registry serve --workers 1` against `--workers 2` on PostgreSQL (issue 25).

Usage (from the project root; PostgreSQL on 127.0.0.1:5432 as in the tests)::

    .venv/bin/python bench/registry_workers.py                # 2 rounds of 5 s each
    .venv/bin/python bench/registry_workers.py --seconds 10 --rounds 3

Each round starts the real `serve` command on a new database for each
variant (alternating, so a busy minute on this shared machine hits both)
and measures, over HTTP on loopback:

* **GET /healthz**, the cheapest endpoint: 16 keep-alive connections, each
  sending its next request when the answer arrives.  It passes the public
  rate limit, which with several processes is a row in PostgreSQL
  (`rate_buckets`), so each connection comes from its own /24 of
  127.0.0.0/8 and moves to a new one every 40 requests -- many clients, none
  of them limited -- and the figure includes that statement's cost;
* **ingest**: 8 probes, each sending signed batches of 50 results (made and
  signed before the clock starts, by the probe's own `sign_batch`, each with
  the canary's proof) one after another to 50 proxies; results stored per
  second.

The servers and this load generator share the machine's cores, so the
table also gives the load average; compare the variants within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
PROXIES = 50
PROBES = 8
RESULTS_PER_BATCH = 50
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


async def _pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def database() -> Iterator[str]:
    name = f"bench_workers_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.format(name=name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def serving(url: str, state: Path, workers: int) -> Iterator[tuple[str, str]]:
    cmd = [
        sys.executable, "-m", "resistance", "registry", "serve", "--listen", "127.0.0.1:0",
        "--state-dir", str(state), "--db", url, "--network", "regtest",
        "--publish-interval", "0", "--allow-private-endpoints", "--canary", "127.0.0.1:0",
        "--workers", str(workers),
    ]  # fmt: skip
    out = state.with_suffix(".out")
    state.mkdir(parents=True)
    with out.open("w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stdin=subprocess.DEVNULL)
        try:
            for _ in range(600):
                text = out.read_text()
                base = re.search(r"registry listening on (http://\S+)", text)
                token = re.search(r"admin token \(shown once, keep it\): (\S+)", text)
                if base and token:
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(f"{base[1]}/healthz", timeout=2).status_code == 200:
                            yield base[1], token[1]
                            break
                if proc.poll() is not None:
                    raise SystemExit(f"serve --workers {workers} stopped: {text}")
                time.sleep(0.1)
            else:
                raise SystemExit(f"serve --workers {workers} did not start")
        finally:
            proc.terminate()
            proc.wait(30)


# --- the cheap endpoint -------------------------------------------------------------------


async def _healthz_client(port: int, first: int, until: float, counts: list[int]) -> None:
    done = refused = 0
    network = first
    while time.monotonic() < until:
        source = f"127.{10 + network // 256}.{network % 256}.1"
        network += 1000  # the next connection of this client: another /24
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        for _ in range(40):
            if time.monotonic() >= until:
                break
            writer.write(HEALTHZ)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                refused += 1
        writer.close()
    counts.append(done)
    if refused:
        print(f"  ({refused} healthz answers were not 200)")


async def healthz_rate(base: str, seconds: float, connections: int) -> float:
    port = int(base.rsplit(":", 1)[1])
    counts: list[int] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_healthz_client(port, i, until, counts) for i in range(connections)))
    return sum(counts) / seconds


# --- ingest -------------------------------------------------------------------------------


async def _setup(url: str, base: str, admin: str) -> list[tuple[str, Any]]:
    """Proxies in the database; probes made through the API: (token, key) each."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.directory.keys import public_key_text
    from resistance.registry import repositories as repo
    from resistance.registry.db import make_engine, make_sessions

    engine = make_engine(url)
    try:
        async with make_sessions(engine).begin() as session:
            op = await repo.add_operator(session, name="bench", now=1)
            for i in range(PROXIES):
                host = f"198.18.{i // 250}.{i % 250 + 1}"
                await repo.save_proxy(
                    session,
                    fields={
                        "operator_id": op.id, "host": host, "port": 1080,
                        "network": host + "/32", "public_key": "k" * 43,
                        "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
                        "credentials": [], "public": True, "status": "active",
                        "registered_at": 1, "verified_at": 1,
                    },
                )  # fmt: skip
    finally:
        await engine.dispose()
    probes = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(PROBES):
            key = Ed25519PrivateKey.generate()
            made = await client.post(
                "/api/v1/probes",
                headers={"Authorization": f"Bearer {admin}"},
                json={
                    "name": f"p{i}",
                    "country": "RU" if i % 2 else "DE",
                    "public_key": public_key_text(key.public_key()),
                },
            )
            made.raise_for_status()
            probes.append((made.json()["token"], key))
    return probes


def _batches(state: Path, probes: list[tuple[str, Any]], count: int) -> list[list[bytes]]:
    """``count`` signed batches per probe, as the probe sends them."""
    from resistance import keyfile
    from resistance.directory.keys import b64url, public_key_text
    from resistance.probe import canary
    from resistance.probe.batch import new_batch_id, sign_batch
    from resistance.registry.canary import CANARY_KEY_FILE

    signer = keyfile.read_private(
        state / CANARY_KEY_FILE, keyfile.parse_ed25519_pem, what="canary key"
    )
    now = int(time.time())
    made = []
    for i, (_token, key) in enumerate(probes):
        probe_key = public_key_text(key.public_key())
        mine = []
        for _ in range(count):
            results = []
            for j in range(RESULTS_PER_BATCH):
                proxy_id = 1 + j % PROXIES
                nonce = canary.bound_nonce(probe_key, proxy_id, now)
                upload = hashlib.sha256(secrets.token_bytes(8)).digest()
                proof = signer.sign(
                    canary.proof_message(nonce, upload, 1024, canary.window_of(now))
                )
                results.append({
                    "proxy_id": proxy_id, "at": now, "ok": True, "step": None,
                    "failure": None, "detail": "", "tcp_us": 100, "connect_us": 900,
                    "ttfb_us": 300, "throughput_kbps": 5000,
                    "canary": {"nonce": b64url(nonce), "upload_sha256": b64url(upload),
                               "download": 1024, "signature": b64url(proof)},
                })  # fmt: skip
            signed = sign_batch(
                key=key, probe_key=probe_key, batch_id=new_batch_id(),
                vantage=f"p{i}", country="RU" if i % 2 else "DE",
                created_at=now, results=results,
            )  # fmt: skip
            mine.append(signed)
        made.append(mine)
    return made


async def ingest_rate(
    base: str, probes: list[tuple[str, Any]], batches: list[list[bytes]], seconds: float
) -> tuple[float, int]:
    """Results stored per second, and how many batches were refused."""
    stored = [0]
    failed = [0]
    until = time.monotonic() + seconds

    async def send(token: str, mine: list[bytes]) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
            for body in mine:
                if time.monotonic() >= until:
                    return
                answer = await client.post("/api/v1/probe/batches", content=body)
                if answer.status_code == 201:
                    stored[0] += RESULTS_PER_BATCH
                else:
                    failed[0] += 1
                    print(f"  (batch refused: {answer.status_code} {answer.text[:200]})")

    started = time.monotonic()
    await asyncio.gather(
        *(send(token, mine) for (token, _key), mine in zip(probes, batches, strict=True))
    )
    return stored[0] / (time.monotonic() - started), failed[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40, help="signed batches per probe")
    args = parser.parse_args()
    results: dict[tuple[int, str], list[float]] = {}
    refused = {1: 0, 2: 0}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for workers in (1, 2):
                state = Path(tmp) / f"r{round_}w{workers}"
                with database() as url, serving(url, state, workers) as (base, admin):
                    probes = asyncio.run(_setup(url, base, admin))
                    batches = _batches(state, probes, args.batches)
                    rate = asyncio.run(healthz_rate(base, args.seconds, args.connections))
                    results.setdefault((workers, "GET /healthz (req/s)"), []).append(rate)
                    stored, failed = asyncio.run(ingest_rate(base, probes, batches, args.seconds))
                    results.setdefault((workers, "ingest (results/s)"), []).append(stored)
                    refused[workers] += failed
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}, {args.rounds} rounds of "
          f"{args.seconds:g} s per figure, PostgreSQL on loopback")  # fmt: skip
    print(f"  {'figure':22} {'--workers 1':>20} {'--workers 2':>20} {'ratio':>6}")
    for name in ("GET /healthz (req/s)", "ingest (results/s)"):
        one, two = results[(1, name)], results[(2, name)]
        cells = [f"{statistics.median(r):.0f} ({min(r):.0f}-{max(r):.0f})" for r in (one, two)]
        ratio = statistics.median(two) / statistics.median(one)
        print(f"  {name:22} {cells[0]:>20} {cells[1]:>20} {ratio:>5.2f}x")
    print(f"  batches refused: --workers 1: {refused[1]}, --workers 2: {refused[2]}")


if __name__ == "__main__":
    main()
