"""Benchmark: directory publish and a grant round at 100,000 proxies on PostgreSQL.

Makes its own database (``resist_bench_pub_<pid>``, dropped at the end unless
--keep) and fills it with the dashboard benchmark's loader (bench/dashboard.py:
100,000 proxies, 70 % public, 30 days of rollups from four vantages and today's
so far, evidence, verdicts, a current blocklist import with flags, proxies listed
over several versions), gives every operator a payout
address, then runs each step as the registry does (``services.publish``,
``rounds.create_round``) in a fresh child process, so the peak RSS reported is
that step's own (the child's ``ru_maxrss``, interpreter and imports included).

    .venv/bin/python bench/publish_scale.py [--proxies 100000] [--days 30] [--probes 4]
        [--steps publish,round]

``--probes 100`` gives every proxy the views of 100 probes (10,000,000 evidence rows at
100,000 proxies), as ``bench/scale.py``'s fleet does; the default is the loader's four.

Steps: ``publish`` (every proxy's censor flag current, as between two blocklist
imports), ``publish-import`` (the first publication after an import: every flag
is dropped first, as an import does, so the blocklist is walked and the import
that blocked each listed proxy found again), ``phases`` (a publication's parts
timed one by one: reading the proxies, their measurements, building and signing;
nothing stored), ``republish`` (a process's second publication with
``--keep-entries``, no row changed since its first: every entry kept),
``republish-changed`` (the same after every proxy's rollups of today changed, as they
do between two publications of a running registry: every entry rebuilt) and ``round``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import bdkpython as bdk
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from dashboard import GENEROUS, admin, fill_sql
from resistance.registry.db import migrate
from resistance.registry.settings import RegistrySettings


def _settings(url: str, state: str, *, keep_entries: bool = False) -> RegistrySettings:
    # ``serve --keep-entries`` where the code has it (a "before" from PYTHONPATH may not)
    keep = {"keep_entries": True} if keep_entries and _HAS_KEEP else {}
    return RegistrySettings(
        state_dir=Path(state), database_url=url, network="regtest", publish_interval=0,
        signup_limit=GENEROUS, public_limit=GENEROUS, auto_migrate=False, **keep,
    )  # fmt: skip


_HAS_KEEP = "keep_entries" in getattr(RegistrySettings, "__dataclass_fields__", {})


async def _step(name: str, url: str, state: str, days: int) -> dict[str, Any]:
    from sqlalchemy import text

    from resistance.registry import rounds, services
    from resistance.registry.app import open_registry
    from resistance.registry.schemas import RoundCreateRequest

    # the republish steps measure entries kept between publications (--keep-entries)
    registry = await open_registry(_settings(url, state, keep_entries=name.startswith("republish")))
    ended: tuple[float, float] | None = None
    try:
        started, cpu = time.perf_counter(), time.process_time()
        if name == "publish-import":  # what an import leaves: no flag is current
            async with registry.sessions.begin() as session:
                await session.execute(text("DELETE FROM proxy_blocklist_flags"))
            started, cpu = time.perf_counter(), time.process_time()
        if name.startswith("republish"):  # the second publication of one process
            await services.publish(registry)
            if name == "republish-changed":  # as probes' batches leave them an hour later
                async with registry.sessions.begin() as session:
                    # no per-row triggers (the dashboard's daily sums: minutes for 200,000)
                    await session.execute(text("SET LOCAL session_replication_role = replica"))
                    await session.execute(
                        text(
                            "UPDATE probe_rollups SET attempts = attempts + 1 "
                            "WHERE day = to_char(current_date, 'YYYY-MM-DD')"
                        )
                    )
            started, cpu = time.perf_counter(), time.process_time()
            signed = await services.publish(registry)
            kept = getattr(registry, "entries", None)  # None: code without kept entries
            rebuilt = f"{kept.built:,}" if kept is not None else "all"
            what = f"{len(signed['document']['proxies']):,} proxies, {rebuilt} entries built"
        elif name == "phases":  # a publication's parts, each timed (nothing stored)
            what = await _phases(registry)
        elif name.startswith("publish"):
            signed = await services.publish(registry)
            # the publication's time alone: not reading its entries back (decoded as read
            # where a publication returns them as their bytes)
            ended = time.perf_counter(), time.process_time()
            listed = sum(
                bool(p["measurements"]["censor_listed"]) for p in signed["document"]["proxies"]
            )
            what = f"{len(signed['document']['proxies']):,} proxies, {listed:,} listed"
        else:
            # a rerun's round would clash with the last run's (a day is paid once)
            async with registry.sessions.begin() as session:
                await session.execute(
                    text("DELETE FROM grant_rounds WHERE round_id LIKE 'bench-%'")
                )
            started = time.perf_counter()
            end = dt.date.today() - dt.timedelta(days=1)
            start = end - dt.timedelta(days=days - 1)
            request = RoundCreateRequest(
                round_id=f"bench-{time.time_ns()}",
                target_country="RU",
                period_start=start.isoformat(),
                period_end=end.isoformat(),
                budget_sat=10**9,
            )
            made = await rounds.create_round(registry, request=request)
            what = f"{made['rollups']:,} rollups, {made['payouts']:,} payouts"
        if ended is None:
            ended = time.perf_counter(), time.process_time()
        seconds, cpu = ended[0] - started, ended[1] - cpu
    finally:
        if registry.round_workers is not None:  # waited for, so its usage is a child's
            registry.round_workers.shutdown(wait=True)
        await registry.engine.dispose()
    # the registry's process (its worker threads included), and a round's worker process
    # (rounds.compute_job), a child of it
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "step": name,
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": rss,
        "worker_cpu": child.ru_utime + child.ru_stime,
        "worker_peak_mb": child.ru_maxrss / 1024,
        "what": what,
    }


async def _phases(registry: Any) -> str:
    """Wall and CPU seconds of a publication's parts, run one after the other on the event
    loop: reading the proxies, reading their measurements (verdicts, rollup sums, flags,
    probes' views), building and signing the document."""
    from resistance.registry import measurements, repositories, services

    now = registry.now()
    marks = [(time.perf_counter(), time.process_time())]
    async with registry.sessions() as session:
        proxies = services.listed(await repositories.active_proxy_rows(session, public=True))
        marks.append((time.perf_counter(), time.process_time()))
        rows = await measurements.measurement_rows(session, proxies, now)
        marks.append((time.perf_counter(), time.process_time()))
    services._sign_directory(registry, proxies, rows, 1, now)
    marks.append((time.perf_counter(), time.process_time()))
    names = ("proxies", "measurement rows", "build+sign")
    return ", ".join(
        f"{n} {b[0] - a[0]:.1f} s wall / {b[1] - a[1]:.1f} s CPU"
        for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)
    )


