"""Signed batch upload over the HTTP API (SQLite and PostgreSQL): what is kept, what is refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.config import Endpoint
from resistance.directory.keys import b64url, public_key_text
from resistance.probe import canary
from resistance.probe.batch import new_batch_id, sign_batch
from resistance.registry import repositories as repo
from resistance.registry.services import publish
from tests.registry.conftest import RunningRegistry, start_registry

JSON = {"Content-Type": "application/json"}
TABLES = ("probe_batches", "probe_results", "probe_evidence", "probe_rollups", "proxy_verdicts")


async def counts(reg: RunningRegistry) -> dict[str, int]:
    async with reg.registry.sessions() as session:
        return {
            t: int((await session.execute(text(f"SELECT COUNT(*) FROM {t}"))).scalar_one())
            for t in TABLES
        }


async def add_proxy(reg: RunningRegistry) -> int:
    await reg.operator("op")
    async with reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name="op")
        assert op is not None
        proxy = await repo.save_proxy(
            session,
            fields={
                "operator_id": op.id, "host": "192.0.2.7", "port": 1080, "network": "192.0.2.0/24",
                "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                "probe_password": "q", "credentials": [], "public": True, "status": "active",
                "registered_at": 1, "verified_at": 1,
            },
        )  # fmt: skip
        return proxy.id


def canary_proof(
    signer: Ed25519PrivateKey,
    probe: Ed25519PrivateKey,
    proxy_id: int,
    at: int,
    *,
    signed_at: int | None = None,
) -> dict[str, Any]:
    """What the canary would answer to ``probe``'s check of ``proxy_id`` begun at ``at``."""
    nonce = canary.bound_nonce(public_key_text(probe.public_key()), proxy_id, at)
    upload = hashlib.sha256(secrets.token_bytes(8)).digest()
    window = canary.window_of(at if signed_at is None else signed_at)
    sig = signer.sign(canary.proof_message(nonce, upload, 1024, window))
    return {"nonce": b64url(nonce), "upload_sha256": b64url(upload), "download": 1024,
            "signature": b64url(sig)}  # fmt: skip


def good_result(
    reg: RunningRegistry,
    proxy_id: int,
    probe: Ed25519PrivateKey,
    *,
    key: Ed25519PrivateKey | None = None,
    at: int | None = None,
) -> dict[str, Any]:
    signer = key or reg.registry.canary_key
    assert signer is not None
    at = int(time.time()) if at is None else at
    return {
        "proxy_id": proxy_id, "at": at, "ok": True, "step": None, "failure": None,
        "detail": "", "tcp_us": 100, "connect_us": 900, "ttfb_us": 300, "throughput_kbps": 5000,
        "canary": canary_proof(signer, probe, proxy_id, at),
    }  # fmt: skip


def bad_result(proxy_id: int) -> dict[str, Any]:
    return {
        "proxy_id": proxy_id, "at": int(time.time()), "ok": False, "step": "tcp",
        "failure": "timeout", "detail": "no answer in 5 s", "tcp_us": None, "connect_us": None,
        "ttfb_us": None, "throughput_kbps": None, "canary": None,
    }  # fmt: skip


def batch(key: Ed25519PrivateKey, results: list[dict[str, Any]], **kw: Any) -> bytes:
    return sign_batch(
        key=key,
        probe_key=kw.get("probe_key", public_key_text(key.public_key())),
        batch_id=kw.get("batch_id", new_batch_id()),
        vantage=kw.get("vantage", "msk-1"),
        country=kw.get("country", "RU"),
        created_at=int(time.time()),
        results=results,
    )


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> Any:
    async with start_registry(tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0)) as reg:
        proxy_id = await add_proxy(reg)
        key = Ed25519PrivateKey.generate()
        admin = reg.client(token=reg.admin_token)
        created = await admin.post(
            "/api/v1/probes",
            json={
                "name": "msk-1",
                "country": "RU",
                "public_key": public_key_text(key.public_key()),
            },
        )
        assert created.status_code == 201, created.text
        probe = reg.client(token=created.json()["token"])
        yield reg, probe, key, proxy_id


