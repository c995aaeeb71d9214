"""The HTTP API over real requests (ASGI), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from resistance.directory.document import verify_directory
from resistance.directory.keys import parse_public_key
from resistance.registry import repositories as repo
from resistance.registry.settings import RateLimit
from tests.registry.conftest import RunningRegistry, start_registry

REGTEST_P2WPKH = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
MAINNET_P2TR = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"


async def snapshot(reg: RunningRegistry) -> dict[str, list[Any]]:
    """Every stored row, to show that refused requests changed nothing."""
    tables = ("operators", "api_tokens", "proxies", "statement_nonces", "publications")
    async with reg.registry.sessions() as session:
        return {
            t: [tuple(r) for r in (await session.execute(text(f"SELECT * FROM {t} ORDER BY 1")))]
            for t in tables
        }


async def add_proxy(reg: RunningRegistry, operator: str, host: str, *, public: bool) -> None:
    async with reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name=operator)
        assert op is not None
        await repo.save_proxy(
            session,
            fields={
                "operator_id": op.id, "host": host, "port": 1080, "network": host + "/24",
                "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                "probe_password": "q", "credentials": [{"username": "u", "password": "s"}],
                "public": public, "status": "active", "registered_at": 1, "verified_at": 1,
            },
        )  # fmt: skip


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body


async def test_health_and_openapi(running: RunningRegistry) -> None:
    client = running.client()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/directory" in spec["paths"] and "/api/v1/proxies/assign" in spec["paths"]


async def test_errors_are_json(running: RunningRegistry) -> None:
    client = running.client()
    assert_error(await client.get("/nope"), 404, "no such path")
    assert_error(await client.delete("/healthz"), 405)
    r = await client.post(
        "/api/v1/operators", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 422, "invalid request")
    r = await client.post("/api/v1/operators", json={"name": 5})
    assert_error(r, 422, "name")
    assert r.json()["details"][0]["field"] == "name"
    r = await client.post("/api/v1/operators", json={"name": "x" * 100_000})
    assert_error(r, 413, "larger than")


async def test_signup_auth_and_roles(running: RunningRegistry) -> None:
    token = await running.operator("alice")
    assert token.startswith("rst_")
    assert_error(await running.client().post("/api/v1/operators", json={"name": "alice"}), 409)
    me = await running.client(token=token).get("/api/v1/operators/me")
    assert me.json()["name"] == "alice" and me.json()["payout_address"] is None
    assert_error(await running.client().get("/api/v1/operators/me"), 401, "missing")
    assert_error(await running.client(token="rst_nope").get("/api/v1/operators/me"), 401)
    assert_error(await running.client(token=running.admin_token).get("/api/v1/operators/me"), 403)
    assert_error(await running.client(token=token).post("/api/v1/directory/publish"), 403)
    # tokens are stored only hashed
    rows = await snapshot(running)
    assert token not in json.dumps(rows, default=str)
    assert running.admin_token not in json.dumps(rows, default=str)


async def test_payout_address(running: RunningRegistry) -> None:
    token = await running.operator("bob")
    client = running.client(token=token)
    r = await client.put(
        "/api/v1/operators/me/payout-address", json={"address": REGTEST_P2WPKH.upper()}
    )
    assert r.status_code == 200 and r.json() == {
        "address": REGTEST_P2WPKH, "type": "p2wpkh", "network": "regtest"
    }  # fmt: skip
    before = await snapshot(running)
    for bad, says in [
        (MAINNET_P2TR, "this is a bitcoin address"),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081", "not a valid"),
        ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kYgt080", "mix"),
    ]:
        assert_error(
            await client.put("/api/v1/operators/me/payout-address", json={"address": bad}),
            422,
            says,
        )
    assert_error(await client.put("/api/v1/operators/me/payout-address", json={"address": 7}), 422)
    assert await snapshot(running) == before
    assert (await client.get("/api/v1/operators/me")).json()["payout_address"] == REGTEST_P2WPKH


async def test_directory_publish_and_keys(running: RunningRegistry) -> None:
    await running.operator("carol")
    await add_proxy(running, "carol", "198.51.100.1", public=True)
    await add_proxy(running, "carol", "198.51.100.2", public=False)
    client = running.client()
    keys = [
        parse_public_key(k["public_key"])
        for k in (await client.get("/api/v1/directory/keys")).json()["keys"]
    ]
    first = (await client.get("/api/v1/directory")).json()
    r = await running.client(token=running.admin_token).post("/api/v1/directory/publish")
    assert r.status_code == 200 and r.json()["proxies"] == 1
    served = (await client.get("/api/v1/directory")).content
    on_disk = (running.state_dir / "directory.json").read_bytes()
    assert json.loads(served) == json.loads(on_disk)
    now = running.registry.now()
    verified = verify_directory(
        served, trusted=keys, threshold=1, now=now, last_serial=first["document"]["serial"]
    )
    assert verified.serial > first["document"]["serial"]
    hosts = [p["endpoint"]["host"] for p in verified.document["proxies"]]
    assert hosts == ["198.51.100.1"]
    assert verified.document["proxies"][0]["credentials"] == [{"username": "u", "password": "s"}]
    assert verified.document["valid_until"] - verified.document["valid_after"] == 24 * 3600


async def test_assignment_is_stable_per_network_and_day(running: RunningRegistry) -> None:
    await running.operator("dave")
    for i in range(30):
        await add_proxy(running, "dave", f"192.0.2.{i + 1}", public=False)
    await add_proxy(running, "dave", "192.0.2.200", public=True)

    async def endpoints(ip: str) -> list[str]:
        r = await running.client(ip=ip).get("/api/v1/proxies/assign")
        assert r.status_code == 200, r.text
        return [p["endpoint"]["host"] for p in r.json()["proxies"]]

    a = await endpoints("10.1.2.3")
    assert len(a) == 3 and "192.0.2.200" not in a
    assert await endpoints("10.1.99.42") == a  # same /16
    others = {tuple(await endpoints(f"10.{n}.0.1")) for n in range(2, 12)}
    assert len(others) > 1
    v6 = await endpoints("2001:db8:1:2::5")
    assert await endpoints("2001:db8:ffff::1") == v6  # same /32


async def test_rate_limits(tmp_path: Path, db_url: str) -> None:
    async with start_registry(
        tmp_path / "r", db_url, signup_limit=RateLimit(0.001, 2), public_limit=RateLimit(0.001, 3)
    ) as reg:
        codes = [(await reg.client().get("/healthz")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await reg.client(ip="127.0.0.200").get("/healthz")  # same /24
        assert_error(r, 429, "too many")
        assert int(r.headers["retry-after"]) >= 1
        assert (await reg.client(ip="127.0.1.1").get("/healthz")).status_code == 200
        names = ["e1", "e2", "e3"]
        codes = [
            (await reg.client().post("/api/v1/operators", json={"name": n})).status_code
            for n in names
        ]
        assert codes == [201, 201, 429]


async def test_admin_token_made_once(tmp_path: Path, db_url: str) -> None:
    async with start_registry(tmp_path / "r", db_url) as reg:
        assert reg.admin_token.startswith("rst_")
    async with start_registry(tmp_path / "r", db_url) as again:
        assert again.admin_token == ""
        r = await again.client(token=reg.admin_token).post("/api/v1/directory/publish")
        assert r.status_code == 200


async def test_private_endpoints_refused_by_default(tmp_path: Path, db_url: str) -> None:
    from resistance.registry.client import registration_body

    (tmp_path / "node").mkdir()
    async with start_registry(tmp_path / "r", db_url, allow_private_endpoints=False) as reg:
        token = await reg.operator("priv")
        for host in ("127.0.0.1", "10.0.0.1", "::1", "0.0.0.0"):
            body = registration_body(
                state_dir=tmp_path / "node",
                operator_id=reg.operator_ids[token],
                host=host,
                port=1080,
                public=False,
                users=[],
            )
            r = await reg.client(token=token).post("/api/v1/proxies", json=body)
            assert_error(r, 422, host)


async def test_periodic_publication_task(tmp_path: Path, db_url: str) -> None:
    import asyncio

    from resistance.registry.app import PUBLISH_TASK

    async with start_registry(tmp_path / "r", db_url, publish_interval=0.2) as reg:
        first = (await reg.client().get("/api/v1/directory")).json()["document"]["serial"]
        for _ in range(50):
            await asyncio.sleep(0.1)
            serial = (await reg.client().get("/api/v1/directory")).json()["document"]["serial"]
            if serial > first:
                break
        assert serial > first
        assert any(t.get_name() == PUBLISH_TASK for t in asyncio.all_tasks())
    assert not any(t.get_name() == PUBLISH_TASK and not t.done() for t in asyncio.all_tasks())
