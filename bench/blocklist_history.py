"""Blocklist history: what a new import of a large registry costs in time and rows.

Imports ``--versions`` versions of a registry of ``--prefixes`` random prefixes
(the same generator as ``blocklist_lookup.py``), each version replacing
``--churn`` of the previous one's prefixes, into a fresh database (SQLite by
default, ``--db URL`` for PostgreSQL), as ``resist registry import-blocklist``
does it, with ``--proxies`` active proxies to flag.  Reports per import: wall
time, ranges added/removed, and rows stored against what full copies per
version would take.

    .venv/bin/python bench/blocklist_history.py --prefixes 200000 --versions 4 --churn 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blocklist_lookup import _v4, make_list
from resistance.registry import repositories as repo
from resistance.registry.censor import import_blocklist
from resistance.registry.db import make_engine, make_sessions, migrate
from resistance.registry.models import BlocklistRange


async def add_proxies(url: str, count: int, rng: random.Random) -> None:
    engine = make_engine(url)
    try:
        async with make_sessions(engine).begin() as session:
            op = await repo.add_operator(session, name="bench", now=1)
            for i in range(count):
                await repo.save_proxy(session, fields={
                    "operator_id": op.id, "host": _v4(rng), "port": 1080 + i, "network": "x",
                    "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                    "probe_password": "q", "credentials": [], "public": True,
                    "status": "active", "registered_at": 1, "verified_at": 1,
                })  # fmt: skip
    finally:
        await engine.dispose()


async def span_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:
            result = await session.execute(select(func.count()).select_from(BlocklistRange))
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def run(args: argparse.Namespace, url: str) -> None:
    rng = random.Random(args.seed)
    await migrate(url)
    await add_proxies(url, args.proxies, rng)
    lines = make_list(args.prefixes, rng).decode().splitlines()
    table = Table(title=f"{args.prefixes:,} prefixes, {args.churn:.1%} churn per version")
    for column in ("version", "import s", "ranges", "added", "removed", "rows", "full copies"):
        table.add_column(column, justify="right")
    copies = 0
    for version in range(1, args.versions + 1):
        if version > 1:
            for _ in range(int(len(lines) * args.churn)):
                lines[rng.randrange(len(lines))] = f"{_v4(rng)}/32"
        started = time.monotonic()
        done = await import_blocklist(
            url, ("\n".join(lines) + "\n").encode(), f"v{version}", auto_migrate=False
        )
        seconds = time.monotonic() - started
        copies += done.ranges
        table.add_row(
            str(version), f"{seconds:.1f}", f"{done.ranges:,}", f"{done.added:,}",
            f"{done.removed:,}", f"{await span_rows(url):,}", f"{copies:,}",
        )  # fmt: skip
    Console().print(table)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prefixes", type=int, default=200_000)
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite+aiosqlite:///{tmp}/bench.sqlite3"
        asyncio.run(run(args, url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
