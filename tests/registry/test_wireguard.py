"""WireGuard endpoints in the registry (SQLite and PostgreSQL), against a handshake responder.

The WireGuard server here is ``tests.vpn.responder.UdpResponder`` on a
loopback UDP port: it answers handshakes only from the peer keys it was
given, with its own server key, and is silent otherwise, as wireguard-go is
(``test_wireguard_live.py`` does the same with the real thing).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.directory.keys import public_key_text
from resistance.probe.batch import new_batch_id, sign_batch
from resistance.probe.wireguard import key_announcement
from resistance.registry import repositories as repo
from resistance.registry.db import migrate
from resistance.registry.services import publish
from resistance.vpn import keys
from tests.registry.conftest import RunningRegistry, start_registry
from tests.vpn.responder import UdpResponder

JSON = {"Content-Type": "application/json"}


@dataclass
class World:
    reg: RunningRegistry
    operator: httpx.AsyncClient
    prober: str  # the registry's WireGuard prober key
    server: keys.KeyPair

    def body(self, port: int, **extra: Any) -> dict[str, Any]:
        return {
            "endpoint": {"host": "127.0.0.1", "port": port},
            "public_key": self.server.public_text,
            **extra,
        }

    async def register(self, port: int, **extra: Any) -> httpx.Response:
        return await self.operator.post(
            "/api/v1/wireguard/endpoints", json=self.body(port, **extra)
        )

    async def proxies(self) -> list[dict[str, Any]]:
        response = await self.operator.get("/api/v1/proxies")
        assert response.status_code == 200
        found: list[dict[str, Any]] = response.json()["proxies"]
        return found


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    async with start_registry(tmp_path / "reg", db_url, challenge_timeout=1.0) as reg:
        operator = reg.client(token=await reg.operator("wg-op"))
        answer = await reg.client().get("/api/v1/wireguard/prober-key")
        assert answer.status_code == 200
        yield World(reg, operator, answer.json()["public_key"], keys.KeyPair.generate())


def responder(w: World, **kw: Any) -> UdpResponder:
    return UdpResponder(w.server.private, {keys.decode(w.prober)}, **kw)


async def test_prober_key_is_kept_in_the_state_directory(tmp_path: Path, db_url: str) -> None:
    seen = []
    for _ in range(2):
        async with start_registry(tmp_path / "reg", db_url) as reg:
            body = (await reg.client().get("/api/v1/wireguard/prober-key")).json()
            seen.append(body["public_key"])
            assert body["probe_keys"] == []
    assert seen[0] == seen[1]
    path = tmp_path / "reg" / "wireguard-prober.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.KeyPair.from_private(keys.read_key_file(path)).public_text == seen[0]
    assert seen[0] not in path.read_text()  # the file holds the private half


async def test_a_server_that_answers_with_its_key_is_registered(world: World) -> None:
    with responder(world) as server:
        response = await world.register(server.port, public=True)
        assert response.status_code == 201, response.text
        view = response.json()
        assert view["protocols"] == ["wireguard"]
        assert view["wg_public_key"] == world.server.public_text
        assert view["endpoint"] == {"host": "127.0.0.1", "port": server.port}
        assert server.counts.responses == 1 and server.counts.keepalives == 1
    assert [p["proxy_id"] for p in await world.proxies()] == [view["proxy_id"]]
    # The directory lists it by protocol and server key, with nothing a SOCKS5 client uses.
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"]
    assert entry["protocols"] == ["wireguard"] and entry["status"] == "untested"
    assert entry["wg_public_key"] == world.server.public_text
    assert "credentials" not in entry and "node_key" not in entry
    from resistance.client.directory import upstreams_from

    assert upstreams_from(signed["document"]) == []


async def test_registering_again_updates_the_same_proxy(world: World) -> None:
    with responder(world) as server:
        first = (await world.register(server.port)).json()
        again = await world.register(server.port, public=True)
        assert again.status_code == 201 and again.json()["proxy_id"] == first["proxy_id"]
    assert len(await world.proxies()) == 1
    other = world.reg.client(token=await world.reg.operator("someone-else"))
    with responder(world) as server2:
        await world.register(server2.port)
        taken = await other.post("/api/v1/wireguard/endpoints", json=world.body(server2.port))
        assert taken.status_code == 409 and "another operator" in taken.json()["error"]


@pytest.mark.parametrize("case", ["wrong server key", "prober not a peer", "stopped server"])
async def test_no_valid_answer_is_refused_and_nothing_is_stored(world: World, case: str) -> None:
    peers = {keys.decode(world.prober)}
    if case == "prober not a peer":
        peers = {keys.KeyPair.generate().public}
    server = UdpResponder(world.server.private, peers)
    port = server.port
    extra: dict[str, Any] = {}
    if case == "wrong server key":
        extra["public_key"] = keys.KeyPair.generate().public_text
    if case == "stopped server":
        server.close()
    started = time.monotonic()
    try:
        body = {**world.body(port), **extra}
        response = await world.operator.post("/api/v1/wireguard/endpoints", json=body)
    finally:
        server.close()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error.startswith("proof of control failed")
    if case != "stopped server":  # (a closed loopback port answers with ICMP at once)
        assert "no WireGuard handshake response" in error and "add-probe" in error
        assert time.monotonic() - started >= 0.9
    assert await world.proxies() == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"public_key": "not-a-key"}, "public_key"),
        ({"endpoint": {"host": "localhost", "port": 51820}}, "nor a name"),
        ({"probe_keys": ["x"]}, "probe_keys"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_requests_are_refused_without_a_handshake(
    world: World, body: dict[str, Any], fragment: str
) -> None:
    response = await world.operator.post(
        "/api/v1/wireguard/endpoints", json={**world.body(9), **body}
    )
    assert response.status_code == 422 and fragment in response.json()["error"], response.text


async def test_only_operators_register_and_a_socks5_endpoint_is_not_taken_over(
    world: World,
) -> None:
    anonymous = await world.reg.client().post("/api/v1/wireguard/endpoints", json=world.body(9))
    assert anonymous.status_code == 401
    async with world.reg.registry.sessions.begin() as session:
        me = await repo.operator_by_name(session, name="wg-op")
        assert me is not None
        await repo.save_proxy(session, fields=socks5_fields(me.id, port=1080))
    response = await world.operator.post("/api/v1/wireguard/endpoints", json=world.body(1080))
    assert response.status_code == 409 and "SOCKS5 node" in response.json()["error"]


def socks5_fields(operator_id: int, *, port: int) -> dict[str, Any]:
    return {
        "operator_id": operator_id, "host": "127.0.0.1", "port": port, "network": "127.0.0.0/24",
        "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
        "credentials": [], "public": False, "status": "active", "registered_at": 1,
        "verified_at": 1,
    }  # fmt: skip


# --- probes ---------------------------------------------------------------------------


async def make_probe(
    reg: RunningRegistry, name: str, country: str, *, control: bool = False
) -> tuple[httpx.AsyncClient, Ed25519PrivateKey, keys.KeyPair]:
    key = Ed25519PrivateKey.generate()
    admin = reg.client(token=reg.admin_token)
    created = await admin.post(
        "/api/v1/probes",
        json={
            "name": name,
            "country": country,
            "control": control,
            "public_key": public_key_text(key.public_key()),
        },
    )
    assert created.status_code == 201, created.text
    client = reg.client(token=created.json()["token"])
    wg = keys.KeyPair.generate()
    prober = (await reg.client().get("/api/v1/wireguard/prober-key")).json()["public_key"]
    body = key_announcement(
        key, wg, probe_key=public_key_text(key.public_key()), prober_key=prober,
        at=int(time.time()),
    )  # fmt: skip
    announced = await client.put("/api/v1/probe/wireguard-key", json=body)
    assert announced.status_code == 200, announced.text
    return client, key, wg


def wg_result(proxy_id: int, *, ok: bool, **kw: Any) -> dict[str, Any]:
    result = {
        "proxy_id": proxy_id, "at": int(time.time()), "ok": ok,
        "step": None if ok else "handshake", "failure": None if ok else "timeout",
        "detail": "" if ok else "no valid response within 2.5 s", "tcp_us": None,
        "connect_us": 1500 if ok else None, "ttfb_us": None, "throughput_kbps": None,
        "canary": None, "protocol": "wireguard",
    }  # fmt: skip
    result.update(kw)
    return result


def batch(key: Ed25519PrivateKey, results: list[dict[str, Any]], vantage: str, cc: str) -> bytes:
    return sign_batch(
        key=key,
        probe_key=public_key_text(key.public_key()),
        batch_id=new_batch_id(),
        vantage=vantage,
        country=cc,
        created_at=int(time.time()),
        results=results,
    )


async def test_probes_are_sent_only_where_their_key_was_added(world: World) -> None:
    listed, l_key, l_wg = await make_probe(world.reg, "ams-1", "NL", control=True)
    unlisted, _, u_wg = await make_probe(world.reg, "msk-1", "RU")
    keys_now = (await world.reg.client().get("/api/v1/wireguard/prober-key")).json()
    assert keys_now["probe_keys"] == sorted([l_wg.public_text, u_wg.public_text])
    with responder(world) as server:
        view = (await world.register(server.port, probe_keys=[l_wg.public_text])).json()
    (target,) = (await listed.get("/api/v1/probe/assignment")).json()["proxies"]
    assert target["proxy_id"] == view["proxy_id"] and target["protocol"] == "wireguard"
    assert target["wg_public_key"] == world.server.public_text
    assert (await unlisted.get("/api/v1/probe/assignment")).json()["proxies"] == []
    # Not handed out by the hash ring: a SOCKS5 requester could not use it.
    assert (await world.reg.client().get("/api/v1/proxies/assign")).json()["proxies"] == []
    # An operator cannot announce a probe key.
    refused = await world.operator.put(
        "/api/v1/probe/wireguard-key",
        json=key_announcement(
            l_key, l_wg, probe_key=public_key_text(l_key.public_key()), prober_key=world.prober,
            at=int(time.time()),
        ),
    )  # fmt: skip
    assert refused.status_code == 403
    del l_key


async def test_wireguard_results_land_in_rollups_and_verdicts(world: World) -> None:
    probe, key, wg = await make_probe(world.reg, "ams-1", "NL", control=True)
    with responder(world) as server:
        proxy_id = (await world.register(server.port, probe_keys=[wg.public_text])).json()[
            "proxy_id"
        ]
    up = batch(key, [wg_result(proxy_id, ok=True), wg_result(proxy_id, ok=True)], "ams-1", "NL")
    stored = await probe.post("/api/v1/probe/batches", headers=JSON, content=up)
    assert stored.status_code == 201, stored.text
    status = await world.reg.client(token=world.reg.admin_token).get(
        f"/api/v1/proxies/{proxy_id}/status"
    )
    assert status.json()["status"] == "functional"
    down = batch(key, [wg_result(proxy_id, ok=False)] * 2, "ams-1", "NL")
    assert (
        await probe.post("/api/v1/probe/batches", headers=JSON, content=down)
    ).status_code == 201
    async with world.reg.registry.sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT country, control, attempts, successes, latency_p50_ms "
                    f"FROM probe_rollups WHERE proxy_id = {proxy_id}"
                )
            )
        ).all()
        steps = (
            await session.execute(text("SELECT DISTINCT step, failure FROM probe_results"))
        ).all()
    assert [tuple(r) for r in rows] == [("NL", True, 4, 2, 2)]
    assert {tuple(s) for s in steps} == {(None, None), ("handshake", "timeout")}
    status = await world.reg.client(token=world.reg.admin_token).get(
        f"/api/v1/proxies/{proxy_id}/status"
    )
    assert status.json()["status"] == "down"
    signed = await publish(world.reg.registry)
    (entry,) = signed["document"]["proxies"] if signed["document"]["proxies"] else [None]
    assert entry is None  # registered without --public: not in the public directory


async def test_results_must_use_the_proxys_protocol(world: World) -> None:
    probe, key, wg = await make_probe(world.reg, "ams-1", "NL", control=True)
    with responder(world) as server:
        wg_id = (await world.register(server.port, probe_keys=[wg.public_text])).json()["proxy_id"]
    async with world.reg.registry.sessions.begin() as session:
        me = await repo.operator_by_name(session, name="wg-op")
        assert me is not None
        socks_id = (await repo.save_proxy(session, fields=socks5_fields(me.id, port=1080))).id
    socks_style = wg_result(wg_id, ok=False, step="tcp")
    del socks_style["protocol"]
    cases = [
        ([socks_style], "is a WireGuard server"),
        ([wg_result(socks_id, ok=True)], "is not a WireGuard server"),
        ([wg_result(wg_id, ok=False, step="tcp")], "one step, handshake"),
    ]
    for results, fragment in cases:
        response = await probe.post(
            "/api/v1/probe/batches", headers=JSON, content=batch(key, results, "ams-1", "NL")
        )
        assert response.status_code == 422 and fragment in response.json()["error"], response.text
    async with world.reg.registry.sessions() as session:
        count = (await session.execute(text("SELECT COUNT(*) FROM probe_results"))).scalar_one()
    assert count == 0


async def test_migration_0005_adds_and_removes_its_columns(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "m.sqlite3"
    url = f"sqlite+aiosqlite:///{db}"

    def columns(table: str) -> set[str]:
        with sqlite3.connect(db) as conn:
            return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    await migrate(url)
    assert {"wg_public_key", "wg_probe_keys"} <= columns("proxies")
    assert "wg_public_key" in columns("probe_accounts")
    await downgrade(url, "0004")
    assert not {"wg_public_key", "wg_probe_keys"} & columns("proxies")
    assert "wg_public_key" not in columns("probe_accounts")
    await migrate(url)
    assert "wg_probe_keys" in columns("proxies")


async def downgrade(url: str, revision: str) -> None:
    from alembic import command
    from sqlalchemy.engine import Connection

    from resistance.registry.db import alembic_config, make_engine

    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()
