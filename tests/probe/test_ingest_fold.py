"""What ingestion folds into evidence, rollups and verdicts, checked against the pure model,
and that concurrent batches, also from two registry processes on one PostgreSQL, lose no
count (issue 25 replaced ORM rows under an in-process lock by Core upserts under per-proxy
advisory locks)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.config import Endpoint
from resistance.directory.keys import public_key_text
from resistance.probe import rollup
from resistance.probe.verdict import ProbeEvidence, Rules, Status, Verdict, evaluate, observe
from resistance.registry import repositories as repo
from resistance.registry.services import utc_day
from tests.probe.test_batches_api import JSON, batch, good_result
from tests.registry.conftest import RunningRegistry, start_registry

RULES = Rules()  # the registry's defaults: 1 h windows, 2 probes, 2 windows, down after 2


async def add_proxies(reg: RunningRegistry, count: int) -> list[int]:
    await reg.operator("op")
    ids = []
    async with reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name="op")
        assert op is not None
        for n in range(count):
            proxy = await repo.save_proxy(
                session,
                fields={
                    "operator_id": op.id, "host": f"192.0.2.{n + 1}", "port": 1080,
                    "network": "192.0.2.0/24", "public_key": "k" * 43, "protocols": ["socks5"],
                    "probe_user": "p", "probe_password": "q", "credentials": [],
                    "public": True, "status": "active", "registered_at": 1, "verified_at": 1,
                },
            )  # fmt: skip
            ids.append(proxy.id)
    return ids


async def add_probe(reg: RunningRegistry, name: str, country: str, control: bool) -> Any:
    key = Ed25519PrivateKey.generate()
    admin = reg.client(token=reg.admin_token)
    created = await admin.post(
        "/api/v1/probes",
        json={"name": name, "country": country, "control": control,
              "public_key": public_key_text(key.public_key())},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    return body["probe_id"], key, name, country, control, body["token"]


def failed(proxy_id: int, at: int) -> dict[str, Any]:
    return {
        "proxy_id": proxy_id, "at": at, "ok": False, "step": "tcp", "failure": "timeout",
        "detail": "no answer in 5 s", "tcp_us": None, "connect_us": None, "ttfb_us": None,
        "throughput_kbps": None, "canary": None,
    }  # fmt: skip


class Model:
    """What the registry must hold, from the pure functions it is built on."""

    def __init__(self) -> None:
        self.evidence: dict[tuple[int, int], ProbeEvidence] = {}
        self.mechanism: dict[tuple[int, int], str | None] = {}
        self.rollups: dict[tuple[int, str, str, bool], list[Any]] = {}
        self.status: dict[int, Status] = {}
        self.history: list[tuple[int, str, str]] = []

    def fold(self, probe: Any, results: list[dict[str, Any]], now: int) -> None:
        probe_id, _key, _name, country, control, _token = probe
        for r in sorted(results, key=lambda r: r["at"]):
            key = (r["proxy_id"], probe_id)
            before = self.evidence.get(key, ProbeEvidence(probe_id, country, control))
            after = observe(before, at=r["at"], ok=r["ok"], rules=RULES)
            if after is not before:
                self.mechanism[key] = "ok" if r["ok"] else None
            self.evidence[key] = after
        for r in results:
            row = self.rollups.setdefault(
                (r["proxy_id"], utc_day(r["at"]), country, control),
                [0, 0, rollup.empty(rollup.LATENCY_BOUNDS_MS),
                 rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)],
            )  # fmt: skip
            row[0] += 1
            if r["ok"]:
                row[1] += 1
                rollup.add(row[2], rollup.LATENCY_BOUNDS_MS, math.ceil(r["connect_us"] / 1000))
                rollup.add(row[3], rollup.THROUGHPUT_BOUNDS_KBPS, r["throughput_kbps"])
        for proxy_id in sorted({r["proxy_id"] for r in results}):
            previous = self.status.get(proxy_id, Status(Verdict.UNTESTED))
            views = [e for (p, _), e in self.evidence.items() if p == proxy_id]
            status = evaluate(previous, views, now=now, rules=RULES)
            if status != previous:
                self.history.append((proxy_id, str(status), str(previous)))
            self.status[proxy_id] = status


async def table(reg: RunningRegistry, sql: str) -> list[tuple[Any, ...]]:
    async with reg.registry.sessions() as session:
        return [tuple(row) for row in (await session.execute(text(sql))).all()]


def as_list(value: Any) -> list[Any]:
    """A JSON column's value as read by a text query (a string on SQLite, a list on PG)."""
    import json

    return json.loads(value) if isinstance(value, str) else list(value)


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> Any:
    async with start_registry(tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0)) as reg:
        yield reg


