"""Publishing a directory of more proxies than a statement may have parameters (PostgreSQL).

asyncpg refuses a statement with more than 32,767 bound parameters, and the
directory's queries once bound one per proxy: above that many public proxies
the start-up publication raised and took ``resist registry serve`` down.  The
rows here are inserted in SQL (generate_series), as many as it takes, so the
test stays quick; the directory is then published by the app's own start-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from resistance.probe import rollup
from resistance.registry import measurements, services
from resistance.registry.blocklist import address_hex
from resistance.registry.measurements import recent_days
from tests.registry.conftest import PG_URL, _pg_admin, start_registry

MANY = 33_000  # above asyncpg's 32,767 parameters per statement


@pytest.fixture
async def pg_url(pg_template: str) -> AsyncIterator[str]:
    name = f"resist_scale_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield PG_URL.format(name=name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _fill(url: str, proxies: int, now: int) -> None:
    """``proxies`` public SOCKS5 proxies; every third blocked in RU, the rest functional;
    today's rollups from a control and an RU vantage; every proxy flagged by the current
    blocklist import (every seventh listed)."""
    today = recent_days(now)[0]
    thr = rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
    lat = rollup.empty(rollup.LATENCY_BOUNDS_MS)
    statements = [
        # no per-row triggers while filling (the dashboard's daily sums, a hot row per day,
        # made the rollups' insert take minutes on a loaded machine): the sums come after
        "SET session_replication_role = replica",
        f"INSERT INTO operators (id, name, created_at) VALUES (1, 'op', {now})",
        f"""INSERT INTO proxies (id, operator_id, host, port, network, public_key, protocols,
              probe_user, probe_password, credentials, public, status, registered_at,
              verified_at)
            SELECT g, 1, '10.' || (g >> 16) % 256 || '.' || (g >> 8) % 256 || '.' || g % 256,
              1080, '10.0.0.0/24', 'k', '["socks5"]'::json, 'p', 'p',
              '[{{"username": "u", "password": "p"}}]'::json, true, 'active', {now}, {now}
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO probe_accounts (id, name, public_key, country, control, created_at)
            VALUES (1, 'ru-1', 'a', 'RU', false, {now}), (2, 'de-1', 'b', 'DE', true, {now})""",
        f"""INSERT INTO proxy_verdicts (proxy_id, verdict, blocked_in, since, updated_at)
            SELECT g, CASE WHEN g % 3 = 0 THEN 'blocked' ELSE 'functional' END,
              CASE WHEN g % 3 = 0 THEN '["RU"]' ELSE '[]' END::json, {now} - 60, {now}
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO probe_rollups (proxy_id, day, country, control, attempts, successes,
              latency_hist, latency_p50_ms, latency_p90_ms, throughput_hist,
              throughput_p50_kbps)
            SELECT g, '{today}', CASE WHEN c THEN 'DE' ELSE 'RU' END, c, 10,
              CASE WHEN c OR g % 3 <> 0 THEN 9 ELSE 0 END, '{json.dumps(lat)}'::json, 50, 100,
              '{json.dumps(thr)}'::json, 800
            FROM generate_series(1, {proxies}) g, (VALUES (true), (false)) v(c)""",
        f"""INSERT INTO probe_evidence (proxy_id, probe_id, country, control, last_at, last_ok,
              fail_streak, fail_windows, mechanism, transports)
            SELECT g, 1, 'RU', false, {now} - 30, g % 3 <> 0, 0, '[]'::json,
              CASE WHEN g % 3 = 0 THEN 'tcp_rst' ELSE NULL END, NULL
            FROM generate_series(1, {proxies}) g""",
        f"""INSERT INTO blocklist_imports (source, kind, updated, imported_at, prefixes, ranges,
              skipped) VALUES ('dump', 'dump', NULL, {now}, 1, 1, 0)""",
        f"""INSERT INTO proxy_blocklist_flags (proxy_id, import_id, listed, checked_at)
            SELECT g, (SELECT max(id) FROM blocklist_imports), g % 7 = 0, {now}
            FROM generate_series(1, {proxies}) g""",
        """INSERT INTO dashboard_daily_reach (day, control, attempts, successes)
            SELECT day, control, sum(attempts), sum(successes) FROM probe_rollups
            GROUP BY day, control""",
        "SET session_replication_role = DEFAULT",
        "SELECT setval('proxies_id_seq', 10000000), setval('operators_id_seq', 1000)",
        "ANALYZE",
    ]
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_start_up_publishes_more_proxies_than_parameters(tmp_path: Path, pg_url: str) -> None:
    now = int(time.time())
    await _fill(pg_url, MANY, now)
    async with start_registry(tmp_path / "registry", pg_url) as reg:
        answer = await reg.client().get("/api/v1/directory")
        assert answer.status_code == 200, answer.text
    entries = answer.json()["document"]["proxies"]
    assert len(entries) == MANY
    by_host = {e["endpoint"]["host"]: e for e in entries}
    # proxy 33,000 (10.0.128.232) is blocked (33,000 = 3 * 11,000) and listed by the censor
    # (7 * 4,714 = 32,998: not listed); 32,998 (10.0.128.230) is listed and functional
    last, listed = by_host["10.0.128.232"], by_host["10.0.128.230"]
    assert last["status"] == "blocked:RU"
    assert last["measurements"]["blocked_in"] == ["RU"]
    assert last["measurements"]["censor_listed"] is False
    assert last["measurements"]["reachability"]["RU"]["successes"] == 0
    assert last["measurements"]["reachability"]["DE"]["successes"] == 9
    assert last["measurements"]["reach"] == {"ru-1": {"socks5": "tcp_rst"}}
    assert listed["status"] == "functional"
    assert listed["measurements"]["censor_listed"] is True
    assert listed["measurements"]["reach"] == {"ru-1": {"socks5": "ok"}}
    assert sum(e["status"] == "blocked:RU" for e in entries) == MANY // 3


async def test_a_failed_start_up_publication_is_one_line_and_the_server_serves(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())
    await _fill(pg_url, 10, now)
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""), timeout=5)
    try:  # a real database failure: the verdicts' table is not there
        await conn.execute("ALTER TABLE proxy_verdicts RENAME TO proxy_verdicts_away")
    finally:
        await conn.close()
    with caplog.at_level(logging.ERROR, logger=services.log.name):
        async with start_registry(tmp_path / "registry", pg_url) as reg:
            health = await reg.client().get("/api/v1/directory")
            operators = await reg.client().post("/api/v1/operators", json={"name": "alice"})
    assert health.status_code == 404  # nothing published, but the server answers
    assert operators.status_code == 201, operators.text
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    message = failures[0].getMessage()
    assert "publication at start-up failed" in message and "proxy_verdicts" in message
    assert "\n" not in message and failures[0].exc_info is None


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(400):  # 20 s at most
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {what}")


async def test_periodic_publication_failure_keeps_the_task_alive(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _fill(pg_url, 10, int(time.time()))
    async with start_registry(tmp_path / "registry", pg_url, publish_interval=0.05) as reg:

        async def serial() -> int:
            answer = await reg.client().get("/api/v1/directory")
            return int(answer.json()["document"]["serial"])

        async def failed() -> bool:
            return any("periodic publication failed" in m for m in caplog.messages)

        first = await serial()
        conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""), timeout=5)
        try:
            with caplog.at_level(logging.ERROR, logger=services.log.name):
                await conn.execute("ALTER TABLE proxy_verdicts RENAME TO proxy_verdicts_away")
                await _until(failed, "a failed periodic publication")
                await conn.execute("ALTER TABLE proxy_verdicts_away RENAME TO proxy_verdicts")
        finally:
            await conn.close()
        published_since = await serial()

        async def republished() -> bool:
            return await serial() > published_since

        await _until(republished, "a publication after the failure")
    assert published_since >= first


@pytest.mark.parametrize("lookups_at_most", [0, 10**6], ids=["walk", "lookups"])
async def test_a_new_blocklist_import_reflags_every_proxy_at_the_next_publication(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, lookups_at_most: int
) -> None:
    """After an import every flag is stale: many are found by one walk of the ranges,
    a few by one query each; both say the same."""
    monkeypatch.setattr(measurements, "LOOKUPS_AT_MOST", lookups_at_most)
    now = int(time.time())
    count = 1500
    await _fill(pg_url, count, now)
    ranges = [
        (address_hex("10.0.1.0"), address_hex("10.0.1.255")),  # proxies 256..511
        (address_hex("10.0.5.1"), address_hex("10.0.5.1")),  # proxy 1281
        (address_hex("10.0.5.4"), address_hex("10.0.9.0")),  # 1284..1500 and beyond
        (address_hex("2001:db8::"), address_hex("2001:db8::ffff")),  # no proxy
    ]
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""), timeout=5)
    try:
        new = await conn.fetchval(
            "INSERT INTO blocklist_imports (source, kind, updated, imported_at, prefixes, "
            "ranges, skipped) VALUES ('dump-2', 'dump', NULL, $1, 4, 4, 0) RETURNING id",
            now,
        )
        # the new version: the ranges it adds (an earlier version's would end here)
        await conn.execute(
            "UPDATE blocklist_spans SET until_import = $1 WHERE until_import IS NULL", new
        )
        await conn.executemany(
            "INSERT INTO blocklist_spans (start_hex, end_hex, first_import) VALUES ($1, $2, $3)",
            [(a, b, new) for a, b in ranges],
        )
        await conn.execute("DELETE FROM proxy_blocklist_flags WHERE proxy_id % 2 = 0")
    finally:
        await conn.close()
    async with start_registry(tmp_path / "registry", pg_url) as reg:
        entries = (await reg.client().get("/api/v1/directory")).json()["document"]["proxies"]
    listed = {
        int(e["endpoint"]["host"].split(".")[2]) * 256 + int(e["endpoint"]["host"].split(".")[3])
        for e in entries
        if e["measurements"]["censor_listed"]
    }
    assert listed == {*range(256, 512), 1281, *range(1284, count + 1)}
    assert all(e["measurements"]["censor_listed"] is not None for e in entries)
    conn = await asyncpg.connect(pg_url.replace("+asyncpg", ""), timeout=5)
    try:
        flags = await conn.fetch("SELECT import_id, listed FROM proxy_blocklist_flags")
    finally:
        await conn.close()
    assert len(flags) == count and {f["import_id"] for f in flags} == {new}
    assert sum(f["listed"] for f in flags) == len(listed)