def _child(name: str, url: str, state: str, days: int, out: Any) -> None:
    try:
        out.send(asyncio.run(_step(name, url, state, days)))
    except Exception as exc:  # reported as the step's outcome
        out.send({"step": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})


def run_step(name: str, url: str, state: str, days: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(name, url, state, days, child))
    proc.start()
    result: dict[str, Any] = parent.recv()
    proc.join()
    return result


def more_probes(proxies: int, probes: int) -> list[str]:
    """Probes 5 to ``probes`` (the dashboard's loader makes four) and each one's latest view
    of every proxy, as ``bench/scale.py``'s fleet leaves them: views of different ages
    within the last ten minutes (so a directory names the 16 most recent of each proxy's),
    a third of the probes inside (failing the blocked tenth of the proxies, by timeout),
    and a few that measured the node's TLS listener beside it."""
    if probes <= 4:
        return []
    now = int(time.time())
    country = "CASE WHEN p % 3 = 0 THEN 'RU' ELSE 'NL' END"
    return [
        f"""INSERT INTO probe_accounts (id, name, public_key, country, control, created_at)
            SELECT p, 'probe-' || p, 'k' || p, {country}, p % 3 <> 0, {now}
            FROM generate_series(5, {probes}) p""",
        f"""INSERT INTO probe_evidence (proxy_id, probe_id, country, control, last_at, last_ok,
              fail_streak, fail_windows, mechanism, transports)
            SELECT g, p, {country}, p % 3 <> 0, {now} - (g * 7 + p) % 600,
              p % 3 <> 0 OR g % 10 >= 1, 0, '[]'::json,
              CASE WHEN p % 3 <> 0 OR g % 10 >= 1 THEN 'ok' ELSE 'timeout' END,
              CASE WHEN p % 10 = 5 THEN '{{"tls": "ok"}}'::json END
            FROM generate_series(1, {proxies}) g, generate_series(5, {probes}) p""",
    ]