async def test_evidence_rollups_and_verdicts_are_those_of_the_pure_model(world: Any) -> None:
    reg = world
    proxies = await add_proxies(reg, 2)
    ru1 = await add_probe(reg, "msk-1", "RU", False)
    ru2 = await add_probe(reg, "spb-1", "RU", False)
    de = await add_probe(reg, "fra-1", "DE", True)
    model = Model()
    now = int(time.time())
    start = now - 30 * 3600  # two UTC days at least, inside the 3-day freshness
    hour = 3600

    def good(probe: Any, proxy_id: int, at: int) -> dict[str, Any]:
        result = good_result(reg, proxy_id, probe[1], at=at)
        return {**result, "connect_us": 1000 * (17 + at % 300), "throughput_kbps": 100 + at % 9000}

    steps: list[tuple[Any, list[dict[str, Any]]]] = []
    for h in range(0, 30, 3):  # the control sees both proxies working all along
        steps.append((de, [good(de, p, start + h * hour + p) for p in proxies]))
        inside = [ru1, ru2]
        for probe in inside:
            at = start + h * hour + 60 + probe[0]
            if h < 12:  # both work from inside at first
                steps.append((probe, [good(probe, p, at) for p in proxies]))
            else:  # then the first proxy fails from inside, repeatedly: blocked in RU
                steps.append((probe, [failed(proxies[0], at), good(probe, proxies[1], at)]))
    # a late upload: older than what msk-1 last sent, it must change no evidence
    steps.append((ru1, [good(ru1, proxies[0], start + 5)]))
    # and the first proxy works again from inside once: blocked ends
    steps.append((ru2, [good(ru2, proxies[0], now - 10)]))
    for probe, results in steps:
        client = reg.client(token=probe[5])
        sent = await client.post(
            "/api/v1/probe/batches", headers=JSON,
            content=batch(probe[1], results, vantage=probe[2], country=probe[3]),
        )  # fmt: skip
        assert sent.status_code == 201, sent.text
        model.fold(probe, results, int(time.time()))

    statuses = [str(s) for _, s, _ in model.history]
    assert "blocked:RU" in statuses and statuses[-1] == "functional"  # the story happened
    evidence = await table(
        reg,
        "SELECT proxy_id, probe_id, country, control, last_at, last_ok, fail_streak, "
        "fail_windows, mechanism FROM probe_evidence ORDER BY proxy_id, probe_id",
    )
    assert [(*row[:7], tuple(as_list(row[7])), row[8]) for row in evidence] == [
        (p, e.probe_id, e.country, bool(e.control), e.last_at, e.last_ok, e.fail_streak,
         e.fail_windows, model.mechanism[(p, q)])
        for (p, q), e in sorted(model.evidence.items())
    ]  # fmt: skip
    rollups = await table(
        reg,
        "SELECT proxy_id, day, country, control, attempts, successes, latency_hist, "
        "throughput_hist, latency_p50_ms, latency_p90_ms, throughput_p50_kbps "
        "FROM probe_rollups ORDER BY proxy_id, day, country, control",
    )
    expected = []
    for (p, day, country, control), (att, ok, lat, thr) in sorted(model.rollups.items()):
        expected.append(
            (p, day, country, control, att, ok, lat, thr,
             rollup.percentile(lat, rollup.LATENCY_BOUNDS_MS, 0.5),
             rollup.percentile(lat, rollup.LATENCY_BOUNDS_MS, 0.9),
             rollup.percentile(thr, rollup.THROUGHPUT_BOUNDS_KBPS, 0.5))
        )  # fmt: skip
    assert [
        (*row[:3], bool(row[3]), row[4], row[5], as_list(row[6]), as_list(row[7]), *row[8:])
        for row in rollups
    ] == expected
    verdicts = await table(reg, "SELECT proxy_id, verdict, blocked_in FROM proxy_verdicts")
    assert sorted((p, v, as_list(b)) for p, v, b in verdicts) == [
        (p, s.verdict.value, list(s.blocked_in)) for p, s in sorted(model.status.items())
    ]
    history = await table(
        reg, "SELECT proxy_id, verdict, blocked_in, previous FROM proxy_verdict_history ORDER BY id"
    )
    assert [
        (p, f"blocked:{','.join(as_list(b))}" if v == "blocked" else v, prev)
        for p, v, b, prev in history
    ] == model.history


async def test_concurrent_batches_from_two_registries_on_one_database_lose_no_count(
    tmp_path: Path, db_url: str
) -> None:
    """Two registry processes' worth of engines on one database, batches racing on the same
    proxies: every result is counted once in the rollups and the evidence ends at the
    newest result of each probe (a read-modify-write without the fold lock loses counts)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("one SQLite file has one writer: several registries share PostgreSQL")
    state = tmp_path / "reg"
    async with (
        # every probe measures every proxy here (no sharding: 4 probes, 4 replicas)
        start_registry(state, db_url, canary=Endpoint("127.0.0.1", 0), probe_replicas=4) as one,
        start_registry(state, db_url, canary=Endpoint("127.0.0.1", 0), probe_replicas=4) as two,
    ):
        proxies = await add_proxies(one, 20)
        probes = [await add_probe(one, f"msk-{n}", "RU", False) for n in range(4)]
        now = int(time.time())
        rounds = 6

        async def send(reg: RunningRegistry, probe: Any, n: int) -> None:
            results = [failed(p, now - 600 + n * 60 + i) for i, p in enumerate(proxies)]
            data = batch(probe[1], results, vantage=probe[2], country=probe[3])
            sent = await reg.client(token=probe[5]).post(
                "/api/v1/probe/batches", headers=JSON, content=data
            )
            assert sent.status_code == 201, sent.text

        async def probe_rounds(k: int, probe: Any) -> None:  # each probe's in order
            for n in range(rounds):
                await send(one if (n + k) % 2 else two, probe, n)

        await asyncio.gather(*(probe_rounds(k, probe) for k, probe in enumerate(probes)))
        counts = await table(
            one, "SELECT proxy_id, SUM(attempts) FROM probe_rollups GROUP BY proxy_id"
        )
        assert sorted(counts) == [(p, rounds * len(probes)) for p in proxies]
        evidence = await table(
            one, "SELECT proxy_id, probe_id, last_at, fail_streak FROM probe_evidence"
        )
        assert sorted(evidence) == sorted(
            (p, probe[0], now - 600 + (rounds - 1) * 60 + i, rounds)
            for i, p in enumerate(proxies)
            for probe in probes
        )
        results = await table(one, "SELECT COUNT(*) FROM probe_results")
        assert results == [(rounds * len(probes) * len(proxies),)]