async def test_a_good_batch_is_stored_once_and_a_replay_stores_nothing(world: Any) -> None:
    reg, probe, key, proxy_id = world
    data = batch(key, [good_result(reg, proxy_id, key), bad_result(proxy_id)])
    first = await probe.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert first.status_code == 201, first.text
    assert first.json()["stored"] is True
    before = await counts(reg)
    assert before["probe_batches"] == 1 and before["probe_results"] == 2
    again = await probe.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert again.status_code == 200 and again.json() == {**first.json(), "stored": False}
    assert await counts(reg) == before


async def test_forged_batches_are_refused_and_change_nothing(world: Any) -> None:
    reg, probe, key, proxy_id = world
    stranger = Ed25519PrivateKey.generate()
    signed = json.loads(batch(key, [bad_result(proxy_id)]))
    tampered = json.loads(json.dumps(signed))
    tampered["document"]["results"][0]["failure"] = "refused"
    claims_my_key = json.loads(
        batch(stranger, [bad_result(proxy_id)], probe_key=signed["document"]["probe_key"])
    )
    cases = {
        "other key": (batch(stranger, [bad_result(proxy_id)]), 403, "not this probe"),
        "tampered": (json.dumps(tampered).encode(), 422, "does not verify"),
        "my key, stranger's signature": (
            json.dumps(claims_my_key).encode(),
            422,
            "does not verify",
        ),
        "forged canary": (
            batch(key, [good_result(reg, proxy_id, key, key=stranger)]),
            422,
            "canary",
        ),
        "other vantage": (batch(key, [bad_result(proxy_id)], vantage="spb-1"), 422, "vantage"),
        "unknown proxy": (batch(key, [bad_result(proxy_id + 99)]), 422, "unknown proxy"),
        "garbage": (
            b'{"format": "resist-probe-batch/1", "document": 1, "signature": "x"}',
            422,
            "",
        ),
    }
    before = await counts(reg)
    for name, (body, status, fragment) in cases.items():
        response = await probe.post("/api/v1/probe/batches", headers=JSON, content=body)
        assert response.status_code == status, (name, response.text)
        assert fragment in response.json()["error"], (name, response.text)
    assert await counts(reg) == before == dict.fromkeys(TABLES, 0)


async def test_same_batch_id_with_other_content_is_refused(world: Any) -> None:
    reg, probe, key, proxy_id = world
    batch_id = new_batch_id()
    first = await probe.post(
        "/api/v1/probe/batches",
        headers=JSON,
        content=batch(key, [bad_result(proxy_id)], batch_id=batch_id),
    )
    assert first.status_code == 201
    before = await counts(reg)
    other = batch(key, [good_result(reg, proxy_id, key)], batch_id=batch_id)
    response = await probe.post("/api/v1/probe/batches", headers=JSON, content=other)
    assert response.status_code == 409
    assert await counts(reg) == before


async def test_only_probe_tokens_upload_and_only_the_admin_makes_probes(world: Any) -> None:
    reg, probe, key, proxy_id = world
    operator = reg.client(token=await reg.operator("someone"))
    response = await operator.post(
        "/api/v1/probe/batches", headers=JSON, content=batch(key, [bad_result(proxy_id)])
    )
    assert response.status_code == 403
    response = await probe.post(
        "/api/v1/probes", json={"name": "x", "country": "RU", "public_key": "A" * 43}
    )
    assert response.status_code == 403
    assert (await probe.get("/api/v1/probe/assignment")).json()["proxies"][0][
        "proxy_id"
    ] == proxy_id


async def test_a_batch_is_taken_only_with_a_live_probe_token(world: Any) -> None:
    """The upload reads the token and the probe's account together (issue 25): each way
    of asking without a live probe token is refused as before, and nothing is stored."""
    reg, probe, key, proxy_id = world
    data = batch(key, [bad_result(proxy_id)])
    nobody = await reg.client().post("/api/v1/probe/batches", headers=JSON, content=data)
    assert (nobody.status_code, nobody.json()["error"]) == (401, "missing bearer token")
    stranger = reg.client(token="resist_" + "x" * 40)
    unknown = await stranger.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert (unknown.status_code, unknown.json()["error"]) == (401, "unknown API token")
    admin = reg.client(token=reg.admin_token)
    refused = await admin.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert (refused.status_code, refused.json()["error"]) == (403, "this needs a probe token")
    assert set((await counts(reg)).values()) == {0}
    stored = await probe.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert stored.status_code == 201, stored.text


