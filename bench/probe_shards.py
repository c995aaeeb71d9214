"""Probe sharding at scale: one probe's assignment pull, a batch's share check, the fleet status.

A registry on PostgreSQL (a database of its own, dropped at the end) with
``--proxies`` active proxies and ``--probes`` probe accounts (30 % control
vantages, the rest in RU), all live.  Each probe pulls
``GET /api/v1/probe/assignment`` through the app as the agent does (ASGI,
with the response model and JSON), so the time and size are what a probe
costs the registry per round.  ``--replicas`` sets the probes per proxy and
network; ``--replicas 100`` gives every probe every proxy (up to 100 probes),
as before sharding.

    .venv/bin/python bench/probe_shards.py --proxies 100000 --probes 100
    .venv/bin/python bench/probe_shards.py --proxies 100000 --probes 10 --replicas 100
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert, update

from resistance.registry import probes as registry_probes
from resistance.registry.app import create_app
from resistance.registry.models import Operator, ProbeAccount, Proxy
from resistance.registry.settings import RegistrySettings
from resistance.registry.tokens import new_token, token_hash

PG = "postgresql://postgres@127.0.0.1:5432/{name}"
NAME = "bench_probe_shards"


async def seed(registry: Any, proxies: int, probes: int) -> dict[int, str]:
    now = registry.now()
    tokens: dict[int, str] = {}
    async with registry.sessions.begin() as session:
        await session.execute(insert(Operator).values(id=1, name="op", created_at=1))
        rows = [
            {"operator_id": 1, "host": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
             "port": 1080, "network": "10.0.0.0/8", "public_key": "k" * 43,
             "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
             "credentials": [], "public": True, "status": "active", "registered_at": 1,
             "verified_at": 1}
            for i in range(proxies)
        ]  # fmt: skip
        for start in range(0, proxies, 5000):
            await session.execute(insert(Proxy), rows[start : start + 5000])
        controls = max(1, probes * 3 // 10)
        for i in range(1, probes + 1):
            control = i <= controls
            await session.execute(
                insert(ProbeAccount).values(
                    id=i, name=f"probe-{i}", public_key="x" * 43, created_at=1,
                    country="NL" if control else "RU", control=control, last_batch_at=now,
                )
            )  # fmt: skip
    from resistance.registry import repositories as repo

    async with registry.sessions.begin() as session:
        for i in range(1, probes + 1):
            tokens[i] = new_token()
            await repo.add_token(
                session, role="probe", probe_id=i, token_hash=token_hash(tokens[i]), now=now
            )
        await session.execute(update(ProbeAccount).values(last_batch_at=now))
    return tokens


async def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    admin = await asyncpg.connect(PG.format(name="postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{NAME}"')
    await admin.execute(f'CREATE DATABASE "{NAME}"')
    figures: list[tuple[str, str]] = []
    try:
        with tempfile.TemporaryDirectory() as state:
            settings = RegistrySettings(
                state_dir=Path(state),
                database_url=PG.format(name=NAME).replace("postgresql:", "postgresql+asyncpg:"),
                publish_interval=0,
                probe_replicas=args.replicas,
            )
            app = create_app(settings, on_admin_token=lambda _: None)
            async with app.router.lifespan_context(app):
                registry = app.state.registry
                tokens = await seed(registry, args.proxies, args.probes)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                    pulls: list[tuple[float, int, int]] = []
                    for probe_id in range(1, args.probes + 1):
                        started = time.perf_counter()
                        got = await client.get(
                            "/api/v1/probe/assignment",
                            headers={"Authorization": f"Bearer {tokens[probe_id]}"},
                        )
                        took = time.perf_counter() - started
                        assert got.status_code == 200, got.text
                        targets = got.json()["proxies"]
                        pulls.append((took, len(targets), len(got.content)))
                mine = [t["proxy_id"] for t in targets][:2500]  # the last probe's share
                first_control, first_inside = pulls[0], pulls[args.probes * 3 // 10]
                rest = sorted(p[0] for i, p in enumerate(pulls) if i not in (0, len(pulls) - 1))
                share = sum(p[1] for p in pulls) / len(pulls)
                size = sum(p[2] for p in pulls) / len(pulls)
                figures += [
                    ("proxies per pull (mean)", f"{share:,.0f}"),
                    ("response per pull (mean)", f"{size / 1e6:.2f} MB"),
                    ("first pull, control network", f"{first_control[0]:.2f} s"),
                    ("first pull, RU network", f"{first_inside[0]:.2f} s"),
                    ("other pulls, median", f"{rest[len(rest) // 2]:.2f} s"),
                    ("all pulls of one round", f"{sum(p[0] for p in pulls):.1f} s"),
                ]
                probe = await registry_probes._account(registry, args.probes)
                started = time.perf_counter()
                batches = [mine[i : i + 50] for i in range(0, len(mine), 50)]
                for ids in batches:  # an honest probe's batches: its own proxies
                    assert not await registry_probes.outside_share(registry, probe, ids)
                each = (time.perf_counter() - started) * 1000 / len(batches)
                figures.append(("share check of a 50-result batch", f"{each:.1f} ms"))
                started = time.perf_counter()
                await registry_probes.fleet_status(registry)
                figures.append(("fleet status", f"{time.perf_counter() - started:.2f} s"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{NAME}" WITH (FORCE)')
        await admin.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures.append(("peak RSS (registry and driver)", f"{peak:.0f} MB"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    table = Table(
        title=f"{args.proxies:,} proxies, {args.probes} probes, {args.replicas} per network"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures:
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    main()
