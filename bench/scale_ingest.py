"""Ingest alone against a fleet loaded once: bench/scale.py's database, kept between runs.

Usage (from the project root; PostgreSQL on 127.0.0.1:5432 as in the tests)::

    B="bench/scale_ingest.py --database resist_scale_keep --dir /tmp/keep"
    # load 100,000 proxies, 100 probes, 30 days once (1.5-7 min; 4 GB), keep it
    .venv/bin/python $B --load 100000
    # then as often as needed (before/after with PYTHONPATH=... for the server's code)
    .venv/bin/python $B --results 20000 --warm 2000
    .venv/bin/python $B --drop

Why: ``bench/scale.py`` loads its fleet (84 s at 100k) and runs every step (start-up's
publication, publish, assignment, round) around the ingest step each time, which makes
comparing ingest before and after, or profiling it, slow.  This loads the same database
with the same loader (:func:`scale.load`), keeps the probes' tokens and the canary key
in ``--dir``, and on each later run starts ``resist registry serve`` on it (a fresh
stand-in publication is stored at load so the server does not publish at start-up),
marks every probe live again (as a minute ago) and runs :func:`scale.ingest` as
``bench/scale.py`` does: ``--senders`` processes, each probe pulling its assignment and
sending signed batches of its share.  Printed: results counted per second, the
server's CPU per result (``/proc``, user + system) and the database backends'.
``--warm N`` first sends N results untimed, so the one-off readings of a fresh
server (the fleet's live probes, the flagged-probe count) are out of the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from dashboard import admin
from registry_ingest import backend_cpu, backend_delta, tree_cpu
from resistance.registry.canary import load_or_create_canary_key
from resistance.registry.db import migrate
from resistance.registry.tokens import new_token
from scale import PG_URL, Fleet, Plan, Server, db_sizes, ingest, load


class Marked(Server):
    """The server whose CPU (and its database's) is read when the upload starts
    (:meth:`Server.mark`, called by :func:`scale.ingest` once the batches are signed:
    the probes' assignment pulls before it are not counted)."""

    def __init__(self, url: str, state: Path, max_rss: float, database: str) -> None:
        super().__init__(url, state, max_rss)
        self.database = database
        self.cpu0, self.pg0 = 0.0, {}

    def mark(self) -> None:
        super().mark()
        assert self.proc is not None
        self.cpu0, self.pg0 = tree_cpu(self.proc.pid), backend_cpu(self.database)


async def do_load(args: argparse.Namespace) -> None:
    url = PG_URL.format(name=args.database)
    dsn = url.replace("+asyncpg", "")
    plan = Plan(args.load, probes=args.probes, days=args.days)
    fleet = Fleet(new_token(), {i: new_token() for i in range(1, plan.probes + 1)})
    args.dir.mkdir(parents=True, exist_ok=True)
    canary = load_or_create_canary_key(args.dir)
    await admin(f'CREATE DATABASE "{args.database}"')
    t0 = time.monotonic()
    await migrate(url)
    from rich.console import Console

    await load(dsn, plan, fleet, canary, Console())
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # fresh (no publication at start-up), not valid (no signing-key check against it)
        stand_in = {"fresh_until": int(time.time()) + 10**8, "valid_until": 0}
        body = json.dumps({"document": stand_in, "signatures": []})
        await conn.execute(
            "INSERT INTO publications (serial, published_at, body) VALUES (1, $1, $2)",
            int(time.time()),
            body,
        )
    finally:
        await conn.close()
    (args.dir / "fleet.json").write_text(
        json.dumps(
            {
                "proxies": plan.proxies,
                "probes": plan.probes,
                "days": plan.days,
                "admin": fleet.admin_token,
                "tokens": {str(k): v for k, v in fleet.probe_tokens.items()},
            }
        )
    )
    print(f"loaded {plan.proxies:,} proxies into {args.database} in {time.monotonic() - t0:.0f} s")


async def do_ingest(args: argparse.Namespace) -> None:
    url = PG_URL.format(name=args.database)
    dsn = url.replace("+asyncpg", "")
    saved = json.loads((args.dir / "fleet.json").read_text())
    fleet = Fleet(saved["admin"], {int(k): v for k, v in saved["tokens"].items()})
    canary = load_or_create_canary_key(args.dir)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("UPDATE probe_accounts SET last_batch_at = $1", int(time.time()) - 60)
    finally:
        await conn.close()
    server = Marked(url, args.dir, 8e9, args.database)
    await server.start(300)
    assert server.proc is not None
    try:
        if args.warm:
            plan = Plan(saved["proxies"], probes=saved["probes"], ingest_results=args.warm,
                        senders=args.senders, step_timeout=600)  # fmt: skip
            await ingest(server, plan, fleet, canary, args.dir)
        plan = Plan(saved["proxies"], probes=saved["probes"], ingest_results=args.results,
                    senders=args.senders, step_timeout=600)  # fmt: skip
        before = await db_sizes(dsn)
        done = await ingest(server, plan, fleet, canary, args.dir)  # marks at the start
        cpu0, pg0 = server.cpu0, server.pg0
        cpu1, pg1 = tree_cpu(server.proc.pid), backend_cpu(args.database)
        after = await db_sizes(dsn)
    finally:
        server.stop()
    added = after["results"] - before["results"]
    rate = added / done["seconds"]
    server_us = (cpu1 - cpu0) / max(1, added) * 1e6
    pg_us = backend_delta(pg0, pg1) / max(1, added) * 1e6
    fleet_round = saved["proxies"] * 3 * 2 / rate
    print(
        f"{saved['proxies']:,} proxies: {added:,} results counted of {done['stored']:,} sent "
        f"({done['errors']} refused {done['first_error']!r}) in {done['seconds']:.1f} s: "
        f"{rate:,.0f}/s; registry CPU {server_us:,.0f} µs/result ({cpu1 - cpu0:.2f} s), "
        f"PostgreSQL {pg_us:,.0f} µs/result ({backend_delta(pg0, pg1):.2f} s); "
        f"the fleet's round ({saved['proxies'] * 6:,} results) {fleet_round:,.0f} s; "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True, help="the kept database's name")
    parser.add_argument("--dir", type=Path, required=True, help="its tokens and canary key")
    parser.add_argument("--load", type=int, metavar="PROXIES", help="create and load it")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--results", type=int, default=10_000, help="results timed")
    parser.add_argument("--warm", type=int, default=0, help="results sent first, untimed")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--drop", action="store_true", help="drop the database")
    args = parser.parse_args()
    if args.drop:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'))
    elif args.load:
        asyncio.run(do_load(args))
    else:
        asyncio.run(do_ingest(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
