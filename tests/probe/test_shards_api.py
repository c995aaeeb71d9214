"""Sharding and outvoting through the real ingest path (SQLite and PostgreSQL).

Probes are made by the admin API, pull their assignment, and upload signed
batches over HTTP as the agent does; the verdicts, the shares and the fleet
status are read back through the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from resistance.cli import main
from resistance.config import Endpoint
from resistance.directory.keys import public_key_text
from resistance.probe.verdict import ProbeEvidence, disagreement
from resistance.registry import repositories as repo
from resistance.registry.app import create_app
from resistance.registry.db import make_engine, make_sessions
from resistance.registry.models import ProbeEvidenceRow
from resistance.registry.probes import rules
from tests.probe.test_batches_api import JSON, bad_result, batch, good_result
from tests.registry.conftest import RunningRegistry, ThreadedServer, make_settings, start_registry

ROUND = 600
CONTROLS = ("NL", "DE", "SE")


class Probe:
    def __init__(self, reg: RunningRegistry, name: str, token: str, key: Ed25519PrivateKey):
        self.reg, self.name, self.key = reg, name, key
        self.client = reg.client(token=token)
        self.country = "RU"

    async def assignment(self) -> set[int]:
        got = await self.client.get("/api/v1/probe/assignment")
        assert got.status_code == 200, got.text
        return {t["proxy_id"] for t in got.json()["proxies"]}

    async def upload(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        data = batch(self.key, results, vantage=self.name, country=self.country)
        sent = await self.client.post("/api/v1/probe/batches", headers=JSON, content=data)
        assert sent.status_code == 201, sent.text
        answer: dict[str, Any] = sent.json()
        return answer


async def make_probe(reg: RunningRegistry, name: str, country: str, control: bool) -> Probe:
    key = Ed25519PrivateKey.generate()
    created = await reg.client(token=reg.admin_token).post(
        "/api/v1/probes",
        json={"name": name, "country": country, "control": control,
              "public_key": public_key_text(key.public_key())},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    probe = Probe(reg, name, created.json()["token"], key)
    probe.country = country
    return probe


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
                    "probe_user": "p", "probe_password": "q", "credentials": [], "public": True,
                    "status": "active", "registered_at": 1, "verified_at": 1,
                },
            )  # fmt: skip
            ids.append(proxy.id)
    return ids


def result(reg: RunningRegistry, probe: Probe, proxy_id: int, ok: bool, at: int) -> dict[str, Any]:
    if ok:
        return good_result(reg, proxy_id, probe.key, at=at)
    return {**bad_result(proxy_id), "at": at}


async def fleet(reg: RunningRegistry, **query: int) -> dict[str, Any]:
    got = await reg.client(token=reg.admin_token).get("/api/v1/probes/status", params=query)
    assert got.status_code == 200, got.text
    answer: dict[str, Any] = got.json()
    return answer


async def test_the_two_liars_are_outvoted_and_flagged(tmp_path: Path, db_url: str) -> None:
    async with start_registry(
        tmp_path / "reg",
        db_url,
        canary=Endpoint("127.0.0.1", 0),
        probe_flag_min=3,
        probe_replicas=4,
    ) as reg:
        proxies = await add_proxies(reg, 6)
        works = proxies[:3]  # the other three are really blocked in RU
        controls = [await make_probe(reg, f"c{n}", cc, True) for n, cc in enumerate(CONTROLS)]
        honest = [await make_probe(reg, f"msk-{n}", "RU", False) for n in (1, 2)]
        says_blocked = await make_probe(reg, "liar-blocked", "RU", False)
        says_ok = await make_probe(reg, "liar-ok", "RU", False)
        everyone = [*controls, *honest, says_blocked, says_ok]
        for probe in everyone:  # 3 controls, 4 inside: each sees every proxy
            assert await probe.assignment() == set(proxies)
        now = int(time.time())
        for at in (now - 3700, now):  # two verdict windows (of 3600 s)
            for probe in everyone:
                if probe in controls:
                    oks = dict.fromkeys(proxies, True)
                elif probe is says_blocked:
                    oks = dict.fromkeys(proxies, False)
                elif probe is says_ok:
                    oks = dict.fromkeys(proxies, True)
                else:
                    oks = {p: p in works for p in proxies}
                answer = await probe.upload(
                    [result(reg, probe, p, ok, at) for p, ok in oks.items()]
                )
                assert answer["results"] == 6 and answer["not_counted"] == []
        admin = reg.client(token=reg.admin_token)
        for p in proxies:
            got = (await admin.get(f"/api/v1/proxies/{p}/status")).json()
            if p in works:
                assert got["status"] == "functional", (p, got)
            else:
                assert (got["status"], got["blocked_in"]) == ("blocked", ["RU"]), (p, got)
        status = {p["name"]: p for p in (await fleet(reg))["probes"]}
        for name in ("liar-blocked", "liar-ok"):
            assert status[name]["flagged"] and status[name]["disagreement"] == 0.5
            assert (status[name]["compared"], status[name]["disagreed"]) == (6, 3)
        for name in ("msk-1", "msk-2", "c0", "c1", "c2"):
            assert not status[name]["flagged"] and status[name]["disagreed"] == 0
        assert all(p["live"] and p["share"] == 6 for p in status.values())
        # The database's count is the pure function's.
        async with reg.registry.sessions() as session:
            rows = (await session.execute(ProbeEvidenceRow.__table__.select())).all()
            counted = await repo.probe_disagreement(session, since=0)
        by_proxy: dict[int, list[ProbeEvidence]] = {}
        for r in rows:
            e = ProbeEvidence(r.probe_id, r.country, r.control, r.last_at, r.last_ok)
            by_proxy.setdefault(r.proxy_id, []).append(e)
        pure = disagreement(by_proxy, now=now, rules=rules(reg.registry))
        assert counted == {p: (d.compared, d.disagreed) for p, d in pure.items()}


async def test_each_probe_gets_its_share_and_results_outside_it_do_not_count(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(
        tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0), probe_replicas=2
    ) as reg:
        proxies = await add_proxies(reg, 40)
        probes = [await make_probe(reg, f"msk-{n}", "RU", False) for n in range(4)]
        now = int(time.time())
        for probe in probes:  # make every probe live
            await probe.upload([result(reg, probe, proxies[0], False, now)])
        shares = {probe.name: await probe.assignment() for probe in probes}
        for p in proxies:  # each proxy to exactly two of the four
            assert sum(p in share for share in shares.values()) == 2
        assert all(10 <= len(share) <= 30 for share in shares.values()), shares
        first = probes[0]
        answer = await first.upload([result(reg, first, p, False, now + 1) for p in proxies])
        mine = shares[first.name]
        assert answer["results"] == len(mine)
        assert set(answer["not_counted"]) == set(proxies) - mine
        async with reg.registry.sessions() as session:
            evidence = (await session.execute(select(ProbeEvidenceRow))).scalars().all()
        assert {e.proxy_id for e in evidence if e.probe_id == 1} == mine | {proxies[0]}
        status = {p["name"]: p for p in (await fleet(reg))["probes"]}
        assert {n: s["share"] for n, s in status.items()} == {n: len(s) for n, s in shares.items()}


async def test_a_silent_probes_proxies_go_to_the_others_within_one_round(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(
        tmp_path / "reg", db_url, probe_replicas=2, probe_round_seconds=ROUND
    ) as reg:
        clock = [time.time()]
        reg.registry.clock = lambda: clock[0]
        proxies = await add_proxies(reg, 30)
        probes = [await make_probe(reg, f"msk-{n}", "RU", False) for n in range(4)]
        silent, *rest = probes
        for probe in probes:
            await probe.upload([result(reg, probe, proxies[0], False, int(time.time()))])
        before = {probe.name: await probe.assignment() for probe in probes}
        assert before[silent.name]
        clock[0] += ROUND  # one round on: everybody but `silent` reports again
        for probe in rest:
            await probe.upload([result(reg, probe, proxies[1], False, int(time.time()))])
        assert {p.name: await p.assignment() for p in probes} == before  # 1 round: still live
        clock[0] += ROUND // 2 + 1  # more than 1.5 rounds since its last batch
        for probe in rest:
            await probe.upload([result(reg, probe, proxies[2], False, int(time.time()))])
        after = {probe.name: await probe.assignment() for probe in rest}
        for p in proxies:  # still two live probes on every proxy
            assert sum(p in share for share in after.values()) == 2
        for probe in rest:  # the others gained only proxies of the silent one
            assert after[probe.name] - before[probe.name] <= before[silent.name]
            assert before[probe.name] <= after[probe.name]
        status = {p["name"]: p for p in (await fleet(reg))["probes"]}
        assert not status[silent.name]["live"] and status[silent.name]["share"] == 0
        assert all(status[p.name]["live"] for p in rest)
        assert sum(s["share"] for s in status.values()) == 2 * len(proxies)
        # When it comes back it gets its old share at once.
        assert await silent.assignment() == before[silent.name]


async def _seed_proxy(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        async with make_sessions(engine).begin() as session:
            op = await repo.operator_by_name(session, name="op")
            assert op is not None
            proxy = await repo.save_proxy(
                session,
                fields={
                    "operator_id": op.id, "host": "192.0.2.1", "port": 1080,
                    "network": "192.0.2.0/24", "public_key": "k" * 43, "protocols": ["socks5"],
                    "probe_user": "p", "probe_password": "q", "credentials": [], "public": True,
                    "status": "active", "registered_at": 1, "verified_at": 1,
                },
            )  # fmt: skip
            return proxy.id
    finally:
        await engine.dispose()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'registry.sqlite3'}"
    tokens: list[str] = []
    app = create_app(make_settings(tmp_path / "reg", db_url), on_admin_token=tokens.append)
    with ThreadedServer(app) as server:
        base = f"http://127.0.0.1:{server.port}"
        made = httpx.post(f"{base}/api/v1/operators", json={"name": "op"}, timeout=10)
        assert made.status_code == 201, made.text
        yield base, tokens[0], asyncio.run(_seed_proxy(db_url))


def test_probe_status_cli_shows_live_and_silent_probes_a_page_at_a_time(
    served: tuple[str, str, int],
) -> None:
    base, admin, proxy_id = served
    made = []
    for name in ("msk-1", "msk-2", "spb-1"):
        key = Ed25519PrivateKey.generate()
        created = httpx.post(
            f"{base}/api/v1/probes",
            json={"name": name, "country": "RU", "public_key": public_key_text(key.public_key())},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        made.append((name, created.json()["token"], key))
    name, token, key = made[0]  # msk-1 reports; the others never do
    sent = httpx.post(
        f"{base}/api/v1/probe/batches",
        content=batch(key, [bad_result(proxy_id)], vantage=name, country="RU"),
        headers={**JSON, "Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert sent.status_code == 201, sent.text
    runner = CliRunner()
    shown = runner.invoke(main, ["probe", "status", "--registry", base, "--token", admin])
    assert shown.exit_code == 0, shown.output
    assert "3 probes, 1 active proxies, 3 probes per proxy" in shown.output
    rows = {line.split("│")[2].strip(): line for line in shown.output.splitlines()
            if line.count("│") > 5 and ("msk" in line or "spb" in line)}  # fmt: skip
    assert set(rows) == {"msk-1", "msk-2", "spb-1"}
    assert "live" in rows["msk-1"] and "s ago" in rows["msk-1"]
    assert "silent" in rows["msk-2"] and "never" in rows["msk-2"]
    page = runner.invoke(
        main, ["probe", "status", "--registry", base, "--token", admin, "--limit", "2"]
    )
    assert page.exit_code == 0, page.output
    assert "spb-1" not in page.output and "next: --offset 2" in page.output
    refused = runner.invoke(main, ["probe", "status", "--registry", base, "--token", token])
    assert refused.exit_code != 0 and "403" in refused.output


async def test_fleet_status_is_for_the_admin_pages_and_refuses_unknown_parameters(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "reg", db_url) as reg:
        probes = [await make_probe(reg, f"msk-{n}", "RU", False) for n in range(5)]
        page = await fleet(reg, offset=3, limit=10)
        assert page["total"] == 5 and [p["name"] for p in page["probes"]] == ["msk-3", "msk-4"]
        admin = reg.client(token=reg.admin_token)
        for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"page": 2}):
            got = await admin.get("/api/v1/probes/status", params=bad)
            assert got.status_code == 422, (bad, got.text)
        refused = await probes[0].client.get("/api/v1/probes/status")
        assert refused.status_code == 403
