"""Probes speak only for themselves (issue 26 point 6), on SQLite and PostgreSQL.

What was found: a probe's signed WireGuard "ok" for an endpoint outside its
assignment was accepted and moved verdicts; a probe could announce another
probe's WireGuard key and be sent where only the other was added; one canary
proof fetched straight from the canary backed successes for two proxies.
Each test below fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from resistance.directory.keys import b64url, public_key_text
from resistance.probe import canary
from resistance.probe.wireguard import key_announcement
from resistance.registry import repositories as repo
from resistance.registry.db import migrate
from resistance.vpn import keys
from tests.probe.test_batches_api import batch as socks_batch
from tests.probe.test_batches_api import canary_proof, good_result
from tests.probe.test_batches_api import world as socks_world
from tests.registry.conftest import RunningRegistry
from tests.registry.test_wireguard import (
    JSON,
    World,
    batch,
    downgrade,
    make_probe,
    responder,
    wg_result,
    world,
)

__all__ = ["socks_world", "world"]  # fixtures used by name below


async def scalar(reg: RunningRegistry, sql: str) -> Any:
    async with reg.registry.sessions() as session:
        return (await session.execute(text(sql))).scalar_one()


async def status(reg: RunningRegistry, proxy_id: int) -> str:
    answer = await reg.client(token=reg.admin_token).get(f"/api/v1/proxies/{proxy_id}/status")
    found: str = answer.json()["status"]
    return found


async def add_socks_proxy(reg: RunningRegistry, host: str, *, status: str = "active") -> int:
    """Another SOCKS5 proxy of the batch tests' operator (id 1)."""
    async with reg.registry.sessions.begin() as session:
        proxy = await repo.save_proxy(
            session,
            fields={
                "operator_id": 1, "host": host, "port": 1080, "network": "192.0.2.0/24",
                "public_key": "k" * 43, "protocols": ["socks5"], "probe_user": "p",
                "probe_password": "q", "credentials": [], "public": True, "status": status,
                "registered_at": 1, "verified_at": 1,
            },
        )  # fmt: skip
        return proxy.id


# --- results count only for the probe's assignment ------------------------------------


Probe = tuple[httpx.AsyncClient, Ed25519PrivateKey, keys.KeyPair]


async def endpoint_for_one_of_two(world: World) -> tuple[Probe, Probe, int]:
    """Probes ams-1 and fra-1; a WireGuard endpoint whose operator added only ams-1."""
    added = await make_probe(world.reg, "ams-1", "NL", control=True)
    other = await make_probe(world.reg, "fra-1", "DE", control=True)
    with responder(world) as server:
        answer = await world.register(server.port, probe_keys=[added[2].public_text])
    return added, other, int(answer.json()["proxy_id"])


async def test_a_wireguard_ok_outside_the_assignment_counts_for_nothing(world: World) -> None:
    (listed, l_key, _), (outsider, o_key, _), proxy_id = await endpoint_for_one_of_two(world)
    claimed = batch(o_key, [wg_result(proxy_id, ok=True)] * 2, "fra-1", "DE")
    answer = await outsider.post("/api/v1/probe/batches", headers=JSON, content=claimed)
    assert answer.status_code == 201, answer.text
    assert answer.json()["results"] == 0 and answer.json()["not_counted"] == [proxy_id]
    # Kept verbatim in the signed batch, but no result, evidence, rollup or verdict.
    assert await scalar(world.reg, "SELECT COUNT(*) FROM probe_batches") == 1
    for table in ("probe_results", "probe_evidence", "probe_rollups", "proxy_verdicts"):
        assert await scalar(world.reg, f"SELECT COUNT(*) FROM {table}") == 0, table
    assert await status(world.reg, proxy_id) == "untested"
    # The probe the operator added is counted.
    mine = batch(l_key, [wg_result(proxy_id, ok=True)], "ams-1", "NL")
    answer = await listed.post("/api/v1/probe/batches", headers=JSON, content=mine)
    assert answer.status_code == 201 and answer.json()["results"] == 1, answer.text
    assert answer.json()["not_counted"] == []
    assert await status(world.reg, proxy_id) == "functional"


async def test_results_for_a_proxy_no_longer_active_do_not_count(socks_world: Any) -> None:
    reg, probe, key, proxy_id = socks_world
    retired = await add_socks_proxy(reg, "192.0.2.9", status="retired")
    data = socks_batch(key, [good_result(reg, proxy_id, key), good_result(reg, retired, key)])
    answer = await probe.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert answer.status_code == 201, answer.text
    assert answer.json()["results"] == 1 and answer.json()["not_counted"] == [retired]
    assert await scalar(reg, f"SELECT COUNT(*) FROM probe_rollups WHERE proxy_id = {retired}") == 0
    # A retry reports what was counted the first time.
    again = await probe.post("/api/v1/probe/batches", headers=JSON, content=data)
    assert again.status_code == 200 and again.json()["results"] == 1