async def fill(url: str, proxies: int, days: int, console: Console, probes: int = 4) -> None:
    """The dashboard benchmark's rows (and :func:`more_probes`' if ``probes`` is above its
    four), with the per-row triggers off while they go in (the
    dashboard's daily sums, one hot row per day, made the rollups take minutes) and
    those sums added from the rollups afterwards, as the triggers would have left them."""
    statements = [
        "SET session_replication_role = replica",
        *fill_sql(proxies, days)[:-1],
        *more_probes(proxies, probes),
        # today's rollups so far (the loader's end yesterday): a directory sums two days
        """INSERT INTO probe_rollups (proxy_id, day, country, control, attempts, successes,
             latency_hist, latency_p50_ms, latency_p90_ms, throughput_hist, throughput_p50_kbps)
           SELECT proxy_id, to_char(current_date, 'YYYY-MM-DD'), country, control, attempts / 2,
             successes / 2, latency_hist, latency_p50_ms, latency_p90_ms, throughput_hist,
             throughput_p50_kbps
           FROM probe_rollups WHERE day = to_char(current_date - 1, 'YYYY-MM-DD')""",
        """INSERT INTO dashboard_daily_reach (day, control, attempts, successes)
           SELECT day, control, sum(attempts), sum(successes) FROM probe_rollups
           GROUP BY day, control""",
        "SET session_replication_role = DEFAULT",
        "ANALYZE",
    ]
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        for sql in statements:
            started = time.monotonic()
            status = await conn.execute(sql)
            console.print(f"  {status[:28]:<28} {time.monotonic() - started:6.1f} s")
    finally:
        await conn.close()


async def addresses(url: str, operators: int = 1000) -> None:
    """A payout address for every operator (the loader leaves none: a round would pay nobody)."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        rows = [
            (
                str(
                    bdk.Address.from_script(
                        bdk.Script(b"\x00\x14" + hashlib.sha256(b"op%d" % o).digest()[:20]),
                        bdk.Network.REGTEST,
                    )
                ),
                o,
            )
            for o in range(1, operators + 1)
        ]
        await conn.executemany(
            "UPDATE operators SET payout_address = $1, payout_type = 'p2wpkh' WHERE id = $2", rows
        )
    finally:
        await conn.close()


async def prepare(args: argparse.Namespace, console: Console) -> tuple[str, str]:
    name = args.database or args.new_database or f"resist_bench_pub_{os.getpid()}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    if not args.database:
        await admin(f'CREATE DATABASE "{name}"')
        await migrate(url)
        console.print(f"filling {name}: {args.proxies} proxies, {args.days} days")
        await fill(url, args.proxies, args.days, console, args.probes)
        await addresses(url)
    else:
        await migrate(url)
    return name, url


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--proxies", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--probes",
        type=int,
        default=4,
        help="probes with a view of every proxy (100: as bench/scale.py)",
    )
    parser.add_argument("--steps", default="publish,round")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--database", help="measure a database a --keep run left")
    parser.add_argument(
        "--new-database", help="the name of the database to make and fill (default: by pid)"
    )
    args = parser.parse_args()
    console = Console()
    name, url = asyncio.run(prepare(args, console))
    results = []
    try:
        with tempfile.TemporaryDirectory() as state:
            for step in args.steps.split(","):
                results.append(run_step(step, url, state, args.days))
                console.print(json.dumps(results[-1]))
    finally:
        if not args.keep:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    table = Table(title=f"PostgreSQL, {args.proxies:,} proxies, {args.days} days")
    columns = ("step", "wall s", "registry CPU s", "peak RSS MB", "worker CPU s", "worker MB")
    for col in (*columns, "what"):
        table.add_column(col)
    for r in results:
        if "error" in r:
            table.add_row(r["step"], "fails", "", "", "", "", r["error"])
        else:
            table.add_row(
                r["step"],
                f"{r['seconds']:.1f}",
                f"{r['cpu']:.1f}",
                f"{r['peak_mb']:.0f}",
                f"{r['worker_cpu']:.1f}" if r["worker_cpu"] else "-",
                f"{r['worker_peak_mb']:.0f}" if r["worker_cpu"] else "-",
                r["what"],
            )
    console.print(table)


if __name__ == "__main__":
    main()
