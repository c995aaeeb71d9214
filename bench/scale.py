"""Scale benchmark (issue 25): the registry at 10k-100k proxies, 100 probes, 30 days.

For each size it makes a fresh PostgreSQL database (``resist_bench_scale_<pid>_<size>``,
dropped at the end), migrates it and loads, with COPY (asyncpg
``copy_records_to_table``): N proxies from N/5 operators (each with a regtest
payout address), 100 probe accounts (60 % inside RU, the rest control
vantages in DE and NL) with their own Ed25519 keys and tokens, each live
(a batch a minute ago, so each pulls only its share of the proxies), every
probe's evidence for every proxy, a verdict and its history per proxy, 30
days of daily rollups per proxy and vantage country, and some raw results
(5 per proxy, in batches of 50 whose body is a real signed batch).  Then it
starts ``resist registry serve`` on it (a real process, with a canary) and,
over HTTP as probes and the funder do, measures one step after another:

* **start**: the server's start-up, which publishes a directory when none is
  fresh (when it fails, a stand-in publication is inserted so the other steps
  can still be measured, and the table says so);
* **publish**: ``POST /api/v1/directory/publish`` (build and sign);
* **assignment**: ``GET /api/v1/probe/assignment`` for three probes (bytes, seconds);
* **ingest**: signed batches of 50 results built with the probe's own code
  (``CheckResult`` -> ``result_json`` -> ``sign_batch``, canary proofs from
  the canary's ``answer`` with the server's canary key), made before the
  clock starts by several sender processes and uploaded through the agent's
  ``RegistryLink``, every probe one batch at a time as an agent does, each
  probe's batches only of the proxies its assignment (pulled first, through
  the same link) gives it; results per second are the results the registry
  counted (a result row each), and any it kept without counting fail the step;
* **round**: ``POST /api/v1/grants/rounds`` over the 30 loaded days, while
  ``GET /healthz`` is asked every 250 ms, within the public rate limit
  (p50/p99/max latency of the answered requests; a 429 is counted apart);
* **database**: its size, and the growth per million results ingested.

The server's peak RSS (its process tree, sampled with psutil every 20 ms) is
shown per step.  Every step has a deadline and shows ``failed: <one line>``
instead of hanging.  ``--sizes 10000,100000`` runs each size in turn and
prints the growth table (each figure per size and the ratio largest /
smallest) and writes an SVG plot of it (``--plot``); ``--json`` keeps every
figure, and ``--report A.json B.json`` makes the tables and plot from kept runs
(BEFORE and AFTER a change).  A step that runs out of time, or a server past
``--max-rss``, fails its step and the server is restarted for the next one.

    .venv/bin/python bench/scale.py --sizes 10000                # one size
    .venv/bin/python bench/scale.py --sizes 10000,100000 --plot docs/scale-growth.svg
    .venv/bin/python bench/scale.py --report docs/scale-before.json after.json
    .venv/bin/python bench/scale.py --quick                     # 1k proxies, 5 probes, 2 days
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import importlib
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import bdkpython as bdk
import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dashboard import admin  # the loopback PostgreSQL the other registry benches use
from resistance.directory.keys import public_key_text
from resistance.probe import rollup
from resistance.probe.agent import AgentSettings, RegistryLink, Upload
from resistance.probe.batch import MAX_RESULTS, new_batch_id, result_json, sign_batch
from resistance.probe.canary import answer, bound_nonce
from resistance.probe.check import CheckVerdict, Failure, Step, Timings
from resistance.probe.exchange import CanaryProof
from resistance.probe.runner import CheckResult, Target
from resistance.registry.canary import load_or_create_canary_key
from resistance.registry.db import migrate
from resistance.registry.tokens import new_token, token_hash

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
#: The migration that keeps dashboard_daily_reach equal to the rollups' sums (its
#: triggers are off while loading; its backfill query fills the table once after).
DASHBOARD_MIGRATION = "resistance.registry.migrations.versions.0011_dashboard"
CHECKS_PER_DAY = 144  # every 10 minutes, the registry's default probe round
INSIDE = "RU"
CONTROLS = ("DE", "NL")
USER, PASSWORD = "probe", "probe-secret"
#: Probes per proxy and vantage network (the registry's default probe_replicas).
REPLICAS = 3


@dataclass(frozen=True, slots=True)
class Plan:
    proxies: int
    probes: int = 100
    days: int = 30
    raw_per_proxy: int = 5
    ingest_results: int = 10_000
    senders: int = 4
    step_timeout: float = 600.0
    load_timeout: float = 3600.0
    #: The server is stopped when its RSS passes this (bytes); its step fails.
    max_rss: float = 8e9

    @property
    def operators(self) -> int:
        return max(1, self.proxies // 5)


def probe_country(i: int, probes: int) -> tuple[str, bool]:
    """Probe ``i`` (1-based): inside RU for the first 60 %, else a control in DE or NL."""
    if i <= max(1, probes * 6 // 10):
        return INSIDE, False
    return CONTROLS[i % 2], True


def probe_key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"scale-probe-%d" % i).digest())


def blocked(proxy_id: int) -> bool:
    """30 % of proxies are blocked inside RU (their inside checks fail)."""
    return proxy_id % 10 < 3


# --- figures --------------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    step: str
    name: str
    value: float | None = None
    text: str = ""
    #: Why the step failed (one line), or None.
    failed: str | None = None


@dataclass(slots=True)
class Run:
    plan: Plan
    figures: list[Figure] = field(default_factory=list)
    #: The machine's 1-minute load average when the run ended (it shares the machine).
    load_average: float = 0.0

    def add(self, step: str, name: str, value: float | None, text: str) -> None:
        self.figures.append(Figure(step, name, value, text))

    def fail(self, step: str, name: str, why: str) -> None:
        self.figures.append(Figure(step, name, None, f"failed: {why}", why))

    def json(self) -> dict[str, Any]:
        return {
            "proxies": self.plan.proxies,
            "probes": self.plan.probes,
            "days": self.plan.days,
            "load_average": self.load_average,
            "figures": [
                {"step": f.step, "name": f.name, "value": f.value, "text": f.text,
                 "failed": f.failed}
                for f in self.figures
            ],
        }  # fmt: skip


def run_from_json(data: dict[str, Any]) -> Run:
    """A run as ``Run.json`` wrote it (for ``--report``)."""
    run = Run(Plan(data["proxies"], probes=data["probes"], days=data["days"]))
    run.load_average = data.get("load_average", 0.0)
    run.figures = [
        Figure(f["step"], f["name"], f["value"], f["text"], f["failed"]) for f in data["figures"]
    ]
    return run


class StepFailed(Exception):
    """A step's one-line reason for failing; ``stuck``: the server may still be at it."""

    def __init__(self, why: str, *, stuck: bool = False) -> None:
        super().__init__(why)
        self.stuck = stuck