# --- a probe's WireGuard key is proven and its own ------------------------------------


def announcement(
    world: World, key: Ed25519PrivateKey, wg: keys.KeyPair, **kw: Any
) -> dict[str, Any]:
    return key_announcement(
        kw.pop("signer", key),
        wg,
        probe_key=public_key_text(key.public_key()),
        prober_key=kw.pop("prober", world.prober),
        at=kw.pop("at", int(time.time())),
    )


async def test_a_probe_cannot_announce_another_probes_key(world: World) -> None:
    (victim, v_key, v_wg), (thief, t_key, t_wg), proxy_id = await endpoint_for_one_of_two(world)
    # Claiming the victim's public key without its private key: no proof of possession.
    pretend = keys.KeyPair(private=t_wg.private, public=v_wg.public)
    claimed = await thief.put(
        "/api/v1/probe/wireguard-key", json=announcement(world, t_key, pretend)
    )
    assert claimed.status_code == 422 and "held" in claimed.text, claimed.text
    # Even holding a copy of it: one key, one probe.
    taken = await thief.put("/api/v1/probe/wireguard-key", json=announcement(world, t_key, v_wg))
    assert taken.status_code == 409, taken.text
    assert (await thief.get("/api/v1/probe/assignment")).json()["proxies"] == []
    (target,) = (await victim.get("/api/v1/probe/assignment")).json()["proxies"]
    assert target["proxy_id"] == proxy_id
    # Announcing one's own key again is fine.
    again = await victim.put("/api/v1/probe/wireguard-key", json=announcement(world, v_key, v_wg))
    assert again.status_code == 200, again.text
    assert (
        await scalar(world.reg, "SELECT wg_public_key FROM probe_accounts WHERE name = 'fra-1'")
        == t_wg.public_text
    )


async def test_an_announcement_must_be_signed_proven_and_recent(world: World) -> None:
    probe, key, wg = await make_probe(world.reg, "ams-1", "NL", control=True)
    fresh = keys.KeyPair.generate()
    stranger = Ed25519PrivateKey.generate()
    good = announcement(world, key, fresh)
    cases = {
        "unsigned": {"public_key": fresh.public_text},
        "no possession proof": {k: v for k, v in good.items() if k != "possession"},
        "stranger's signature": announcement(world, key, fresh, signer=stranger),
        "stranger's statement": announcement(world, stranger, fresh),
        "for another registry": announcement(
            world, key, fresh, prober=keys.KeyPair.generate().public_text
        ),
        "an hour old": announcement(world, key, fresh, at=int(time.time()) - 3600),
        "garbage signature": {**good, "signature": "A" * 86},
        "garbage possession": {**good, "possession": "A" * 43},
    }
    for name, body in cases.items():
        answer = await probe.put("/api/v1/probe/wireguard-key", json=body)
        assert answer.status_code == 422, (name, answer.text)
    assert await scalar(world.reg, "SELECT wg_public_key FROM probe_accounts") == wg.public_text
    answer = await probe.put("/api/v1/probe/wireguard-key", json=good)
    assert answer.status_code == 200, answer.text
    assert await scalar(world.reg, "SELECT wg_public_key FROM probe_accounts") == fresh.public_text


# --- a canary proof backs one probe's one check of one proxy, at its time ----------------


async def test_one_canary_proof_cannot_back_two_proxies_probes_or_times(socks_world: Any) -> None:
    reg, probe, key, proxy_id = socks_world
    twin_id = await add_socks_proxy(reg, "192.0.2.8")
    signer = reg.registry.canary_key
    assert signer is not None
    at = int(time.time())
    one = good_result(reg, proxy_id, key, at=at)
    reused_for_twin = {**good_result(reg, twin_id, key, at=at), "canary": one["canary"]}
    someone_elses = {
        **one, "canary": canary_proof(signer, Ed25519PrivateKey.generate(), proxy_id, at)
    }  # fmt: skip
    fetched_early = {**one, "canary": canary_proof(signer, key, proxy_id, at, signed_at=at - 900)}
    redated = {**one, "at": at - 900}
    for name, result in {
        "reused for another proxy": reused_for_twin,
        "made for another probe": someone_elses,
        "signed 15 minutes before": fetched_early,
        "re-dated": redated,
    }.items():
        answer = await probe.post(
            "/api/v1/probe/batches", headers=JSON, content=socks_batch(key, [result])
        )
        assert answer.status_code == 422 and "canary proof" in answer.text, name
    assert await scalar(reg, "SELECT COUNT(*) FROM probe_results") == 0
    answer = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=socks_batch(key, [one])
    )
    assert answer.status_code == 201, answer.text


