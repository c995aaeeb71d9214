"""Benchmark: server time per dashboard page with 100,000 proxies and 30 days on PostgreSQL.

Creates its own database (``resist_bench_dash_<pid>``, dropped at the end
unless --keep), migrates it, fills it in SQL (generate_series) with: 1,000
operators, 100,000 proxies (SOCKS5 / MTProto / WireGuard, 70 % public), four
vantages (two inside RU, two control), a verdict and its history for every
proxy, the probes' evidence (4 per proxy), 30 days of daily rollups per proxy
and vantage side (6,000,000 rows), 5 raw results per proxy (500,000), 30
blocklist imports with 100,000 current ranges and a paid grant round. Then
it asks each page N times through the ASGI app in-process (no sockets, so
the time is the server's: routing, queries, templates, charts) and prints
the first request's time (it computes the public aggregates, which are then
reused for a minute), the median and the 95th percentile per page.

    .venv/bin/python bench/dashboard.py [--proxies 100000] [--days 30] [--repeat 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from resistance.probe import rollup
from resistance.registry.app import create_app
from resistance.registry.db import migrate
from resistance.registry.settings import RateLimit, RegistrySettings
from resistance.registry.tokens import new_token, token_hash

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
GENEROUS = RateLimit(per_second=1e6, burst=10**6)


def fill_sql(proxies: int, days: int) -> list[str]:
    now = int(time.time())
    lat, thr = rollup.empty(rollup.LATENCY_BOUNDS_MS), rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
    lat[9], lat[11], thr[7] = 200, 80, 280
    lat, thr = json.dumps(lat), json.dumps(thr)
    day0 = f"(current_date - {days})"
    return [
        f"""INSERT INTO operators (id, name, created_at, payout_address, payout_type)
            SELECT g, 'op-' || g, {now}, NULL, NULL FROM generate_series(1, 1000) g""",
        f"""INSERT INTO proxies (id, operator_id, host, port, network, public_key, protocols,
              probe_user, probe_password, credentials, public, status, registered_at,
              verified_at)
            SELECT g, 1 + g % 1000,
              '10.' || (g >> 16) % 256 || '.' || (g >> 8) % 256 || '.' || g % 256, 1080,
              '10.' || (g >> 16) % 256 || '.' || (g >> 8) % 256 || '.0/24', 'k',
              CASE g % 10 WHEN 0 THEN '["mtproto"]' WHEN 1 THEN '["wireguard"]'
                ELSE '["socks5"]' END::json,
              'p', 'p', '[{{"username": "u", "password": "p"}}]'::json, g % 10 < 7, 'active',
              {now} - 86400 * (g % 40) - 3600, {now} - 86400 * (g % 40)
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO probe_accounts (id, name, public_key, country, control, created_at)
            VALUES (1, 'ru-1', 'a', 'RU', false, {now}), (2, 'ru-2', 'b', 'RU', false, {now}),
                   (3, 'de-1', 'c', 'DE', true, {now}), (4, 'nl-1', 'd', 'NL', true, {now})""",
        f"""INSERT INTO proxy_verdicts (proxy_id, verdict, blocked_in, since, updated_at)
            SELECT g, CASE WHEN g % 10 < 3 THEN 'blocked' WHEN g % 10 = 3 THEN 'down'
              WHEN g % 10 = 4 THEN 'untested' ELSE 'functional' END,
              CASE WHEN g % 10 < 3 THEN '["RU"]' ELSE '[]' END::json, {now} - 3600, {now}
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO proxy_verdict_history (proxy_id, at, verdict, blocked_in, previous)
            SELECT g, {now} - 86400 * (g % 40) - 3000, 'functional', '[]'::json, 'untested'
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO proxy_verdict_history (proxy_id, at, verdict, blocked_in, previous)
            SELECT g, {now} - 86400 * (g % 40) + 3600 * (g % 97), 'blocked', '["RU"]'::json,
              'functional'
            FROM generate_series(1, {proxies}) g WHERE g % 10 < 3""",
        f"""INSERT INTO probe_evidence (proxy_id, probe_id, country, control, last_at, last_ok,
              fail_streak, fail_windows, mechanism, transports)
            SELECT g, p, CASE WHEN p < 3 THEN 'RU' WHEN p = 3 THEN 'DE' ELSE 'NL' END, p > 2,
              {now} - 300, p > 2 OR g % 10 >= 3, 0, '[]'::json, 'ok', NULL
            FROM generate_series(1, {proxies}) g, generate_series(1, 4) p""",
        f"""INSERT INTO probe_rollups (proxy_id, day, country, control, attempts, successes,
              latency_hist, latency_p50_ms, latency_p90_ms, throughput_hist,
              throughput_p50_kbps)
            SELECT g, to_char({day0} + d, 'YYYY-MM-DD'), CASE WHEN c THEN 'DE' ELSE 'RU' END, c,
              288, CASE WHEN c OR g % 10 >= 3 THEN 280 ELSE 10 END, '{lat}'::json, 50, 100,
              '{thr}'::json, 8000
            FROM generate_series(1, {proxies}) g, generate_series(0, {days - 1}) d,
              (VALUES (true), (false)) v(c)""",
        f"""INSERT INTO probe_batches (batch_id, probe_id, digest, created_at, received_at,
              result_count, body)
            SELECT 'b' || d, 1, 'x', {now} - 3600 * d, {now} - 3600 * d, 1, '{{}}'
            FROM generate_series(0, {days * 24 - 1}) d""",
        f"""INSERT INTO probe_results (batch_id, probe_id, proxy_id, measured_at, country,
              control, ok, step, failure, detail, connect_us, ttfb_us, throughput_kbps,
              mechanism)
            SELECT 'b' || (k * 7) % {days * 24}, 1 + k % 4, g,
              {now} - 3600 * ((k * 7) % {days * 24}),
              'RU', false, g % 10 >= 3, NULL, NULL, '', 1000, 2000, 5000, 'ok'
            FROM generate_series(1, {proxies}) g, generate_series(1, 5) k""",
        f"""INSERT INTO blocklist_imports (source, kind, updated, imported_at, prefixes, ranges,
              skipped)
            SELECT 'dump-' || d, 'dump', NULL, {now} - 86400 * d, 300000 + 1000 * d,
              100000 + d, 0 FROM generate_series({days - 1}, 0, -1) d""",
        f"""INSERT INTO blocklist_spans (start_hex, end_hex, first_import, until_import)
            SELECT lpad(to_hex(1), 1, '0') || lpad(to_hex(g * 512), 32, '0'),
                   lpad(to_hex(1), 1, '0') || lpad(to_hex(g * 512 + 255), 32, '0'),
                   (SELECT max(id) FROM blocklist_imports), NULL
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO proxy_blocklist_flags (proxy_id, import_id, listed, checked_at)
            SELECT g, (SELECT max(id) FROM blocklist_imports), g % 10 < 3, {now}
            FROM generate_series(1, {proxies}) g""",
        "SELECT setval('operators_id_seq', 1000000), setval('proxies_id_seq', 10000000)",
        "ANALYZE",
    ]


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fill(url: str, proxies: int, days: int, console: Console) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        for sql in fill_sql(proxies, days):
            started = time.monotonic()
            status = await conn.execute(sql)
            console.print(f"  {status:<28} {time.monotonic() - started:6.1f} s")
    finally:
        await conn.close()


async def measure(
    url: str, state: Path, repeat: int
) -> list[tuple[str, tuple[float, list[float]]]]:
    settings = RegistrySettings(
        state_dir=state, database_url=url, network="regtest", publish_interval=0,
        signup_limit=GENEROUS, public_limit=GENEROUS, auto_migrate=False,
    )  # fmt: skip
    # Publishing a directory of 70,000 public proxies on start fails on PostgreSQL today (one
    # bind parameter per proxy in verdicts_for, over asyncpg's 32,767); the dashboard does
    # not read the directory, so a fresh stand-in publication lets the app start.
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    body = json.dumps({"document": {"fresh_until": int(time.time()) + 10**6}})
    await conn.execute(
        "INSERT INTO publications (serial, published_at, body) VALUES (1, $1, $2) "
        "ON CONFLICT DO NOTHING",
        int(time.time()),
        body,
    )
    admin_token = new_token()  # a second admin token: a reused database has one already
    await conn.execute(
        "INSERT INTO api_tokens (role, operator_id, token_hash, created_at, probe_id) "
        "VALUES ('admin', NULL, $1, 0, NULL)",
        token_hash(admin_token),
    )
    await conn.close()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://registry.bench") as public,
            httpx.AsyncClient(transport=transport, base_url="http://registry.bench") as operator,
            httpx.AsyncClient(transport=transport, base_url="http://registry.bench") as funder,
        ):
            made = await public.post("/api/v1/operators", json={"name": f"bench-{os.getpid()}"})
            op_token = made.json()["token"]
            op_id = made.json()["operator_id"]
            conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
            await conn.execute("UPDATE proxies SET operator_id = $1 WHERE id <= 100", op_id)
            await conn.close()
            for client, token in ((operator, op_token), (funder, admin_token)):
                page = await client.get("/ui/signin")
                csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
                signed = await client.post("/ui/signin", data={"token": token, "csrf": csrf})
                assert signed.status_code == 303, signed.text
            pages = [
                ("/ui/ (network now)", public, "/ui/"),
                ("/ui/proxies (page 1)", public, "/ui/proxies"),
                ("/ui/proxies (after 90,000)", public, "/ui/proxies?after=90000"),
                ("/ui/reachability (30 days)", public, "/ui/reachability"),
                ("/ui/blocking (time to block)", public, "/ui/blocking"),
                ("/ui/censor", public, "/ui/censor"),
                ("/ui/operator (100 proxies)", operator, "/ui/operator"),
                ("/ui/operator/proxies/50", operator, "/ui/operator/proxies/50"),
                ("/ui/funder", funder, "/ui/funder"),
            ]
            out = []
            for label, client, path in pages:
                times = []
                # The first request computes the public aggregates (reused for a minute)
                # and warms PostgreSQL's cache: shown apart from the rest.
                for _ in range(repeat + 1):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                out.append((label, (times[0], times[1:])))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--database", help="measure a database a --keep run left (migrated to the newest first)"
    )
    args = parser.parse_args()
    console = Console()
    name = args.database or f"resist_bench_dash_{os.getpid()}"
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    if not args.database:
        await admin(f'CREATE DATABASE "{name}"')
    try:
        await migrate(url)
        if not args.database:
            console.print(f"filling {name}: {args.proxies} proxies, {args.days} days")
            await fill(url, args.proxies, args.days, console)
        with tempfile.TemporaryDirectory() as state:
            results = await measure(url, Path(state), args.repeat)
    finally:
        if not args.keep:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    table = Table(
        title=f"dashboard server time per page, PostgreSQL, {args.proxies:,} proxies, "
        f"{args.days} days ({args.repeat} requests each)"
    )
    for col in ("page", "first ms", "median ms", "p95 ms"):
        table.add_column(col, justify="right" if col != "page" else "left")
    for label, (first, times) in results:
        p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
        table.add_row(label, f"{first:.1f}", f"{statistics.median(times):.1f}", f"{p95:.1f}")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