def one_line(text: str, limit: int = 150) -> str:
    """The line of an error output that says what went wrong (a traceback's last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Timeout\w*|Exit)\b.*", line):
            found = line
            break
    else:
        found = lines[-1] if lines else "no output"
    found = re.sub(r"^[\w.]+\.(\w+(Error|Exception))", r"\1", found)
    # SQLAlchemy's wrapping names the driver's exception class again: once is enough.
    found = re.sub(r"\((sqlalchemy|asyncpg)[\w.]*\)\s*|<class '[\w.]+'>:\s*", "", found)
    return found if len(found) <= limit else found[: limit - 1] + "…"


async def within(seconds: float, what: str, work: Awaitable[Any]) -> Any:
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise StepFailed(f"{what} took longer than {seconds:.0f} s", stuck=True) from None


# --- the results probes send (the probe's own code) ------------------------------------


def check_results(
    *,
    key: Ed25519PrivateKey,
    canary: Ed25519PrivateKey,
    country: str,
    proxy_ids: Sequence[int],
    at: int,
    rnd: random.Random,
) -> list[dict[str, Any]]:
    """Batch RESULT objects for checks of ``proxy_ids`` at ``at``, as ``result_json`` makes
    them: a functional check carries the canary's answer to the nonce bound to this probe,
    proxy and time; a check of a blocked proxy from inside fails at CONNECT."""
    mine = public_key_text(key.public_key())
    upload = b"\x00" * 1024
    upload_sha256 = hashlib.sha256(upload).digest()
    out = []
    for proxy_id in proxy_ids:
        target = Target(f"10.0.0.{proxy_id % 250 + 1}", 1080, USER, PASSWORD, proxy_id)
        if country == INSIDE and blocked(proxy_id):
            verdict = CheckVerdict(False, Step.CONNECT, Failure.TIMEOUT, "no reply in 10 s")
            timings = Timings(tcp_us=rnd.randrange(20_000, 90_000))
            proof = None
        else:
            verdict = CheckVerdict(True, None, None, "")
            nonce = bound_nonce(mine, proxy_id, at)
            signature = answer(canary, nonce, upload_sha256, 8192, now=at)[:64]
            proof = CanaryProof(nonce, upload_sha256, 8192, signature)
            connect = rnd.randrange(40_000, 400_000)
            timings = Timings(connect // 3, connect, connect // 2, rnd.randrange(500, 40_000))
        result = CheckResult(target, at, [], verdict, timings, proof)
        out.append(result_json(result))
    return out


# --- loading --------------------------------------------------------------------------


def regtest_address(operator: int) -> str:
    script = bdk.Script(b"\x00\x14" + hashlib.sha256(b"scale-op-%d" % operator).digest()[:20])
    return str(bdk.Address.from_script(script, bdk.Network.REGTEST))


def _host(proxy_id: int) -> tuple[str, str]:
    a, b, c = (proxy_id >> 16) % 256, (proxy_id >> 8) % 256, proxy_id % 256
    return f"10.{a}.{b}.{c}", f"10.{a}.{b}.0/24"


@dataclass(slots=True)
class Fleet:
    """What the generator made and the senders need: the probes' tokens and the admin's."""

    admin_token: str
    probe_tokens: dict[int, str]


def table_rows(
    plan: Plan, now: int, fleet: Fleet, canary: Ed25519PrivateKey
) -> Iterator[tuple[str, list[str], int, Iterator[tuple[Any, ...]]]]:
    """(table, columns, row count, rows) in load order."""
    n, probes, days = plan.proxies, plan.probes, plan.days
    ops = plan.operators

    def operators() -> Iterator[tuple[Any, ...]]:
        for o in range(1, ops + 1):
            yield o, f"scale-op-{o}", now - 90 * 86400, regtest_address(o), "p2wpkh"

    creds = json.dumps([{"username": "user", "password": "pass"}])

    def proxies() -> Iterator[tuple[Any, ...]]:
        for g in range(1, n + 1):
            host, network = _host(g)
            since = now - 86400 * (days + 5) - g % 86400
            yield (g, 1 + g % ops, host, 1080, network, "k" * 43, '["socks5"]', USER, PASSWORD,
                   creds, g % 10 < 7, "active", since, since)  # fmt: skip

    countries = [probe_country(i, probes) for i in range(1, probes + 1)]

    def accounts() -> Iterator[tuple[Any, ...]]:
        for i, (country, control) in enumerate(countries, 1):
            # Every probe live (it sent a batch a minute ago): each pulls only its share.
            yield (i, f"scale-{i}", public_key_text(probe_key(i).public_key()), country,
                   control, now, now - 60)  # fmt: skip

    def tokens() -> Iterator[tuple[Any, ...]]:
        yield "admin", None, token_hash(fleet.admin_token), now, None
        for i, token in fleet.probe_tokens.items():
            yield "probe", None, token_hash(token), now, i

    window = now // 3600

    def evidence() -> Iterator[tuple[Any, ...]]:
        for g in range(1, n + 1):
            for i, (country, control) in enumerate(countries, 1):
                failing = country == INSIDE and blocked(g)
                fails = f"[{window - 1}, {window}]" if failing else "[]"
                yield (g, i, country, control, now - (g * 7 + i) % 600, not failing,
                       5 if failing else 0, fails, "timeout" if failing else "ok")  # fmt: skip

    def verdicts() -> Iterator[tuple[Any, ...]]:
        for g in range(1, n + 1):
            yield (g, "blocked" if blocked(g) else "functional",
                   '["RU"]' if blocked(g) else "[]", now - 86400, now - 300)  # fmt: skip

    def history() -> Iterator[tuple[Any, ...]]:
        for g in range(1, n + 1):
            yield g, now - 86400 * days, "functional", "[]", "untested"
            if blocked(g):
                yield g, now - 86400, "blocked", '["RU"]', "functional"

    lat, thr = rollup.empty(rollup.LATENCY_BOUNDS_MS), rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
    sides: dict[tuple[str, bool], int] = {}
    for side in countries:
        sides[side] = sides.get(side, 0) + 1
    day0 = dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=days)
    day_names = [(day0 + dt.timedelta(days=d)).isoformat() for d in range(days)]

    hists: dict[int, tuple[str, str]] = {}  # per success count: its two histograms as JSON

    def histograms(ok: int) -> tuple[str, str]:
        if ok not in hists:
            h, t = list(lat), list(thr)
            h[9], h[11], t[7] = ok * 2 // 3, ok - ok * 2 // 3, ok
            hists[ok] = json.dumps(h), json.dumps(t)
        return hists[ok]

    def rollups() -> Iterator[tuple[Any, ...]]:
        for g in range(1, n + 1):
            blocked_from = days - 1 - g % 7 if blocked(g) else days
            for d, day in enumerate(day_names):
                for (country, control), count in sides.items():
                    attempts = count * CHECKS_PER_DAY
                    ok = attempts - (g + d) % 5
                    if country == INSIDE and d >= blocked_from:
                        ok = 0
                    h, t = histograms(ok)
                    yield (g, day, country, control, attempts, ok, h, 50 if ok else None,
                           100 if ok else None, t, 8000 if ok else None)  # fmt: skip

    # Raw results: a real signed batch's body stands for every stored batch's body (same
    # size and shape); the rows are what the registry keeps of each result.
    rnd = random.Random(7)
    body = sign_batch(
        key=probe_key(1), probe_key=public_key_text(probe_key(1).public_key()),
        batch_id=new_batch_id(), vantage="scale-1", country=countries[0][0], created_at=now,
        results=check_results(key=probe_key(1), canary=canary, country=countries[0][0],
                              proxy_ids=range(1, min(n, MAX_RESULTS) + 1), at=now, rnd=rnd),
    ).decode()  # fmt: skip
    per_batch = MAX_RESULTS
    raw = n * plan.raw_per_proxy
    n_batches = -(-raw // per_batch)

    def batch_layout() -> Iterator[tuple[int, int, list[int]]]:
        for b in range(n_batches):
            first = b * per_batch
            ids = [(k % n) + 1 for k in range(first, min(raw, first + per_batch))]
            yield b, 1 + b % probes, ids

    def batches() -> Iterator[tuple[Any, ...]]:
        for b, probe, ids in batch_layout():
            at = now - 86400 + (b * 86400 // max(1, n_batches))
            yield f"{b:032x}", probe, f"{b:064x}", at, at, len(ids), body

    def results() -> Iterator[tuple[Any, ...]]:
        for b, probe, ids in batch_layout():
            at = now - 86400 + (b * 86400 // max(1, n_batches))
            country, control = countries[probe - 1]
            for g in ids:
                ok = not (country == INSIDE and blocked(g))
                yield (f"{b:032x}", probe, g, at, country, control, ok,
                       None if ok else "connect", None if ok else "timeout",
                       "" if ok else "no reply in 10 s", 120_000 if ok else None,
                       60_000 if ok else None, 8_000 if ok else None, None)  # fmt: skip

    blocked_count = sum(1 for g in range(1, n + 1) if blocked(g))
    yield (
        "operators",
        ["id", "name", "created_at", "payout_address", "payout_type"],
        ops,
        operators(),
    )
    yield (
        "proxies",
        ["id", "operator_id", "host", "port", "network", "public_key", "protocols",
         "probe_user", "probe_password", "credentials", "public", "status", "registered_at",
         "verified_at"],
        n,
        proxies(),
    )  # fmt: skip
    yield (
        "probe_accounts",
        ["id", "name", "public_key", "country", "control", "created_at", "last_batch_at"],
        probes,
        accounts(),
    )
    yield (
        "api_tokens",
        ["role", "operator_id", "token_hash", "created_at", "probe_id"],
        probes + 1,
        tokens(),
    )
    yield (
        "probe_evidence",
        ["proxy_id", "probe_id", "country", "control", "last_at", "last_ok", "fail_streak",
         "fail_windows", "mechanism"],
        n * probes,
        evidence(),
    )  # fmt: skip
    yield (
        "proxy_verdicts",
        ["proxy_id", "verdict", "blocked_in", "since", "updated_at"],
        n,
        verdicts(),
    )
    yield (
        "proxy_verdict_history",
        ["proxy_id", "at", "verdict", "blocked_in", "previous"],
        n + blocked_count,
        history(),
    )
    yield (
        "probe_rollups",
        ["proxy_id", "day", "country", "control", "attempts", "successes", "latency_hist",
         "latency_p50_ms", "latency_p90_ms", "throughput_hist", "throughput_p50_kbps"],
        n * days * len(sides),
        rollups(),
    )  # fmt: skip
    yield (
        "probe_batches",
        ["batch_id", "probe_id", "digest", "created_at", "received_at", "result_count", "body"],
        n_batches,
        batches(),
    )
    yield (
        "probe_results",
        ["batch_id", "probe_id", "proxy_id", "measured_at", "country", "control", "ok", "step",
         "failure", "detail", "connect_us", "ttfb_us", "throughput_kbps", "mechanism"],
        raw,
        results(),
    )  # fmt: skip


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def load(
    dsn: str, plan: Plan, fleet: Fleet, canary: Ed25519PrivateKey, console: Console
) -> dict[str, int]:
    """COPY every table; foreign-key and dashboard triggers off while loading (replica
    role), the dashboard's per-day totals filled once after by its migration's backfill."""
    now = int(time.time())
    conn = await asyncpg.connect(dsn, timeout=10)
    counts: dict[str, int] = {}
    try:
        await conn.execute("SET session_replication_role = replica")
        with Progress(console=console, transient=True) as progress:
            for table, columns, count, rows in table_rows(plan, now, fleet, canary):
                task = progress.add_task(f"COPY {table}", total=count)
                for chunk in _chunks(rows, 50_000):
                    await conn.copy_records_to_table(table, records=chunk, columns=columns)
                    progress.advance(task, len(chunk))
                counts[table] = count
        await conn.execute("SET session_replication_role = DEFAULT")
        backfill = importlib.import_module(DASHBOARD_MIGRATION).BACKFILL
        await conn.execute(backfill)
        for table in ("operators", "proxies", "probe_accounts"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return counts


# --- the server ------------------------------------------------------------------------


class Server:
    """``resist registry serve`` in its own process, with its RSS sampled."""

    def __init__(self, url: str, state: Path, max_rss: float) -> None:
        self.url, self.state, self.max_rss = url, state, max_rss
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.err_path = state / "server.err"
        self._err_mark = 0
        self.peak = 0
        self.over_limit = False
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        resist = Path(sys.executable).parent / "resist"
        err = self.err_path.open("ab")
        self.proc = subprocess.Popen(
            [str(resist), "registry", "serve", "--listen", "127.0.0.1:0", "--db", self.url,
             "--state-dir", str(self.state), "--network", "regtest", "--publish-interval", "0",
             "--canary", "127.0.0.1:0", "--no-migrate", "--max-connections", "2000"],
            stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
        err.close()

    async def start(self, deadline: float) -> float:
        self._spawn()
        self._start_sampler()
        started = time.monotonic()
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        found = re.search(rb"http://127\.0\.0\.1:(\d+)", line)
        if found is None:
            raise StepFailed(self.error_since_mark() or f"server said {line!r}")
        self.port = int(found[1])
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() - started < deadline:
                if self.proc.poll() is not None:
                    raise StepFailed(f"server exited at start-up: {self.error_since_mark()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.base + "/healthz")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise StepFailed(f"server did not answer within {deadline:.0f} s")

    def _start_sampler(self) -> None:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(0.02):
                try:
                    rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)
                if rss > self.max_rss and self.proc is not None:
                    # Other work shares this machine: a server over the limit is stopped
                    # (its step then fails with the reason) rather than left to grow.
                    self.over_limit = True
                    self.proc.kill()

        self._sampler = threading.Thread(target=sample, name="scale-rss-sampler", daemon=True)
        self._sampler.start()

    def mark(self) -> None:
        """Start a step: peak RSS and error output counted from here."""
        self.peak = 0
        self._err_mark = self.err_path.stat().st_size if self.err_path.exists() else 0

    def error_since_mark(self) -> str:
        if not self.err_path.exists():
            return ""
        with self.err_path.open("rb") as f:
            f.seek(self._err_mark)
            text = f.read().decode(errors="replace")
        return one_line(text) if text.strip() else ""

    async def restart(self, deadline: float) -> float:
        self.stop()
        self.over_limit = False
        return await self.start(deadline)

    def stop(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(2)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


async def _request(
    server: Server, client: httpx.AsyncClient, method: str, path: str, **kw: Any
) -> httpx.Response:
    response = await client.request(method, server.base + path, **kw)
    if response.status_code >= 400:
        detail = server.error_since_mark() or one_line(response.text)
        raise StepFailed(f"HTTP {response.status_code}: {detail}")
    return response


# --- ingest: sender processes ----------------------------------------------------------


def sender(
    index: int,
    args: dict[str, Any],
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """Build this sender's share of signed batches, wait for ``go``, upload them with one
    agent link per probe (each probe one batch at a time, all probes at once)."""
    try:
        out.put((index, asyncio.run(_send(index, args, ready, go))))
    except Exception as exc:  # reported as the step's one line
        out.put((index, {"error": f"{type(exc).__name__}: {exc}"}))


def _agent_settings(args: dict[str, Any], probe: int) -> AgentSettings:
    country, _ = probe_country(probe, args["probes"])
    return AgentSettings(
        registry=args["base"], token=args["tokens"][str(probe)], vantage=f"scale-{probe}",
        country=country, state_dir=Path(args["state"]), http_timeout=args["timeout"],
    )  # fmt: skip


async def _send(index: int, args: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    canary = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args["canary"]))
    probes, senders = args["probes"], args["senders"]
    mine = [i for i in range(1, probes + 1) if i % senders == index]
    total_batches = -(-args["results"] // MAX_RESULTS)
    share = [b for b in range(total_batches) if b % senders == index]
    rnd = random.Random(index)
    queues: dict[int, list[tuple[bytes, int]]] = {i: [] for i in mine}
    now = int(time.time())
    # As an agent does at the start of a round: pull the assignment (its share of the
    # proxies, a few replicas per vantage network) and measure only that.
    shares: dict[int, list[int]] = {}
    for probe in mine:
        link = RegistryLink(_agent_settings(args, probe))
        try:
            got = await link.assignment()
        finally:
            await link.close()
        shares[probe] = sorted(t["proxy_id"] for t in got["proxies"])
    mine = [p for p in mine if shares[p]]
    for k, b in enumerate(share):
        if not mine:
            break
        probe = mine[k % len(mine)]
        country, _ = probe_country(probe, probes)
        own = shares[probe]
        start = rnd.randrange(len(own))
        ids = sorted({own[(start + j) % len(own)] for j in range(min(len(own), MAX_RESULTS))})
        key = probe_key(probe)
        results = check_results(key=key, canary=canary, country=country, proxy_ids=ids,
                                at=now - rnd.randrange(60, 240) - b % 7, rnd=rnd)  # fmt: skip
        data = sign_batch(
            key=key, probe_key=public_key_text(key.public_key()), batch_id=new_batch_id(),
            vantage=f"scale-{probe}", country=country, created_at=now, results=results,
        )  # fmt: skip
        queues[probe].append((data, len(results)))
    ready.set()
    await asyncio.to_thread(go.wait)
    began = time.time()
    stored = errors = 0
    first_error = ""

    async def agent(probe: int) -> None:
        nonlocal stored, errors, first_error
        link = RegistryLink(_agent_settings(args, probe))
        try:
            for data, count in queues[probe]:
                outcome, why = await link.upload(data)
                if outcome is Upload.DONE and why == "stored":
                    stored += count
                else:
                    errors += 1
                    first_error = first_error or f"{outcome.value}: {why}"
        finally:
            await link.close()

    await asyncio.gather(*(agent(p) for p in mine))
    return {
        "began": began,
        "ended": time.time(),
        "stored": stored,
        "errors": errors,
        "first_error": first_error,
        "batches": len(share),
    }


async def ingest(
    server: Server, plan: Plan, fleet: Fleet, canary: Ed25519PrivateKey, state: Path
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in range(plan.senders)]
    go, out = ctx.Event(), ctx.Queue()
    args = {
        "canary": canary.private_bytes_raw().hex(),
        "proxies": plan.proxies, "probes": plan.probes, "senders": plan.senders,
        "results": plan.ingest_results, "base": server.base, "state": str(state),
        "tokens": {str(k): v for k, v in fleet.probe_tokens.items()},
        "timeout": plan.step_timeout,
    }  # fmt: skip
    procs = [
        ctx.Process(target=sender, args=(i, args, ready[i], go, out), name=f"scale-sender-{i}")
        for i in range(plan.senders)
    ]
    for p in procs:
        p.start()
    try:
        for event in ready:
            if not await asyncio.to_thread(event.wait, plan.step_timeout):
                raise StepFailed("senders did not finish signing their batches in time")
        server.mark()
        go_at = time.time()
        go.set()
        reports: list[dict[str, Any]] = []
        for _ in procs:
            try:
                _, report = await asyncio.to_thread(out.get, True, plan.step_timeout)
            except Exception:
                raise StepFailed(f"upload took longer than {plan.step_timeout:.0f} s") from None
            if "error" in report:
                raise StepFailed(f"a sender failed: {report['error']}")
            reports.append(report)
        seconds = max(r["ended"] for r in reports) - go_at
        return {
            "seconds": seconds,
            "stored": sum(r["stored"] for r in reports),
            "errors": sum(r["errors"] for r in reports),
            "first_error": next((r["first_error"] for r in reports if r["first_error"]), ""),
            "batches": sum(r["batches"] for r in reports),
        }
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(10)


# --- the run ----------------------------------------------------------------------------


async def db_sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        total = await conn.fetchval("SELECT pg_database_size(current_database())")
        raw = await conn.fetchval(
            "SELECT pg_total_relation_size('probe_results') + "
            "pg_total_relation_size('probe_batches')"
        )
        results = await conn.fetchval("SELECT count(*) FROM probe_results")
        attempts = await conn.fetchval("SELECT coalesce(sum(attempts), 0) FROM probe_rollups")
        return {"total": total, "raw": raw, "results": results, "attempts": int(attempts)}
    finally:
        await conn.close()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


#: How often the latency poller asks ``GET /healthz``: within the registry's public rate
#: limit (5 requests/s per client network, settings.public_limit), so every answer is
#: the API's, not the limiter's.
POLL_SECONDS = 0.25


async def latency(server: Server, stop: asyncio.Event) -> tuple[list[float], list[str]]:
    """``GET /healthz`` every :data:`POLL_SECONDS` until ``stop``: each request answered
    200 (its time in ms), and what went wrong with the others, a 429 (rate limited: the
    poller asked too often, not a slow API) counted apart from errors."""
    times: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=None) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await client.get(server.base + "/healthz")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            else:
                if response.status_code == 200:
                    times.append((time.perf_counter() - started) * 1000)
                else:
                    errors.append(f"HTTP {response.status_code}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    return times, errors


async def step(
    run: Run,
    server: Server,
    name: str,
    work: Callable[[], Awaitable[None]],
    seconds: float,
    console: Console,
) -> bool:
    first = len(run.figures)
    with console.status(f"{run.plan.proxies:,} proxies: {name}…"):
        server.mark()
        try:
            await within(seconds, name, work())
        except (StepFailed, httpx.HTTPError, OSError, asyncpg.PostgresError) as exc:
            if server.over_limit:
                why = f"server RSS over {server.max_rss / 1e9:.0f} GB: stopped (--max-rss)"
            elif server.proc is not None and server.proc.poll() is not None:
                code = server.proc.returncode
                why = f"server exited ({code}) during the step: {server.error_since_mark()}"
            elif isinstance(exc, StepFailed):
                why = str(exc)
            else:
                why = server.error_since_mark() or one_line(repr(exc))
            run.fail(name, "result", why)
            if server.over_limit or (isinstance(exc, StepFailed) and exc.stuck):
                # The next step gets a server that is not still busy with this one.
                try:
                    await server.restart(seconds)
                except StepFailed as again:
                    run.fail(name, "restart after it", str(again))
            return False
        finally:
            if server.proc is not None:
                run.add(name, "server peak RSS", server.peak / 1e6, mb(server.peak))
            for f in run.figures[first:]:
                console.print(
                    f"[dim]{run.plan.proxies:,} proxies: {name}: {f.name}: {f.text}[/dim]"
                )
    return True


async def measure(plan: Plan, console: Console) -> Run:
    run = Run(plan)
    name = f"resist_bench_scale_{os.getpid()}_{plan.proxies}"
    url = PG_URL.format(name=name)
    dsn = url.replace("+asyncpg", "")
    fleet = Fleet(new_token(), {i: new_token() for i in range(1, plan.probes + 1)})
    await admin(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="resist-scale-") as tmp:
            state = Path(tmp)
            canary = load_or_create_canary_key(state)  # the server loads the same key
            await _measure(run, plan, url, dsn, fleet, canary, state, console)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return run


async def _measure(
    run: Run,
    plan: Plan,
    url: str,
    dsn: str,
    fleet: Fleet,
    canary: Ed25519PrivateKey,
    state: Path,
    console: Console,
) -> None:
    timeout = plan.step_timeout
    started = time.monotonic()
    try:
        await within(timeout, "migrate", migrate(url))
        counts = await within(plan.load_timeout, "load", load(dsn, plan, fleet, canary, console))
    except (StepFailed, asyncpg.PostgresError, OSError) as exc:
        run.fail("load", "result", one_line(str(exc)))
        return
    loaded = await db_sizes(dsn)
    rows = sum(counts.values())
    run.add("load", "seconds", time.monotonic() - started,
            f"{time.monotonic() - started:.0f} s, {rows:,} rows (COPY)")  # fmt: skip
    run.add("load", "database size", loaded["total"] / 1e6, mb(loaded["total"]))
    run.add("load", "evidence rows", counts["probe_evidence"], f"{counts['probe_evidence']:,}")
    run.add("load", "rollup rows", counts["probe_rollups"], f"{counts['probe_rollups']:,}")
    console.print(f"[dim]{plan.proxies:,} proxies: loaded {rows:,} rows in "
                  f"{time.monotonic() - started:.0f} s[/dim]")  # fmt: skip

    server = Server(url, state, plan.max_rss)
    headers = {"Authorization": f"Bearer {fleet.admin_token}"}
    try:

        async def start() -> None:
            seconds = await server.start(timeout)
            run.add("start", "seconds", seconds, f"{seconds:.1f} s (publishes if stale)")

        if not await step(run, server, "start", start, timeout, console):
            # Measure the rest anyway: a fresh stand-in publication lets it start.
            server.stop()
            conn = await asyncpg.connect(dsn, timeout=10)
            body = json.dumps({"document": {"fresh_until": int(time.time()) + 10**6}})
            await conn.execute(
                "INSERT INTO publications (serial, published_at, body) VALUES (1, $1, $2)",
                int(time.time()),
                body,
            )
            await conn.close()
            server = Server(url, state, plan.max_rss)
            server.mark()
            try:
                await within(timeout, "start", server.start(timeout))
            except StepFailed as exc:
                run.fail("start", "with a stand-in publication", str(exc))
                return
            run.add("start", "with a stand-in publication", None, "started (to go on)")

        async with httpx.AsyncClient(timeout=timeout, headers=headers) as funder:

            async def publish() -> None:
                t0 = time.perf_counter()
                answer_ = await _request(server, funder, "POST", "/api/v1/directory/publish")
                seconds = time.perf_counter() - t0
                proxies = answer_.json()["proxies"]
                run.add("publish", "seconds", seconds, f"{seconds:.2f} s, {proxies:,} proxies")

            await step(run, server, "publish", publish, timeout, console)

            async def assignment() -> None:
                # An inside probe's assignment also says what the control vantages last
                # saw of each proxy; a control probe's does not: both are measured, the
                # control one first (it is measured even when the inside one runs out of time).
                control = next(
                    (i for i in range(1, plan.probes + 1) if probe_country(i, plan.probes)[1]),
                    plan.probes,
                )
                async with httpx.AsyncClient(timeout=timeout) as probe:
                    for label, i in (("control", control), ("inside", 1)):
                        t0 = time.perf_counter()
                        got = await _request(
                            server, probe, "GET", "/api/v1/probe/assignment",
                            headers={"Authorization": f"Bearer {fleet.probe_tokens[i]}"},
                        )  # fmt: skip
                        s = time.perf_counter() - t0
                        size, counted = len(got.content), len(got.json()["proxies"])
                        run.add("assignment", f"seconds, {label} probe", s, f"{s:.2f} s")
                        run.add("assignment", f"bytes, {label} probe", size / 1e6,
                                f"{size / 1e6:.1f} MB, {counted:,} proxies")  # fmt: skip

            await step(run, server, "assignment", assignment, timeout, console)

            before = await db_sizes(dsn)

            async def ingest_() -> None:
                done = await ingest(server, plan, fleet, canary, state)
                after = await db_sizes(dsn)
                if done["stored"] == 0:
                    raise StepFailed(done["first_error"] or "nothing stored")
                added = after["results"] - before["results"]
                rate = added / done["seconds"]  # counted: a result row each
                errors = (
                    f", {done['errors']} refused ({done['first_error']})" if done["errors"] else ""
                )
                run.add("ingest", "results per second", rate,
                        f"{rate:,.0f}/s ({done['stored']:,} results, {done['batches']} batches, "
                        f"{plan.senders} senders, {done['seconds']:.1f} s{errors})")  # fmt: skip
                if added != done["stored"]:
                    run.fail("ingest", "rows stored",
                             f"{added} counted of {done['stored']} uploaded")  # fmt: skip
                # Sharded: each proxy is measured by REPLICAS probes of each vantage network.
                networks = {"control" if probe_country(i, plan.probes)[1] else INSIDE
                            for i in range(1, plan.probes + 1)}  # fmt: skip
                per_round = plan.proxies * REPLICAS * len(networks)
                fleet_round = per_round / rate
                run.add("ingest", "one round of the fleet", fleet_round,
                        f"{fleet_round:,.0f} s to ingest {per_round:,} results ({REPLICAS} "
                        f"probes per proxy and network; a round is 600 s)")  # fmt: skip
                per_million = (after["raw"] - before["raw"]) / done["stored"] * 1e6
                run.add(
                    "database",
                    "raw results, per million",
                    per_million / 1e6,
                    f"{per_million / 1e9:.2f} GB per million results (rows + batch bodies)",
                )

            await step(run, server, "ingest", ingest_, timeout * 2, console)

            async def round_() -> None:
                idle_stop = asyncio.Event()
                idle = asyncio.create_task(latency(server, idle_stop), name="scale-idle-latency")
                await asyncio.sleep(2.0)
                idle_stop.set()
                quiet, _ = await idle
                today = dt.datetime.now(dt.UTC).date()
                body = {
                    "round_id": "scale-bench",
                    "period_start": (today - dt.timedelta(days=plan.days)).isoformat(),
                    "period_end": (today - dt.timedelta(days=1)).isoformat(),
                    "budget_sat": 5 * 10**8,
                }
                stop = asyncio.Event()
                busy = asyncio.create_task(latency(server, stop), name="scale-round-latency")
                try:
                    t0 = time.perf_counter()
                    made = await _request(server, funder, "POST", "/api/v1/grants/rounds",
                                          json=body)  # fmt: skip
                    seconds = time.perf_counter() - t0
                finally:
                    stop.set()
                    during, failures = await busy
                if not during:
                    raise StepFailed(f"no GET /healthz answered: {failures[:1]}")
                limited = failures.count("HTTP 429")
                others = [f for f in failures if f != "HTTP 429"]
                payouts = made.json().get("payouts")
                run.add("round", "seconds", seconds, f"{seconds:.1f} s, {payouts:,} payouts")
                run.add("round", "API p50 ms idle", percentile(quiet, 0.5),
                        f"{percentile(quiet, 0.5):.1f} ms / p99 {percentile(quiet, 0.99):.1f} ms "
                        f"(GET /healthz, idle)")  # fmt: skip
                p50, p99 = percentile(during, 0.5), percentile(during, 0.99)
                run.add("round", "API p50 ms during", p50, f"{p50:.1f} ms (GET /healthz)")
                run.add(
                    "round",
                    "API p99 ms during",
                    p99,
                    f"{p99:.1f} ms, max {max(during):.0f} ms ({len(during)} answered"
                    + (f", {limited} rate-limited (429)" if limited else "")
                    + (f", {len(others)} failed: {others[0]})" if others else ")"),
                )

            await step(run, server, "round", round_, timeout * 2, console)
    finally:
        server.stop()
    end = await db_sizes(dsn)
    run.add("database", "size at the end", end["total"] / 1e6, mb(end["total"]))
    per = end["total"] / max(1, end["attempts"]) * 1e6
    run.add("database", "per million measurements", per / 1e6,
            f"{per / 1e3:,.0f} kB per million checks counted in rollups "
            f"({end['attempts']:,} checks)")  # fmt: skip


# --- output ------------------------------------------------------------------------------


def single_table(run: Run) -> Table:
    p = run.plan
    table = Table(
        title=f"registry at scale: {p.proxies:,} proxies, {p.operators:,} operators, "
        f"{p.probes} probes, {p.days} days (PostgreSQL, {os.cpu_count()} CPUs)"
    )
    table.caption = f"load average {run.load_average:.1f} on {os.cpu_count()} CPUs at the end"
    table.add_column("step")
    table.add_column("figure")
    table.add_column("result")
    for f in run.figures:
        table.add_row(f.step, f.name, f"[red]{f.text}[/red]" if f.failed else f.text)
    return table


def growth_table(runs: Sequence[Run]) -> Table:
    first, last = runs[0], runs[-1]
    table = Table(title="growth: each figure per size, and the ratio largest / smallest")
    table.add_column("step")
    table.add_column("figure")
    for r in runs:
        table.add_column(f"{r.plan.proxies:,}", overflow="fold")
    table.add_column(f"{_k(last.plan.proxies)}/{_k(first.plan.proxies)}", justify="right")
    steps: list[str] = []
    names: dict[str, list[str]] = {}
    for r in runs:
        for f in r.figures:
            if f.step not in steps:
                steps.append(f.step)
            if f.name not in names.setdefault(f.step, []):
                names[f.step].append(f.name)
    keys = [(step_, name) for step_ in steps for name in names[step_]]
    for key in keys:
        cells = []
        found = [next((f for f in r.figures if (f.step, f.name) == key), None) for r in runs]
        for r, f in zip(runs, found, strict=True):
            if f is not None and f.failed:
                cells.append(f"[red]{f.text}[/red]")
            elif f is not None:
                cells.append(f.text.split(" (")[0])  # the figure, not its notes
            elif any(g.failed for g in r.figures if g.step == key[0]):
                cells.append("[red]failed[/red]")  # its step failed before this figure
            else:
                cells.append("—")
        a, b = found[0], found[-1]
        ratio = (
            f"{b.value / a.value:.1f}x"
            if a is not None and b is not None and a.value and b.value is not None
            else "—"
        )
        table.add_row(*key, *cells, ratio)
    return table


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


PLOTTED = (
    ("publish", "seconds", "publish s"),
    ("assignment", "seconds, inside probe", "assignment s (inside)"),
    ("assignment", "bytes, inside probe", "assignment bytes"),
    ("ingest", "results per second", "ingest results/s"),
    ("round", "seconds", "grant round s"),
    ("round", "server peak RSS", "round peak RSS"),
    ("load", "database size", "database size"),
)


def plot_svg(runs: Sequence[Run]) -> str:
    """Each figure as a multiple of its value at the smallest size, on log-log axes, with
    proportional growth (x size) as the dashed reference; failed points are left out."""
    import math

    width, height, left, right, top, bottom = 720, 420, 60, 190, 30, 50
    sizes = [r.plan.proxies for r in runs]
    series = []
    for step_, name, label in PLOTTED:
        values = []
        for r in runs:
            f = next((f for f in r.figures if (f.step, f.name) == (step_, name)), None)
            values.append(f.value if f is not None and not f.failed else None)
        base = values[0]
        if base:
            series.append((label, [v / base if v else None for v in values]))
    span = max(sizes) / min(sizes)
    top_ratio = max([span, *(v for _, vs in series for v in vs if v)])
    low_ratio = min([1.0, *(v for _, vs in series for v in vs if v)])
    lo, hi = math.log10(low_ratio) - 0.1, math.log10(top_ratio) + 0.1
    x_lo, x_hi = math.log10(min(sizes)), math.log10(max(sizes)) if span > 1 else 1 + min(sizes)

    def x(size: float) -> float:
        return left + (width - left - right) * (math.log10(size) - x_lo) / max(1e-9, x_hi - x_lo)

    def y(ratio: float) -> float:
        return top + (height - top - bottom) * (hi - math.log10(ratio)) / (hi - lo)

    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">registry at scale: growth from '
        f"{sizes[0]:,} proxies (x = 1)</text>",
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
        f'y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
    ]
    for size in sizes:
        out.append(f'<text x="{x(size):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                   f"{size:,}</text>")  # fmt: skip
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">'
               "proxies (log)</text>")  # fmt: skip
    tick = 10 ** math.floor(lo)
    while tick <= 10**hi:
        for m in (1, 3):
            t = tick * m
            if lo <= math.log10(t) <= hi:
                out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}x'
                           f'</text><line x1="{left}" y1="{y(t):.1f}" x2="{width - right}" '
                           f'y2="{y(t):.1f}" stroke="#ddd"/>')  # fmt: skip
        tick *= 10
    out.append(f'<polyline fill="none" stroke="grey" stroke-dasharray="5,4" points="'
               f'{x(sizes[0]):.1f},{y(1):.1f} {x(sizes[-1]):.1f},{y(span):.1f}"/>')  # fmt: skip
    legend = [("proportional to proxies", "grey")]
    for (label, values), colour in zip(series, colours, strict=False):
        points = [f"{x(s):.1f},{y(v):.1f}" for s, v in zip(sizes, values, strict=True) if v]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                   f'points="{" ".join(points)}"/>')  # fmt: skip
        for point in points:
            cx, cy = point.split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{colour}"/>')
        legend.append((label, colour))
    for i, (label, colour) in enumerate(legend):
        ly = top + 10 + 18 * i
        out.append(
            f'<rect x="{width - right + 12}" y="{ly - 9}" width="12" height="10" '
            f'fill="{colour}"/><text x="{width - right + 30}" y="{ly}">{label}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000", help="proxy counts, comma-separated")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--ingest-results", type=int, default=10_000,
                        help="results uploaded in the ingest step")  # fmt: skip
    parser.add_argument("--senders", type=int, default=4, help="sender processes")
    parser.add_argument("--step-timeout", type=float, default=600.0, metavar="S",
                        help="each step's deadline (ingest and round 2x)")  # fmt: skip
    parser.add_argument("--load-timeout", type=float, default=3600.0, metavar="S")
    parser.add_argument("--max-rss", type=float, default=8.0, metavar="GB",
                        help="stop the server (its step fails) past this RSS")  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1,000 proxies, 5 probes, 2 days, 500 results (a minute)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write the growth plot (SVG) here")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: the growth table and plot of earlier --json runs",
    )
    parser.add_argument("--width", type=int, help="table width (default: the terminal's)")
    args = parser.parse_args()
    if args.quick:
        plans = [Plan(1000, probes=5, days=2, raw_per_proxy=2, ingest_results=500, senders=2,
                      step_timeout=min(args.step_timeout, 60))]  # fmt: skip
    else:
        plans = [
            Plan(int(s), probes=args.probes, days=args.days, ingest_results=args.ingest_results,
                 senders=args.senders, step_timeout=args.step_timeout,
                 max_rss=args.max_rss * 1e9, load_timeout=args.load_timeout)
            for s in args.sizes.split(",")
        ]  # fmt: skip
    if any(p.proxies < 1 or p.probes < 2 or p.days < 1 for p in plans):
        parser.error("sizes must be positive, with at least 2 probes and 1 day")
    console = Console(width=args.width)
    runs = []
    if args.report:
        runs = sorted(
            (run_from_json(item) for path in args.report for item in json.loads(path.read_text())),
            key=lambda r: r.plan.proxies,
        )
        plans = []
    for plan in plans:
        run = asyncio.run(measure(plan, console))
        run.load_average = os.getloadavg()[0]
        runs.append(run)
    for run in runs:
        console.print(single_table(run))
    if len(runs) > 1:
        console.print(growth_table(runs))
    if args.plot is not None:
        args.plot.write_text(plot_svg(runs))
    if args.json is not None:
        args.json.write_text(json.dumps([r.json() for r in runs], indent=1) + "\n")
    measured_failures = not args.report and any(f.failed for r in runs for f in r.figures)
    return 1 if measured_failures else 0


if __name__ == "__main__":
    sys.exit(main())