async def test_import_blocklist_flags_proxies_in_the_censor_registry(
    tmp_path: Path, db_url: str
) -> None:
    import asyncio

    from click.testing import CliRunner

    from resistance.cli import main

    dump = tmp_path / "dump.csv"
    dump.write_bytes(
        "Updated: 2018-04-17\n192.0.2.0/24 | 203.0.113.9;x.example;;;1;2018\nbroken line\n".encode(
            "cp1251"
        )
    )
    async with start_registry(tmp_path / "reg", db_url) as reg:
        await add_proxy(reg)
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["registry", "import-blocklist", str(dump), "--db", db_url]
    )
    assert result.exit_code == 0, result.output
    assert "imported 2 prefixes" in result.output and "1 bad lines skipped" in result.output
    assert "1 of 1 proxies are in it" in result.output and "192.0.2.7:1080" in result.output
    async with start_registry(tmp_path / "reg", db_url, auto_migrate=False) as reg:
        signed = await publish(reg.registry)
        (entry,) = signed["document"]["proxies"]
        assert entry["measurements"]["censor_listed"] is True
        assert entry["status"] == "untested"


async def test_one_batch_uploaded_twice_at_once_is_stored_once(world: Any) -> None:
    """The second upload reads no stored digest (PostgreSQL: its snapshot predates the
    fold locks the first holds) and is then stopped by the batch id's unique key: it is
    answered as a retry, not a 500, and the results are counted once."""
    reg, probe, key, proxy_id = world
    data = batch(key, [good_result(reg, proxy_id, key), bad_result(proxy_id)])
    answers = await asyncio.gather(
        *(probe.post("/api/v1/probe/batches", headers=JSON, content=data) for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [200, 201], [a.text for a in answers]
    assert sorted(a.json()["stored"] for a in answers) == [False, True]
    stored = await counts(reg)
    assert stored["probe_batches"] == 1 and stored["probe_results"] == 2
    async with reg.registry.sessions() as session:
        attempts = (await session.execute(text("SELECT SUM(attempts) FROM probe_rollups"))).scalar()
    assert attempts == 2


async def _delete_the_proxy_on_insert(reg: RunningRegistry) -> None:
    """A trigger that deletes a result's proxy as the result is stored: the proxy vanishes
    while its batch is stored, as when an admin removes it at that moment."""
    async with reg.registry.sessions.begin() as session:
        if reg.registry.engine.dialect.name == "sqlite":
            await session.execute(text(
                "CREATE TRIGGER vanish BEFORE INSERT ON probe_results"
                " BEGIN DELETE FROM proxies WHERE id = NEW.proxy_id; END"
            ))  # fmt: skip
            return
        await session.execute(text(
            "CREATE FUNCTION vanish() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN DELETE FROM proxies WHERE id = NEW.proxy_id; RETURN NEW; END $$"
        ))  # fmt: skip
        await session.execute(text(
            "CREATE TRIGGER vanish BEFORE INSERT ON probe_results"
            " FOR EACH ROW EXECUTE FUNCTION vanish()"
        ))  # fmt: skip


async def test_a_proxy_gone_while_its_batch_is_stored_is_a_retry_not_a_conflict(
    world: Any,
) -> None:
    """Only a stored batch id is a 409 (which the probe drops for good); any other broken
    key (here a proxy deleted meanwhile) is a 503 the probe sends again, storing nothing."""
    reg, probe, key, proxy_id = world
    await _delete_the_proxy_on_insert(reg)
    response = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=batch(key, [bad_result(proxy_id)])
    )
    assert response.status_code == 503, response.text
    assert "send it again" in response.json()["error"]
    assert response.headers["Retry-After"] == "5"
    assert await counts(reg) == dict.fromkeys(TABLES, 0)
