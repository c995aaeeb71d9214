"""MTProto proxies in the registry (SQLite and PostgreSQL): proof, directory, probes, grants.

The proxy is ``tests.integration.mtproxy_standin`` on a loopback port (fake-TLS
and obfuscated2 from the project's cores), relaying to the lab's data-centre
stand-in, which answers req_pq_multi.  The registry proves control the way a
Telegram client connects, with the operator's prober secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.config import Endpoint
from resistance.directory.entry import MTProtoListing, parse_entry
from resistance.directory.keys import public_key_text
from resistance.grants.model import inputs_from_json, rollup_to_json
from resistance.lab import datacentre
from resistance.probe.batch import new_batch_id, sign_batch
from resistance.registry import repositories as repo
from resistance.registry.db import migrate
from resistance.registry.services import publish
from tests.integration.mtproxy_standin import MTProxyStandIn
from tests.registry.conftest import RunningRegistry, start_registry
from tests.registry.test_wireguard import downgrade, socks5_fields

JSON = {"Content-Type": "application/json"}
DOMAIN = "example.com"


@dataclass
class World:
    reg: RunningRegistry
    operator: httpx.AsyncClient
    key: bytes  # this operator's prober secret key
    dc: tuple[str, int]

    def body(self, port: int, mode: str = "ee", **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"endpoint": {"host": "127.0.0.1", "port": port}, "mode": mode}
        if mode == "ee":
            body["domain"] = DOMAIN
        body.update(extra)
        return body

    async def register(self, port: int, mode: str = "ee", **extra: Any) -> httpx.Response:
        return await self.operator.post(
            "/api/v1/mtproto/endpoints", json=self.body(port, mode, **extra)
        )

    @contextmanager
    def proxy(self, *keys: bytes, tls: bool = True) -> Iterator[MTProxyStandIn]:
        with MTProxyStandIn(list(keys) or [self.key], self.dc, tls=tls) as proxy:
            yield proxy

    async def proxies(self) -> list[dict[str, Any]]:
        response = await self.operator.get("/api/v1/proxies")
        assert response.status_code == 200
        found: list[dict[str, Any]] = response.json()["proxies"]
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def dc() -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield ("127.0.0.1", port)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def prober_key(reg: RunningRegistry, token: str) -> bytes:
    answer = await reg.client(token=token).get("/api/v1/mtproto/prober-secret")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["node_option"] == f"--mtproto-user registry:{body['key']}"
    return bytes.fromhex(body["key"])


@pytest.fixture
async def world(tmp_path: Path, db_url: str, dc: tuple[str, int]) -> AsyncIterator[World]:
    async with start_registry(
        tmp_path / "reg", db_url, challenge_timeout=2.0, canary=Endpoint("127.0.0.1", 0)
    ) as reg:
        token = await reg.operator("mt-op")
        yield World(reg, reg.client(token=token), await prober_key(reg, token), dc)


async def test_the_prober_secret_is_the_operators_own(world: World) -> None:
    assert len(world.key) == 16
    assert await prober_key(world.reg, await world.reg.operator("mt-op-2")) != world.key
    again = await world.operator.get("/api/v1/mtproto/prober-secret")
    assert bytes.fromhex(again.json()["key"]) == world.key
    anonymous = await world.reg.client().get("/api/v1/mtproto/prober-secret")
    assert anonymous.status_code == 401


@pytest.mark.parametrize("mode", ["ee", "dd", "classic"])
async def test_a_proxy_with_the_prober_secret_is_registered(world: World, mode: str) -> None:
    with world.proxy(secrets.token_bytes(16), world.key, tls=mode == "ee") as proxy:
        response = await world.register(proxy.port, mode, public=True)
        assert proxy.served == 1
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["protocols"] == ["mtproto"]
    assert view["mtproto"] == {"mode": mode, "domain": DOMAIN if mode == "ee" else None}
    assert [p["proxy_id"] for p in await world.proxies()] == [view["proxy_id"]]
    # The public directory lists it by endpoint, mode and domain; never a secret.
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"]
    expected = {"mode": mode, **({"domain": DOMAIN} if mode == "ee" else {})}
    assert entry["protocols"] == ["mtproto"] and entry["mtproto"] == expected
    assert "credentials" not in entry and "node_key" not in entry
    parsed = parse_entry(entry)
    assert parsed is not None and parsed.protocols == ("mtproto",)
    assert parsed.mtproto == MTProtoListing(mode, DOMAIN if mode == "ee" else None)
    public = [  # the entries returned as their bytes, decoded when read: listed for json
        json.dumps(signed, default=list),
        (await world.reg.client().get("/api/v1/directory")).text,
        (await world.reg.client().get("/api/v1/proxies/assign")).text,
        (world.reg.state_dir / "directory.json").read_text(),
        view.__repr__(),
    ]
    for text_ in public:
        assert world.key.hex() not in text_
    from resistance.client.directory import upstreams_from

    assert upstreams_from(signed["document"]) == []  # a SOCKS5 client cannot use it


async def test_an_mtproto_proxy_by_dns_name_is_proven_at_its_addresses(world: World) -> None:
    from tests.registry.test_endpoint_names import TableResolver

    world.reg.registry.resolver = TableResolver({"mt.example": ["127.0.0.1", "127.0.0.4"]})
    with world.proxy(world.key) as proxy:  # listens on 127.0.0.1 only
        body = world.body(proxy.port, "ee", public=True)
        body["endpoint"]["host"] = "mt.example"
        response = await world.operator.post("/api/v1/mtproto/endpoints", json=body)
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["endpoint"]["host"] == "mt.example" and view["addresses"] == ["127.0.0.1"]
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"]
    assert entry["endpoint"]["host"] == "mt.example"


@pytest.mark.parametrize("case", ["another key", "another operator's key", "wrong mode"])
async def test_no_proof_no_proxy(world: World, case: str) -> None:
    keys = [secrets.token_bytes(16)]
    if case == "another operator's key":
        keys = [await prober_key(world.reg, await world.reg.operator("someone"))]
    if case == "wrong mode":
        keys = [world.key]
    with world.proxy(*keys, tls=case != "wrong mode") as proxy:
        response = await world.register(proxy.port, "ee")
        assert proxy.served == 0
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error.startswith("proof of control failed: handshake") and "prober-secret" in error
    assert await world.proxies() == []


async def test_a_closed_port_is_refused(world: World) -> None:
    response = await world.register(free_port(), "dd")
    assert response.status_code == 422 and "tcp: refused" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"mode": "ee", "domain": None}, "needs its domain"),
        ({"mode": "dd", "domain": DOMAIN}, "only an ee"),
        ({"mode": "ee", "domain": "not a host"}, "not a host name"),
        ({"mode": "xx"}, "mode"),
        ({"endpoint": {"host": "localhost", "port": 443}}, "nor a name"),
        ({"secret": "00" * 16}, "secret"),
    ],
)
async def test_bad_requests_are_refused_without_connecting(
    world: World, body: dict[str, Any], fragment: str
) -> None:
    response = await world.operator.post(
        "/api/v1/mtproto/endpoints", json={**world.body(9), **body}
    )
    assert response.status_code == 422 and fragment in response.json()["error"], response.text


async def test_kinds_do_not_take_over_each_others_endpoints(world: World) -> None:
    async with world.reg.registry.sessions.begin() as session:
        me = await repo.operator_by_name(session, name="mt-op")
        assert me is not None
        await repo.save_proxy(session, fields=socks5_fields(me.id, port=1080))
    response = await world.register(1080, "dd")
    assert response.status_code == 409 and "SOCKS5 node" in response.json()["error"]
    with world.proxy() as proxy:
        assert (await world.register(proxy.port)).status_code == 201
        other = world.reg.client(token=await world.reg.operator("other"))
        taken = await other.post("/api/v1/mtproto/endpoints", json=world.body(proxy.port))
    assert taken.status_code == 409 and "another operator" in taken.json()["error"]


# --- probes and grants ----------------------------------------------------------------


async def make_probe(
    reg: RunningRegistry, name: str, country: str, *, control: bool = False
) -> tuple[httpx.AsyncClient, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    created = await reg.client(token=reg.admin_token).post(
        "/api/v1/probes",
        json={"name": name, "country": country, "control": control,
              "public_key": public_key_text(key.public_key())},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    return reg.client(token=created.json()["token"]), key


def mt_result(proxy_id: int, *, ok: bool, at: int, **kw: Any) -> dict[str, Any]:
    result = {
        "proxy_id": proxy_id, "at": at, "ok": ok,
        "step": None if ok else "respq", "failure": None if ok else "timeout",
        "detail": "", "tcp_us": 200, "connect_us": 900 if ok else None,
        "ttfb_us": 3000 if ok else None, "throughput_kbps": None, "canary": None,
        "protocol": "mtproto",
    }  # fmt: skip
    result.update(kw)
    return result


def batch(key: Ed25519PrivateKey, results: list[dict[str, Any]], vantage: str, cc: str) -> bytes:
    return sign_batch(
        key=key, probe_key=public_key_text(key.public_key()), batch_id=new_batch_id(),
        vantage=vantage, country=cc, created_at=max(r["at"] for r in results), results=results,
    )  # fmt: skip


async def test_probes_get_the_secret_and_their_results_count(world: World) -> None:
    probe, key = await make_probe(world.reg, "ams-1", "NL", control=True)
    with world.proxy() as proxy:
        proxy_id = (await world.register(proxy.port)).json()["proxy_id"]
    (target,) = (await probe.get("/api/v1/probe/assignment")).json()["proxies"]
    assert target["protocol"] == "mtproto" and target["proxy_id"] == proxy_id
    assert target["mtproto_secret"] == "ee" + world.key.hex() + DOMAIN.encode().hex()
    # The probe agent reads it into a target its check uses.
    from resistance.probe.agent import parse_assignment

    raw = (await probe.get("/api/v1/probe/assignment")).json()
    ((_, parsed),) = parse_assignment(raw).targets
    assert parsed.protocol == "mtproto" and parsed.mtproto_secret == target["mtproto_secret"]
    now = int(time.time())
    up = batch(key, [mt_result(proxy_id, ok=True, at=now)] * 2, "ams-1", "NL")
    stored = await probe.post("/api/v1/probe/batches", headers=JSON, content=up)
    assert stored.status_code == 201, stored.text
    admin = world.reg.client(token=world.reg.admin_token)
    status = await admin.get(f"/api/v1/proxies/{proxy_id}/status")
    assert status.json()["status"] == "functional"


async def test_results_must_use_the_proxys_protocol(world: World) -> None:
    probe, key = await make_probe(world.reg, "ams-1", "NL", control=True)
    with world.proxy() as proxy:
        mt_id = (await world.register(proxy.port)).json()["proxy_id"]
    async with world.reg.registry.sessions.begin() as session:
        me = await repo.operator_by_name(session, name="mt-op")
        assert me is not None
        socks_id = (await repo.save_proxy(session, fields=socks5_fields(me.id, port=1080))).id
    now = int(time.time())
    socks_style = mt_result(mt_id, ok=False, at=now, step="tcp")
    del socks_style["protocol"]
    cases = [
        ([socks_style], "is an MTProto proxy"),
        ([mt_result(socks_id, ok=False, at=now)], "is not an MTProto proxy"),
        ([mt_result(mt_id, ok=False, at=now, step="greeting")], "tcp, handshake and respq"),
    ]
    for results, fragment in cases:
        response = await probe.post(
            "/api/v1/probe/batches", headers=JSON, content=batch(key, results, "ams-1", "NL")
        )
        assert response.status_code == 422 and fragment in response.json()["error"], response.text
    async with world.reg.registry.sessions() as session:
        count = (await session.execute(text("SELECT COUNT(*) FROM probe_results"))).scalar_one()
    assert count == 0


BATCH_DAY = int(dt.datetime(2026, 11, 10, 12, tzinfo=dt.UTC).timestamp())


async def test_grants_pay_an_mtproto_proxy_by_verified_reach(world: World) -> None:
    pytest.importorskip("embit")
    from tests.grants.helpers import address

    put = await world.operator.put(
        "/api/v1/operators/me/payout-address", json={"address": address("mt-op")}
    )
    assert put.status_code == 200, put.text
    with world.proxy() as proxy:
        proxy_id = (await world.register(proxy.port)).json()["proxy_id"]
    world.reg.registry.clock = lambda: BATCH_DAY
    for name, country, control, oks in (
        ("fra-1", "DE", True, [True, True, True]),
        ("msk-1", "RU", False, [True, False, True]),
    ):
        probe, key = await make_probe(world.reg, name, country, control=control)
        results = [
            mt_result(proxy_id, ok=ok, at=BATCH_DAY - 600 + 60 * i) for i, ok in enumerate(oks)
        ]
        sent = await probe.post(
            "/api/v1/probe/batches", headers=JSON, content=batch(key, results, name, country)
        )
        assert sent.status_code == 201, sent.text
    admin = world.reg.client(token=world.reg.admin_token)
    created = await admin.post(
        "/api/v1/grants/rounds",
        json={"period_start": "2026-11-10", "period_end": "2026-11-10",
              "budget_sat": 1_000_000, "fee_reserve_sat": 10_000, "performance_exponent": 1},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    view = created.json()
    (award,) = view["awards"]
    # weight = 10^12 x (3/3 control) x (2/3 in Russia): reach, as for any proxy.
    assert award["weight"] == 10**12 * 2 // 3
    assert award["amount_sat"] == 990_000
    exported = (await admin.get(f"/api/v1/grants/rounds/{view['round_id']}/export")).json()
    (row,) = (rollup_to_json(r) for r in inputs_from_json(exported["inputs"]).rows())
    assert row["proxy_id"] == str(proxy_id) and row["target_successes"] == 2


async def test_migration_0006_adds_and_removes_its_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "m.sqlite3"
    url = f"sqlite+aiosqlite:///{db}"

    def columns() -> set[str]:
        with sqlite3.connect(db) as conn:
            return {row[1] for row in conn.execute("PRAGMA table_info(proxies)")}

    mine = {"mtproto_mode", "mtproto_domain", "mtproto_key"}
    await migrate(url)
    assert mine <= columns()
    await downgrade(url, "0005")
    assert not mine & columns()
    assert "wg_probe_keys" in columns()
    await migrate(url)
    assert mine <= columns()