async def fetch_canary(host: str, port: int, nonce: bytes) -> bytes:
    """Ask the registry's real canary directly (no proxy) over a loopback socket."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(canary.request_bytes(nonce, b"up", 0))
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(canary.SIGNATURE_BYTES), 5)
    finally:
        writer.close()


async def test_a_proof_fetched_straight_from_the_canary_backs_one_result(
    socks_world: Any,
) -> None:
    """The issue's attack over real sockets: one direct canary fetch used for two proxies."""
    reg, probe, key, proxy_id = socks_world
    other_id = await add_socks_proxy(reg, "192.0.2.10")
    assert reg.registry.canary_address is not None
    host, port = reg.registry.canary_address
    at = int(time.time())
    probe_key = public_key_text(key.public_key())
    nonce = canary.bound_nonce(probe_key, proxy_id, at)
    signature = await fetch_canary(host, port, nonce)
    proof = {"nonce": b64url(nonce), "upload_sha256": b64url(hashlib.sha256(b"up").digest()),
             "download": 0, "signature": b64url(signature)}  # fmt: skip

    def result(pid: int) -> dict[str, Any]:
        return {**good_result(reg, pid, key, at=at), "canary": proof}

    refused = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=socks_batch(key, [result(other_id)])
    )
    assert refused.status_code == 422, refused.text
    random_nonce = secrets.token_bytes(16)
    old_style = {**proof, "nonce": b64url(random_nonce),
                 "signature": b64url(await fetch_canary(host, port, random_nonce))}  # fmt: skip
    refused = await probe.post(
        "/api/v1/probe/batches",
        headers=JSON,
        content=socks_batch(key, [{**result(proxy_id), "canary": old_style}]),
    )
    assert refused.status_code == 422, refused.text
    # The one result it was fetched for is all it can back.
    accepted = await probe.post(
        "/api/v1/probe/batches", headers=JSON, content=socks_batch(key, [result(proxy_id)])
    )
    assert accepted.status_code == 201, accepted.text


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1_000_000_000, 4_000_000_000))
def test_bound_nonces_differ_by_proxy_and_time(a: int, b: int, at: int) -> None:
    probe = "p" * 43
    if a != b:
        assert canary.bound_nonce(probe, a, at) != canary.bound_nonce(probe, b, at)
    assert canary.bound_nonce(probe, a, at) != canary.bound_nonce(probe, a, at + 1)
    assert canary.bound_nonce(probe, a, at) != canary.bound_nonce("q" * 43, a, at)


def test_the_canary_window_tolerates_a_step_of_skew_and_no_more() -> None:
    key = Ed25519PrivateKey.generate()
    nonce, upload = bytes(16), hashlib.sha256(b"").digest()
    now = 1_800_000_000
    signature = canary.answer(key, nonce, upload, 0, now=now)[: canary.SIGNATURE_BYTES]
    for offset in (0, 299, -299):
        assert canary.verify_proof(
            key.public_key(), nonce, upload, 0, signature, around=now + offset
        )
    for offset in (2 * canary.WINDOW_SECONDS, -2 * canary.WINDOW_SECONDS, 86400):
        assert not canary.verify_proof(
            key.public_key(), nonce, upload, 0, signature, around=now + offset
        )


# --- migration 0008 -------------------------------------------------------------------


async def test_migration_0008_keeps_one_holder_per_wireguard_key(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "m.sqlite3"
    url = f"sqlite+aiosqlite:///{db}"
    await migrate(url)
    await downgrade(url, "0007")
    with sqlite3.connect(db) as conn:
        for n, wg in ((1, "K"), (2, "K"), (3, "L")):
            conn.execute(
                "INSERT INTO probe_accounts (id, name, public_key, country, control, created_at,"
                " wg_public_key) VALUES (?, ?, 'x', 'RU', 0, 1, ?)",
                (n, f"p{n}", wg),
            )
        conn.execute(
            "INSERT INTO api_tokens (role, token_hash, created_at) VALUES ('admin', 'h', 1)"
        )
    await migrate(url)
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT id, wg_public_key FROM probe_accounts ORDER BY id").fetchall()
        token = conn.execute("SELECT expires_at, revoked_at FROM api_tokens").fetchall()
    assert kept == [(1, "K"), (2, None), (3, "L")]
    assert token == [(None, None)]
    await downgrade(url, "0007")
    await migrate(url)
