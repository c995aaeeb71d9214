"""Who may vote on a proxy's verdict, through the real ingest path (SQLite and PostgreSQL).

Three holes of issue 25, each shown by a scenario whose verdict the hole changes: a
result measured at an address the proxy was not proven at; evidence from a probe that
is no longer one of the proxy's replicas; and evidence from a probe flagged as lying.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from resistance.config import Endpoint
from resistance.registry import probes, shard
from resistance.registry import repositories as repo
from resistance.registry.models import ProbeEvidenceRow, ProbeResult
from tests.probe.test_shards_api import ROUND, add_proxies, fleet, make_probe, result
from tests.registry.conftest import RunningRegistry, start_registry


async def status_of(reg: RunningRegistry, proxy_id: int) -> tuple[str, list[str]]:
    got = await reg.client(token=reg.admin_token).get(f"/api/v1/proxies/{proxy_id}/status")
    assert got.status_code == 200, got.text
    return got.json()["status"], got.json()["blocked_in"]


async def add_named_proxy(reg: RunningRegistry, addresses: list[str]) -> int:
    async with reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name="op")
        assert op is not None
        proxy = await repo.save_proxy(
            session,
            fields={
                "operator_id": op.id, "host": "proxy.example", "addresses": addresses,
                "port": 1080, "network": "192.0.2.0/24", "public_key": "k" * 43,
                "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
                "credentials": [], "public": True, "status": "active", "registered_at": 1,
                "verified_at": 1,
            },
        )  # fmt: skip
        return proxy.id


async def test_results_at_an_unproven_address_are_kept_but_not_counted(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0)) as reg:
        (literal,) = await add_proxies(reg, 1)  # host 192.0.2.1
        named = await add_named_proxy(reg, ["192.0.2.50", "192.0.2.51"])
        probe = await make_probe(reg, "ams-1", "NL", True)
        now = int(time.time())

        def at(proxy_id: int, ok: bool, address: str | None, when: int) -> dict[str, Any]:
            r = result(reg, probe, proxy_id, ok, when)
            return r if address is None else {**r, "address": address}

        answer = await probe.upload([
            at(named, True, "192.0.2.51", now - 20),  # a proven address: counts
            at(named, True, "198.51.100.9", now - 10),  # somebody else's host: kept only
            at(named, True, None, now - 5),  # a success that does not say where: kept only
            at(named, False, None, now - 2),  # resolved to nothing proven, dialled nothing
            at(literal, True, "192.0.2.99", now - 1),  # not the literal's address
        ])  # fmt: skip
        assert answer["results"] == 2
        assert answer["not_counted"] == sorted([named, literal])
        why = answer["why_not_counted"]
        assert "198.51.100.9 is not one of the proxy's proven addresses" in why[str(named)]
        assert "192.0.2.99 is not the proxy's address 192.0.2.1" in why[str(literal)]
        async with reg.registry.sessions() as session:
            rows = (await session.execute(select(ProbeResult))).scalars().all()
            evidence = (await session.execute(select(ProbeEvidenceRow))).scalars().all()
        assert sorted((r.proxy_id, r.measured_at) for r in rows) == [
            (named, now - 20),
            (named, now - 2),
        ]
        assert [(e.proxy_id, e.last_at, e.last_ok) for e in evidence] == [(named, now - 2, False)]
        assert (await status_of(reg, literal))[0] == "untested"
        # The literal's own address counts.
        again = await probe.upload([at(literal, True, "192.0.2.1", now)])
        assert again["results"] == 1 and again["not_counted"] == []
        assert (await status_of(reg, literal))[0] == "functional"


async def test_a_probe_that_left_the_replicas_no_longer_votes(tmp_path: Path, db_url: str) -> None:
    async with start_registry(
        tmp_path / "reg",
        db_url,
        canary=Endpoint("127.0.0.1", 0),
        probe_replicas=2,
        probe_round_seconds=ROUND,
    ) as reg:
        clock = [time.time()]
        reg.registry.clock = lambda: clock[0]
        (proxy,) = await add_proxies(reg, 1)
        control = await make_probe(reg, "ams-1", "NL", True)
        first, second = [await make_probe(reg, f"msk-{n}", "RU", False) for n in (1, 2)]
        now = int(time.time())
        for when in (now - 3700, now - 60):  # two verdict windows
            for probe in (control, first, second):
                ok = probe is control
                answer = await probe.upload([result(reg, probe, proxy, ok, when)])
                assert answer["results"] == 1, answer
        assert await status_of(reg, proxy) == ("blocked", ["RU"])
        # `first` falls silent for more than 1.5 rounds; a third inside probe takes its place
        # and sees the proxy work, while `second` still sees it fail.  `first`'s evidence is
        # fresh (hours, not days, old) but it is no longer a replica: it must not vote, so the
        # inside vantages are one against one and the proxy is not blocked.
        clock[0] += ROUND * 3 // 2 + 1
        third = await make_probe(reg, "msk-3", "RU", False)
        for probe, ok in ((control, True), (third, True), (second, False)):
            answer = await probe.upload([result(reg, probe, proxy, ok, int(time.time()))])
            assert answer["results"] == 1, answer
        assert await status_of(reg, proxy) == ("functional", [])
        async with reg.registry.sessions() as session:  # its evidence is kept, not deleted
            rows = (await session.execute(select(ProbeEvidenceRow.probe_id))).scalars().all()
        assert len(rows) == 4


async def test_a_flagged_probe_does_not_vote_while_flagged(tmp_path: Path, db_url: str) -> None:
    async with start_registry(
        tmp_path / "reg",
        db_url,
        canary=Endpoint("127.0.0.1", 0),
        probe_flag_min=3,
        probe_replicas=3,
    ) as reg:
        clock = [time.time()]
        reg.registry.clock = lambda: clock[0]
        proxies = await add_proxies(reg, 5)
        tested, decisive = proxies[:4], proxies[4]
        control = await make_probe(reg, "ams-1", "NL", True)
        one, two = [await make_probe(reg, f"msk-{n}", "RU", False) for n in (1, 2)]
        liar = await make_probe(reg, "liar", "RU", False)
        now = int(time.time())
        for probe in (control, one, two, liar):  # the liar says "blocked" where all works
            ok = probe is not liar
            answer = await probe.upload([result(reg, probe, p, ok, now - 7200) for p in tested])
            assert answer["results"] == 4, answer
        status = {p["name"]: p for p in (await fleet(reg))["probes"]}
        assert status["liar"]["flagged"] and (
            status["liar"]["compared"],
            status["liar"]["disagreed"],
        ) == (4, 4)
        assert not status["msk-1"]["flagged"] and not status["msk-2"]["flagged"]
        clock[0] += 601  # past the batch path's count of flags (at most a round old)
        # On the decisive proxy the honest inside probes disagree (one sees it fail twice),
        # and the liar's "fail" would tip it to blocked: flagged, it must not.
        for when in (now - 3700, now - 60):
            for probe, ok in ((control, True), (one, True), (two, False), (liar, False)):
                answer = await probe.upload([result(reg, probe, decisive, ok, when)])
                assert answer["results"] == 1, answer  # kept and counted as a result
        assert await status_of(reg, decisive) == ("functional", [])
        async with reg.registry.sessions() as session:
            kept = (await session.execute(select(ProbeResult.probe_id))).scalars().all()
        assert len(kept) == 4 * 4 + 4 * 2


async def test_batches_arriving_together_read_the_fleet_once(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a round's start every probe's batch finds the fleet's reading stale at once: one
    reads it (the flags count every fresh evidence row), the others wait for that reading
    instead of each holding a pooled connection for the same queries."""
    async with start_registry(tmp_path / "reg", db_url) as reg:
        for n in range(3):
            await make_probe(reg, f"msk-{n}", "RU", False)
        async with reg.registry.sessions() as session:
            accounts = list(await repo.all_probes(session))
        counted = repo.probe_disagreement
        calls = []

        async def slow(session: Any, *, since: int) -> dict[int, tuple[int, int]]:
            calls.append(since)
            await asyncio.sleep(0.2)
            return await counted(session, since=since)

        monkeypatch.setattr(repo, "probe_disagreement", slow)
        # On PostgreSQL the flags are first counted at start-up: past that reading's end.
        await reg.registry.shards.counted()
        now = reg.registry.now() + shard.flag_ttl(reg.registry.settings.probe_round_seconds)
        fleets = await asyncio.gather(
            *(probes.fleet_now(reg.registry, a, now) for a in accounts * 4)
        )
        assert len(calls) == 1
        assert all(f.everyone == fleets[0].everyone for f in fleets)
        assert {a.id for a in accounts} <= fleets[0].everyone["RU"]
