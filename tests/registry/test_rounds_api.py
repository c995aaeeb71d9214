"""Grant rounds kept by the registry, over the HTTP API, on SQLite and PostgreSQL.

The rounds are built from daily rollups in the database (written here as the
probe ingestion writes them, and in one test by real signed probe batches),
approved, paid with a transaction a hardware-wallet-like signer (embit)
signed, and refused whenever a request would change what must not change.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from resistance.config import Endpoint
from resistance.directory.keys import b64url, public_key_text
from resistance.grants import payout
from resistance.grants.model import (
    INPUTS_FORMAT_2,
    RoundStatus,
    inputs_from_json,
    inputs_to_json,
    rollup_to_json,
    round_from_json,
    round_to_json,
)
from resistance.grants.signing import check_signatures
from resistance.probe import canary, rollup
from resistance.probe.batch import new_batch_id, sign_batch
from resistance.registry import repositories as repo
from resistance.registry.models import ProbeRollup
from resistance.registry.statement import endpoint_network
from tests.grants.helpers import (
    CHANGE_DESCRIPTOR,
    DESCRIPTOR,
    address,
    approved_round,
    embit_sign,
    utxos_for,
)
from tests.registry.conftest import RunningRegistry, start_registry

pytest.importorskip("embit")

#: "Today" for these tests: 2026-11-25 12:00 UTC.
NOW = int(dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC).timestamp())
TABLES = ("grant_rounds", "grant_carries", "operators")
ROUNDS = "/api/v1/grants/rounds"


@dataclass
class World:
    reg: RunningRegistry
    admin: httpx.AsyncClient
    operators: dict[str, str]  # name -> operator token
    proxies: dict[str, list[int]]  # operator name -> proxy ids


async def snapshot(reg: RunningRegistry) -> dict[str, list[Any]]:
    async with reg.registry.sessions() as session:
        return {
            t: [tuple(r) for r in (await session.execute(text(f"SELECT * FROM {t} ORDER BY 1")))]
            for t in TABLES
        }


async def add_operator(world: World, name: str, proxies: int, *, payout_to: str | None) -> None:
    token = await world.reg.operator(name)
    world.operators[name] = token
    if payout_to is not None:
        client = world.reg.client(token=token)
        put = await client.put("/api/v1/operators/me/payout-address", json={"address": payout_to})
        assert put.status_code == 200, put.text
    ids = []
    async with world.reg.registry.sessions.begin() as session:
        op = await repo.operator_by_name(session, name=name)
        assert op is not None
        for k in range(proxies):
            host = f"198.51.{len(world.proxies) + 1}.{k + 1}"
            proxy = await repo.save_proxy(
                session,
                fields={
                    "operator_id": op.id, "host": host, "port": 1080,
                    "network": endpoint_network(host), "public_key": "k" * 43,
                    "protocols": ["socks5"], "probe_user": "p", "probe_password": "q",
                    "credentials": [], "public": True, "status": "active",
                    "registered_at": 1, "verified_at": 1,
                },
            )  # fmt: skip
            ids.append(proxy.id)
    world.proxies[name] = ids


async def add_rollups(
    world: World,
    proxy_ids: list[int],
    first: dt.date,
    days: int,
    *,
    target_successes: int = 24,
    control_successes: int = 24,
    attempts: int = 24,
) -> None:
    """Rows as probe ingestion writes them: one per (proxy, day, country, control)."""
    hist = rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
    rollup.add(hist, rollup.THROUGHPUT_BOUNDS_KBPS, 5000)
    async with world.reg.registry.sessions.begin() as session:
        for proxy_id in proxy_ids:
            for d in range(days):
                day = (first + dt.timedelta(days=d)).isoformat()
                for country, control, ok in (
                    ("DE", True, control_successes),
                    ("RU", False, target_successes),
                    ("IR", False, 0),  # another country's vantage: not this round's
                ):
                    session.add(
                        ProbeRollup(
                            proxy_id=proxy_id, day=day, country=country, control=control,
                            attempts=attempts, successes=ok,
                            latency_hist=rollup.empty(rollup.LATENCY_BOUNDS_MS),
                            latency_p50_ms=None, latency_p90_ms=None,
                            throughput_hist=hist, throughput_p50_kbps=8000,
                        )
                    )  # fmt: skip


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    async with start_registry(tmp_path / "registry", db_url) as reg:
        reg.registry.clock = lambda: NOW
        w = World(reg, reg.client(token=reg.admin_token), {}, {})
        await add_operator(w, "alice", 2, payout_to=address("alice"))
        await add_operator(w, "bob", 1, payout_to=address("bob"))
        await add_operator(w, "carol", 1, payout_to=None)
        yield w


async def create(world: World, **body: Any) -> httpx.Response:
    base = {
        "period_start": "2026-10-01",
        "period_end": "2026-10-31",
        "budget_sat": 10_000_000,
        "fee_reserve_sat": 50_000,
    }
    base.update(body)
    return await world.admin.post(ROUNDS, json=base)


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error
    for fragment in fragments:
        assert fragment in error, error


def pay(round_json: dict[str, Any], values: list[int] | None = None) -> str:
    """Build the PSBT with BDK from the exported round and sign it like a hardware wallet."""
    round_ = round_from_json(round_json)
    built = payout.build_payout_psbt(
        round_,
        descriptor=DESCRIPTOR,
        change_descriptor=CHANGE_DESCRIPTOR,
        utxos=payout.utxos_from_json(utxos_for(values or [6_000_000, 7_000_000])),
        fee_rate_sat_vb=2,
        network="regtest",
    )
    signed, tx_hex = embit_sign(built.psbt_base64)
    assert signed > 0 and tx_hex
    return tx_hex


async def test_lifecycle_draft_approved_paid(world: World) -> None:
    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    await add_rollups(world, world.proxies["carol"], dt.date(2026, 10, 1), 31)
    created = await create(world)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["round_id"] == "2026-10-RU" and view["status"] == "draft"
    assert view["rollups"] == 3 * 31  # carol is left out: no payout address
    assert view["skipped_operators"] == ["carol"]
    assert [a["operator_id"] for a in view["awards"]] == ["alice", "bob"]
    alice, bob = view["awards"]
    assert alice["payout_address"] == address("alice") and alice["proxies"] == 2
    assert abs(alice["amount_sat"] - 2 * bob["amount_sat"]) <= 2  # largest remainder
    assert alice["amount_sat"] + bob["amount_sat"] == 10_000_000 - 50_000
    assert view["signatures"] and view["digest"] is None

    listed = (await world.admin.get(ROUNDS)).json()["rounds"]
    assert [(r["round_id"], r["status"]) for r in listed] == [("2026-10-RU", "draft")]
    assert (await world.admin.get(f"{ROUNDS}/2026-10-RU")).json() == view

    approved = await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved" and approved.json()["digest"]
    exported = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    round_ = round_from_json(exported)
    assert round_.state.status is RoundStatus.APPROVED
    assert round_.state.digest == round_.digest() == approved.json()["digest"]
    keys = [k.public_key() for k in world.reg.registry.signing_keys]
    assert check_signatures(round_.settings, round_.inputs, keys).signers

    tx_hex = pay(exported)
    paid = await world.admin.post(
        f"{ROUNDS}/2026-10-RU/mark-paid",
        json={"tx_hex": tx_hex, "change_descriptor": CHANGE_DESCRIPTOR},
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "paid" and len(paid.json()["txid"]) == 64
    final = round_from_json((await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json())
    assert final.state.status is RoundStatus.PAID and final.state.txid == paid.json()["txid"]

    before = await snapshot(world.reg)
    again = await world.admin.post(
        f"{ROUNDS}/2026-10-RU/mark-paid",
        json={"tx_hex": tx_hex, "change_descriptor": CHANGE_DESCRIPTOR},
    )
    assert_error(again, 409, "already paid")
    assert_error(await world.admin.post(f"{ROUNDS}/2026-10-RU/approve"), 409, "already paid")
    assert_error(await world.admin.post(f"{ROUNDS}/2026-10-RU/recompute", json={}), 409)
    assert_error(await world.admin.delete(f"{ROUNDS}/2026-10-RU"), 409)
    assert await snapshot(world.reg) == before


async def test_a_round_reads_its_period_both_days_included(world: World) -> None:
    one = world.proxies["bob"]
    await add_rollups(world, one, dt.date(2026, 9, 30), 2)  # the day before, the first day
    await add_rollups(world, one, dt.date(2026, 10, 31), 2)  # the last day, the day after
    created = await create(world)
    assert created.status_code == 201, created.text
    assert created.json()["rollups"] == 2


async def test_an_approved_round_is_frozen(world: World) -> None:
    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    assert (await create(world)).status_code == 201
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    exported = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    before = await snapshot(world.reg)
    # alice moves her payout address and more measurements arrive: the round does not move
    client = world.reg.client(token=world.operators["alice"])
    moved = await client.put(
        "/api/v1/operators/me/payout-address", json={"address": address("alice-new")}
    )
    assert moved.status_code == 200
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 11, 1), 1)
    assert (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json() == exported
    shown = (await world.admin.get(f"{ROUNDS}/2026-10-RU")).json()
    assert shown["awards"][0]["payout_address"] == address("alice")
    assert_error(
        await world.admin.post(f"{ROUNDS}/2026-10-RU/recompute", json={"budget_sat": 1}),
        409,
        "frozen",
    )
    assert_error(await world.admin.delete(f"{ROUNDS}/2026-10-RU"), 409, "frozen")
    assert_error(await world.admin.post(f"{ROUNDS}/2026-10-RU/approve"), 409, "already approved")
    after = await snapshot(world.reg)
    assert after["grant_rounds"] == before["grant_rounds"]


async def test_a_draft_is_recomputed_with_fresh_data_and_deleted(world: World) -> None:
    await add_rollups(world, world.proxies["alice"], dt.date(2026, 10, 1), 31)
    first = (await create(world)).json()
    assert [a["operator_id"] for a in first["awards"]] == ["alice"]
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    again = await world.admin.post(
        f"{ROUNDS}/2026-10-RU/recompute", json={"budget_sat": 20_000_000, "operator_cap_bp": 6000}
    )
    assert again.status_code == 200, again.text
    view = again.json()
    assert [a["operator_id"] for a in view["awards"]] == ["alice", "bob"]
    assert view["settings"]["budget_sat"] == 20_000_000
    assert view["settings"]["operator_cap_bp"] == 6000
    assert view["awards"][0]["share_sat"] <= (20_000_000 - 50_000) * 6000 // 10_000
    assert (await world.admin.delete(f"{ROUNDS}/2026-10-RU")).status_code == 204
    assert_error(await world.admin.get(f"{ROUNDS}/2026-10-RU"), 404)


async def test_a_period_still_running_is_not_approved(world: World) -> None:
    await add_rollups(world, world.proxies["alice"], dt.date(2026, 11, 1), 20)
    created = await create(world, period_start="2026-11-01", period_end="2026-11-30")
    assert created.status_code == 201 and created.json()["round_id"] == "2026-11-RU"
    assert_error(await world.admin.post(f"{ROUNDS}/2026-11-RU/approve"), 409, "after they are over")


async def test_a_lab_registry_may_approve_a_running_period(world: World) -> None:
    # `registry serve --approve-open-periods`: the lab pays for the minutes it measured today
    import dataclasses

    registry = world.reg.registry
    registry.settings = dataclasses.replace(registry.settings, approve_open_periods=True)
    await add_rollups(world, world.proxies["alice"], dt.date(2026, 11, 1), 20)
    created = await create(world, period_start="2026-11-01", period_end="2026-11-30")
    assert created.status_code == 201
    approved = await world.admin.post(f"{ROUNDS}/2026-11-RU/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"


async def test_a_differing_transaction_is_refused_and_changes_nothing(world: World) -> None:
    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    assert (await create(world)).status_code == 201
    url = f"{ROUNDS}/2026-10-RU/mark-paid"
    tx_for_draft = pay(
        (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
        | {"state": {"status": "approved"}}
    )
    body = {"tx_hex": tx_for_draft, "change_descriptor": CHANGE_DESCRIPTOR}
    assert_error(await world.admin.post(url, json=body), 409, "approve it first")
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    exported = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    other_round = pay(round_to_json(approved_round()))
    short = exported | {"result": json.loads(json.dumps(exported["result"]))}
    short["result"]["awards"][0]["amount_sat"] -= 1000
    underpaying = pay(short)
    psbt_b64 = payout.build_payout_psbt(
        round_from_json(exported),
        descriptor=DESCRIPTOR,
        change_descriptor=CHANGE_DESCRIPTOR,
        utxos=payout.utxos_from_json(utxos_for([13_000_000])),
        fee_rate_sat_vb=2,
        network="regtest",
    ).psbt_base64
    before = await snapshot(world.reg)
    cases = [
        ({"tx_hex": other_round, "change_descriptor": CHANGE_DESCRIPTOR}, 422, "neither"),
        ({"tx_hex": underpaying, "change_descriptor": CHANGE_DESCRIPTOR}, 422, "neither"),
        # the PSBT's own bytes, as a wallet that signed nothing hands them back
        (
            {"tx_hex": base64.b64decode(psbt_b64).hex(), "change_descriptor": CHANGE_DESCRIPTOR},
            422,
            "PSBT",
        ),
        ({"tx_hex": "00" * 50, "change_descriptor": CHANGE_DESCRIPTOR}, 422, "transaction"),
        ({"tx_hex": pay(exported), "change_descriptor": DESCRIPTOR}, 422, "neither"),
        ({"tx_hex": pay(exported), "change_descriptor": "wpkh(nonsense)"}, 422, "descriptor"),
        ({"tx_hex": "zz", "change_descriptor": CHANGE_DESCRIPTOR}, 422, "tx_hex"),
        ({"tx_hex": 5, "change_descriptor": CHANGE_DESCRIPTOR}, 422, "tx_hex"),
        ({"tx_hex": pay(exported)}, 422, "change_descriptor"),
    ]
    for body, status, fragment in cases:
        assert_error(await world.admin.post(url, json=body), status, fragment)
    assert await snapshot(world.reg) == before
    good = {"tx_hex": pay(exported), "change_descriptor": CHANGE_DESCRIPTOR}
    assert (await world.admin.post(url, json=good)).status_code == 200


async def test_two_concurrent_payments_record_one(world: World) -> None:
    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    assert (await create(world)).status_code == 201
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    exported = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    url = f"{ROUNDS}/2026-10-RU/mark-paid"
    tx_a, tx_b = pay(exported), pay(exported, [13_000_000])
    answers = await asyncio.gather(
        world.admin.post(url, json={"tx_hex": tx_a, "change_descriptor": CHANGE_DESCRIPTOR}),
        world.reg.client(token=world.reg.admin_token).post(
            url, json={"tx_hex": tx_b, "change_descriptor": CHANGE_DESCRIPTOR}
        ),
    )
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    shown = (await world.admin.get(f"{ROUNDS}/2026-10-RU")).json()
    winner = next(a for a in answers if a.status_code == 200).json()
    assert shown["txid"] == winner["txid"]


async def test_bad_requests_are_json_4xx_and_store_nothing(world: World) -> None:
    await add_rollups(world, world.proxies["alice"], dt.date(2026, 10, 1), 31)
    before = await snapshot(world.reg)
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"budget_sat": "1000"}, 422, "budget_sat"),
        ({"budget_sat": 1.5}, 422, "budget_sat"),
        ({"budget_sat": True}, 422, "budget_sat"),
        ({"budget_sat": -1}, 422, "budget_sat"),
        ({"budget_sat": 2_100_000_000_000_001}, 422, "budget_sat"),
        ({"budget_sat": 10**30}, 422, "budget_sat"),
        ({"budget_sat": 20_000}, 422, "fee reserve"),  # budget smaller than the fee reserve
        ({"min_payout_sat": 100}, 422, "dust"),
        ({"period_start": "2026-13-01"}, 422, "not a date"),
        ({"period_end": "2026-02-30"}, 422, "not a date"),
        ({"period_end": "2026-09-30"}, 422, "before"),
        ({"period_start": "2024-01-01"}, 422, "at most"),
        ({"period_start": 20261001}, 422, "period_start"),
        ({"target_country": "ru"}, 422, "target_country"),
        ({"round_id": "x" * 65}, 422, "round_id"),
        ({"round_id": "../etc"}, 422, "round_id"),
        ({"operator_cap_bp": 0}, 422, "operator_cap_bp"),
        ({"performance_exponent": 65}, 422, "performance_exponent"),
        ({"surprise": 1}, 422, "surprise"),
    ]
    for change, status, fragment in bad:
        assert_error(await create(world, **change), status, fragment)
    assert_error(await world.admin.post(ROUNDS, json=[]), 422)
    assert_error(
        await world.admin.post(
            ROUNDS, content=b"{nope", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert_error(await create(world, round_id="x" * 100_000), 413)
    assert_error(await world.reg.client().post(ROUNDS, json={}), 401)
    operator = world.reg.client(token=world.operators["alice"])
    assert_error(await operator.get(ROUNDS), 403, "admin")
    assert_error(await world.admin.get(f"{ROUNDS}/nope"), 404, "no round")
    assert_error(await world.admin.post(f"{ROUNDS}/nope/approve"), 404)
    nope = {"tx_hex": "00", "change_descriptor": "x"}
    assert_error(await world.admin.post(f"{ROUNDS}/nope/mark-paid", json=nope), 404)
    assert await snapshot(world.reg) == before
    # a round for the same country and an overlapping period is refused; another country is not
    assert (await create(world)).status_code == 201
    before = await snapshot(world.reg)
    assert_error(await create(world, round_id="2026-10-RU", target_country="IR"), 409, "exists")
    overlap = {"round_id": "x", "period_start": "2026-10-31", "period_end": "2026-11-02"}
    assert_error(await create(world, **overlap), 409, "covers")
    assert await snapshot(world.reg) == before
    assert (await create(world, target_country="IR")).status_code == 201


async def test_carried_amounts_flow_to_the_next_round_once(world: World) -> None:
    """bob's share is below the minimum payout in September: it is paid with October's."""
    alice, bob = world.proxies["alice"], world.proxies["bob"]
    for month, days in ((dt.date(2026, 9, 1), 30), (dt.date(2026, 10, 1), 31)):
        await add_rollups(world, alice, month, days)
        await add_rollups(world, bob, month, days, target_successes=22)
    settings = {"min_payout_sat": 1_000_000}
    sept = await create(world, period_start="2026-09-01", period_end="2026-09-30", **settings)
    assert sept.status_code == 201, sept.text
    bob_sept = sept.json()["awards"][1]
    assert bob_sept["amount_sat"] == 0 and 0 < bob_sept["carried_out_sat"] < 1_000_000
    carried = bob_sept["carried_out_sat"]
    assert (await world.admin.post(f"{ROUNDS}/2026-09-RU/approve")).status_code == 200
    # carried amounts come from *paid* rounds only
    october = (await create(world, **settings)).json()
    assert october["carried_in_sat"] == 0
    sept_file = (await world.admin.get(f"{ROUNDS}/2026-09-RU/export")).json()
    paid = await world.admin.post(
        f"{ROUNDS}/2026-09-RU/mark-paid",
        json={"tx_hex": pay(sept_file), "change_descriptor": CHANGE_DESCRIPTOR},
    )
    assert paid.status_code == 200, paid.text
    october = (await world.admin.post(f"{ROUNDS}/2026-10-RU/recompute", json={})).json()
    bob_oct = october["awards"][1]
    assert bob_oct["carried_in_sat"] == carried
    assert bob_oct["amount_sat"] == bob_oct["share_sat"] + carried >= 1_000_000
    budget = october["settings"]["budget_sat"]
    assert (
        october["paid_sat"] + october["carried_out_sat"] + october["settings"]["fee_reserve_sat"]
        + october["returned_sat"] == budget + october["carried_in_sat"]
    )  # fmt: skip
    # An August draft also sees the carry, but only one round may take it in.
    august = await create(world, period_start="2026-08-01", period_end="2026-08-31", **settings)
    assert august.json()["carried_in_sat"] == carried
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    before = await snapshot(world.reg)
    assert_error(await world.admin.post(f"{ROUNDS}/2026-08-RU/approve"), 409, "recompute")
    assert await snapshot(world.reg) == before
    august = await world.admin.post(f"{ROUNDS}/2026-08-RU/recompute", json={})
    assert august.json()["carried_in_sat"] == 0
    assert (await world.admin.post(f"{ROUNDS}/2026-08-RU/approve")).status_code == 200


async def test_a_round_paying_nobody_carries_at_approval(world: World) -> None:
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 9, 1), 30)
    sept = await create(
        world,
        period_start="2026-09-01",
        period_end="2026-09-30",
        budget_sat=100_000,
        fee_reserve_sat=10_000,
        min_payout_sat=200_000,
    )
    assert sept.json()["payouts"] == 0 and sept.json()["carried_out_sat"] == 90_000
    assert (await world.admin.post(f"{ROUNDS}/2026-09-RU/approve")).status_code == 200
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    october = (await create(world, budget_sat=200_000, fee_reserve_sat=10_000)).json()
    assert october["awards"][0]["carried_in_sat"] == 90_000
    assert october["awards"][0]["amount_sat"] == 190_000 + 90_000


# --- from real signed probe batches -----------------------------------------------------

BATCH_DAY = int(dt.datetime(2026, 11, 10, 12, tzinfo=dt.UTC).timestamp())


def _result(
    reg: RunningRegistry, proxy_id: int, ok: bool, at: int, probe: Ed25519PrivateKey
) -> dict[str, Any]:
    if not ok:
        return {
            "proxy_id": proxy_id, "at": at, "ok": False, "step": "tcp", "failure": "timeout",
            "detail": "no answer in 5 s", "tcp_us": None, "connect_us": None, "ttfb_us": None,
            "throughput_kbps": None, "canary": None,
        }  # fmt: skip
    key = reg.registry.canary_key
    assert key is not None
    nonce = canary.bound_nonce(public_key_text(probe.public_key()), proxy_id, at)
    upload = hashlib.sha256(b"up").digest()
    sig = key.sign(canary.proof_message(nonce, upload, 1024, canary.window_of(at)))
    return {
        "proxy_id": proxy_id, "at": at, "ok": True, "step": None, "failure": None,
        "detail": "", "tcp_us": 100, "connect_us": 900, "ttfb_us": 300, "throughput_kbps": 5000,
        "canary": {"nonce": b64url(nonce), "upload_sha256": b64url(upload), "download": 1024,
                   "signature": b64url(sig)},
    }  # fmt: skip


async def test_a_round_from_real_probe_batches(tmp_path: Path, db_url: str) -> None:
    async with start_registry(tmp_path / "reg", db_url, canary=Endpoint("127.0.0.1", 0)) as reg:
        reg.registry.clock = lambda: BATCH_DAY
        w = World(reg, reg.client(token=reg.admin_token), {}, {})
        await add_operator(w, "dana", 1, payout_to=address("dana"))
        (proxy_id,) = w.proxies["dana"]
        for name, country, control, oks in (
            ("fra-1", "DE", True, [True, True, True]),
            ("msk-1", "RU", False, [True, False, True]),
            ("thr-1", "IR", False, [False, False, False]),
        ):
            key = Ed25519PrivateKey.generate()
            made = await w.admin.post(
                "/api/v1/probes",
                json={"name": name, "country": country, "control": control,
                      "public_key": public_key_text(key.public_key())},
            )  # fmt: skip
            assert made.status_code == 201, made.text
            probe = reg.client(token=made.json()["token"])
            body = sign_batch(
                key=key,
                probe_key=public_key_text(key.public_key()),
                batch_id=new_batch_id(),
                vantage=name,
                country=country,
                created_at=BATCH_DAY,
                results=[
                    _result(reg, proxy_id, ok, BATCH_DAY - 600 + 60 * i, key)
                    for i, ok in enumerate(oks)
                ],
            )
            sent = await probe.post(
                "/api/v1/probe/batches",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert sent.status_code == 201, sent.text
        created = await create(
            w,
            period_start="2026-11-10",
            period_end="2026-11-10",
            performance_exponent=1,
            capacity_reference_kbps=16_000,
        )
        assert created.status_code == 201, created.text
        view = created.json()
        assert view["round_id"] == "2026-11-10-RU" and view["rollups"] == 1
        exported = (await w.admin.get(f"{ROUNDS}/2026-11-10-RU/export")).json()
        assert exported["inputs"]["format"] == INPUTS_FORMAT_2
        (row,) = (rollup_to_json(r) for r in inputs_from_json(exported["inputs"]).rows())
        assert row == {
            "proxy_id": str(proxy_id), "operator_id": "dana", "network": "198.51.1.0/24",
            "payout_address": address("dana"), "day": "2026-11-10", "country": "RU",
            "control_attempts": 3, "control_successes": 3, "target_attempts": 3,
            "target_successes": 2, "throughput_kbps": 8000,
        }  # fmt: skip
        # weight = 10^12 x (3x2)/(3x3) x 8000/16000
        assert view["awards"][0]["weight"] == 10**12 * 6 // 9 * 8000 // 16000
        reg.registry.clock = lambda: BATCH_DAY + 86_400
        assert (await w.admin.post(f"{ROUNDS}/2026-11-10-RU/approve")).status_code == 200


async def test_probation_counts_service_before_the_period(world: World) -> None:
    alice, bob = world.proxies["alice"], world.proxies["bob"]
    await add_rollups(world, alice, dt.date(2026, 9, 1), 30)  # alice served all September
    await add_rollups(
        world, bob, dt.date(2026, 9, 29), 2, target_successes=0
    )  # blocked: no service
    await add_rollups(world, alice + bob, dt.date(2026, 10, 1), 31)
    view = (await create(world, probation_days=10)).json()
    exported = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    assert exported["inputs"]["prior_service_days"] == {str(alice[0]): 30, str(alice[1]): 30}
    alice_award, bob_award = view["awards"]
    assert alice_award["service_days"] == 62 and bob_award["service_days"] == 31
    per_day = alice_award["weight"] // 62
    assert bob_award["weight"] == per_day * 21  # bob's first 10 days earn nothing


def test_create_and_recompute_requests_tune_the_same_settings() -> None:
    """One list of tunables: a field added to one request but not the other, or not a
    setting of the award rule, would be silently ignored by one of the two routes."""
    import dataclasses

    from resistance.grants.model import GrantSettings
    from resistance.registry.rounds import TUNABLE
    from resistance.registry.schemas import RoundCreateRequest

    round_fields = {"round_id", "period_start", "period_end", "target_country"}
    assert set(RoundCreateRequest.model_fields) - round_fields == set(TUNABLE)
    assert set(TUNABLE) <= {f.name for f in dataclasses.fields(GrantSettings)}
    assert len(TUNABLE) == 10  # cascade_exit_bp (issue 24)


class HeldWorker(Executor):
    """The round worker held at its start until the test lets it go: a thread here (the
    job is the same plain function the registry's worker process runs)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.started = threading.Event()
        self.go = threading.Event()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def held() -> Any:
            self.started.set()
            assert self.go.wait(60), "the test never let the round go"
            return fn(*args, **kwargs)

        return self.pool.submit(held)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.go.set()
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


async def test_requests_are_answered_while_a_round_is_computed(world: World) -> None:
    """Issue 25: a round is computed off the event loop.  While the round's job is held in
    its worker, other requests (reads of the database, a sign-up that writes to it, the
    public directory) complete; the round then completes as it would have."""
    await add_rollups(world, world.proxies["alice"], dt.date(2026, 10, 1), 31)
    worker = HeldWorker()
    world.reg.registry.round_workers = worker
    creating = asyncio.create_task(create(world))
    assert await asyncio.to_thread(worker.started.wait, 30)
    public = world.reg.client()
    during = [
        await world.admin.get(ROUNDS),
        await public.post("/api/v1/operators", json={"name": "dave"}),
        await public.get("/api/v1/directory"),
        await world.admin.get(f"{ROUNDS}/2026-10-RU"),
    ]
    assert not creating.done()  # every request above completed while the round was held
    assert [r.status_code for r in during] == [200, 201, 200, 404]
    assert during[0].json()["rounds"] == []
    worker.go.set()
    created = await asyncio.wait_for(creating, 60)
    assert created.status_code == 201, created.text
    assert [a["operator_id"] for a in created.json()["awards"]] == ["alice"]
    assert created.json()["rollups"] == 2 * 31
    keys = [k.public_key() for k in world.reg.registry.signing_keys]
    exported = round_from_json((await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json())
    assert check_signatures(exported.settings, exported.inputs, keys).signers


async def test_a_round_computed_by_the_worker_process(world: World) -> None:
    """The registry's own worker: a separate process computes the round."""
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    created = await create(world)
    assert created.status_code == 201, created.text
    workers = world.reg.registry.round_workers
    assert isinstance(workers, ProcessPoolExecutor)
    pids = await asyncio.get_running_loop().run_in_executor(workers, os.getpid)
    assert pids != os.getpid()
    assert [a["operator_id"] for a in created.json()["awards"]] == ["bob"]


async def test_the_round_page_reads_its_inputs_a_page_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: views read a summary and per-proxy rows stored with the round (never the
    whole inputs document); the funder's page pages those rows."""
    from resistance.registry import rounds
    from resistance.registry.ui import pages
    from tests.registry.test_dashboard import sign_in

    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    created = (await create(world)).json()
    assert created["rollups"] == 3 * 31
    registry = world.reg.registry
    async with registry.sessions() as session:
        row = await repo.round_by_id(session, round_id="2026-10-RU")
        assert row is not None
        stored = await repo.round_proxies_page(session, round_pk=row.id, after=0, limit=10)
        inputs = (await rounds.stored_round(session, row)).inputs
    alice, bob = world.proxies["alice"], world.proxies["bob"]
    assert [(p.position, p.operator, p.proxy_id) for p in stored] == [
        (1, "alice", str(alice[0])),
        (2, "alice", str(alice[1])),
        (3, "bob", str(bob[0])),
    ]
    assert {(p.days, p.control_attempts, p.target_successes) for p in stored} == {
        (31, 31 * 24, 31 * 24)
    }
    # the same numbers as summing the signed inputs themselves, and the same view from them
    assert [
        {k: getattr(p, k) for k in rounds.per_proxy(inputs)[0]} for p in stored
    ] == rounds.per_proxy(inputs)
    legacy = rounds.view(row)
    row.summary = None  # as before migration 0015 (its downgrade follows 0019's: chunks inline)
    row.inputs = json.dumps(inputs_to_json(inputs))
    assert rounds.view(row) == legacy == created

    monkeypatch.setattr(pages, "ROUND_PAGE_SIZE", 2)
    funder = world.reg.client()
    assert (await sign_in(funder, world.reg.admin_token)).status_code == 303
    first = await funder.get("/ui/funder/rounds/2026-10-RU")
    assert first.status_code == 200, first.text
    assert f">{alice[1]}</th>" in first.text and f">{bob[0]}</th>" not in first.text
    assert 'href="?after=2"' in first.text
    second = await funder.get("/ui/funder/rounds/2026-10-RU?after=2")
    assert f">{bob[0]}</th>" in second.text and f">{alice[0]}</th>" not in second.text
    assert 'rel="next"' not in second.text

    # recomputed: the rows are replaced; deleted: they go with the round
    await add_rollups(world, world.proxies["carol"], dt.date(2026, 10, 1), 31)
    again = await world.admin.post(f"{ROUNDS}/2026-10-RU/recompute", json={})
    assert again.status_code == 200, again.text
    async with registry.sessions() as session:
        assert len(await repo.round_proxies_page(session, round_pk=row.id, after=0, limit=9)) == 3
    assert (await world.admin.delete(f"{ROUNDS}/2026-10-RU")).status_code == 204
    async with registry.sessions() as session:
        assert not await repo.round_has_proxies(session, round_pk=row.id)


async def test_rounds_from_before_the_summaries_are_shown_from_their_inputs(
    world: World, db_url: str
) -> None:
    """Migration 0015 down and up again: the round keeps its inputs, loses its summary
    and per-proxy rows, and its views and page read the inputs instead."""
    from resistance.registry.db import migrate
    from tests.registry.test_dashboard import sign_in
    from tests.registry.test_wireguard import downgrade

    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    created = (await create(world)).json()
    await world.reg.registry.engine.dispose()  # no pooled connection in the way of DDL
    await downgrade(db_url, "0013")
    async with world.reg.registry.engine.connect() as conn:
        columns = (await conn.execute(text("SELECT * FROM grant_rounds"))).keys()
        assert "summary" not in columns and "inputs" in columns
    await world.reg.registry.engine.dispose()
    await migrate(db_url)
    async with world.reg.registry.sessions() as session:
        row = await repo.round_by_id(session, round_id="2026-10-RU")
        assert row is not None and row.summary is None
        assert not await repo.round_has_proxies(session, round_pk=row.id)
    assert (await world.admin.get(f"{ROUNDS}/2026-10-RU")).json() == created
    funder = world.reg.client()
    assert (await sign_in(funder, world.reg.admin_token)).status_code == 303
    page = await funder.get("/ui/funder/rounds/2026-10-RU")
    assert page.status_code == 200 and f">{world.proxies['bob'][0]}</th>" in page.text


async def test_a_dead_round_worker_is_replaced(world: World) -> None:
    """A worker killed (as the kernel kills one out of memory) fails its round with a 503;
    the next round gets a new worker."""
    import multiprocessing
    import signal

    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    workers = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    world.reg.registry.round_workers = workers
    pid = await asyncio.get_running_loop().run_in_executor(workers, os.getpid)
    os.kill(pid, signal.SIGKILL)
    assert_error(await create(world), 503, "worker process died")
    assert world.reg.registry.round_workers is None
    created = await create(world)
    assert created.status_code == 201, created.text
    assert world.reg.registry.round_workers is not workers


async def test_the_registry_builds_inputs_2_in_bounded_chunks(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: the inputs are made in format /2 straight from the day totals, at most
    CHUNK_PROXIES proxies a chunk, and hold exactly the day totals of the paid proxies."""
    from resistance.grants.model import GrantSettings
    from resistance.registry import rounds
    from resistance.registry.round_days import day_totals

    monkeypatch.setattr(rounds, "CHUNK_PROXIES", 2)
    everyone = world.proxies["alice"] + world.proxies["bob"] + world.proxies["carol"]
    await add_rollups(world, everyone, dt.date(2026, 10, 1), 3, target_successes=20)
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 4), 1)
    settings = GrantSettings(
        round_id="r", network="regtest", target_country="RU",
        period_start=dt.date(2026, 10, 1), period_end=dt.date(2026, 10, 31),
        budget_sat=1_000_000, fee_reserve_sat=0,
    )  # fmt: skip
    async with world.reg.registry.sessions() as session:
        built = await rounds.build_inputs(session, settings=settings)
        totals = await day_totals(session, country="RU", since="2026-10-01", before="2026-11-01")
    chunks = built.inputs.chunks
    assert chunks is not None and len(chunks) == 2  # alice's 2 proxies, then bob's 1
    assert [len(json.loads(c)["proxies"]) for c in chunks] == [2, 1]
    assert built.skipped_operators == ["carol"]
    paid = {str(p) for p in world.proxies["alice"] + world.proxies["bob"]}
    expected = {
        (str(p), d, ca, cs, ta, ts, tp)
        for p, d, ca, cs, ta, ts, tp in zip(
            totals.proxy.tolist(), totals.day, totals.control_attempts.tolist(),
            totals.control_successes.tolist(), totals.target_attempts.tolist(),
            totals.target_successes.tolist(), totals.throughput_kbps.tolist(), strict=True,
        )
        if str(p) in paid
    }  # fmt: skip
    got = {
        (r.proxy_id, r.day.isoformat(), r.control_attempts, r.control_successes,
         r.target_attempts, r.target_successes, r.throughput_kbps)
        for r in built.inputs.rows()
    }  # fmt: skip
    assert got == expected and built.inputs.row_count() == 3 * 3 + 1
    assert built.per_proxy == rounds.per_proxy(built.inputs)  # summed as built, or read back
    # the worker's award rule reads the entries made from the arrays, not parsed back:
    # they are the chunks' entries exactly
    assert list(built.groups()) == list(built.inputs.groups())
    assert [p["days"] for p in built.per_proxy] == [3, 3, 4]
    assert inputs_from_json(json.loads(json.dumps(inputs_to_json(built.inputs)))) == built.inputs


async def test_a_round_stored_with_inputs_1_still_loads_and_verifies(world: World) -> None:
    """Rounds stored before /2 keep their /1 inputs: shown, approved and exported as they
    were, and their /1 signature still checks."""
    from resistance.grants import rounds as grant_rounds
    from resistance.grants.signing import sign_inputs

    await add_rollups(world, world.proxies["bob"], dt.date(2026, 10, 1), 31)
    created = (await create(world)).json()
    exported = round_from_json((await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json())
    keys = world.reg.registry.signing_keys
    rows = tuple(exported.inputs.rows())
    one = sign_inputs(
        exported.settings, dataclasses.replace(exported.inputs, rollups=rows, chunks=None), keys
    )
    body = inputs_to_json(one)
    assert "rollups" in body and "format" not in body
    async with world.reg.registry.sessions.begin() as session:
        await session.execute(
            text("UPDATE grant_rounds SET inputs = :i WHERE round_id = '2026-10-RU'"),
            {"i": json.dumps(body)},
        )
    assert (await world.admin.get(f"{ROUNDS}/2026-10-RU")).json() == created
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    data = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
    assert "rollups" in data["inputs"]
    round_ = round_from_json(data)
    assert round_.inputs.chunks is None and not grant_rounds.verify(round_)
    public = [k.public_key() for k in keys]
    assert check_signatures(round_.settings, round_.inputs, public).signers


async def test_a_rounds_chunks_are_stored_as_rows_and_survive_a_downgrade(
    world: World, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25: /2 chunks are rows of grant_round_chunks (migration 0019), the round's
    inputs column keeps only the manifest and the rest; export puts them together, and
    downgrading past 0019 folds them back into the inputs column."""
    from resistance.grants import rounds as grant_rounds
    from resistance.registry import rounds
    from resistance.registry.db import migrate
    from tests.registry.test_wireguard import downgrade

    monkeypatch.setattr(rounds, "CHUNK_PROXIES", 1)
    monkeypatch.setattr(rounds, "EXPORT_CHUNKS_PER_READ", 2)  # 3 chunks: streamed in 2 reads
    monkeypatch.setattr(repo, "CHUNKS_PER_INSERT", 2)  # and stored in 2 statements
    world.reg.registry.round_workers = ThreadPoolExecutor(1)  # the patched size applies
    await add_rollups(
        world, world.proxies["alice"] + world.proxies["bob"], dt.date(2026, 10, 1), 31
    )
    created = (await create(world)).json()
    assert created["rollups"] == 3 * 31
    async with world.reg.registry.sessions() as session:
        row = await repo.round_by_id(session, round_id="2026-10-RU")
        assert row is not None
        chunks = await repo.round_chunks(session, round_pk=row.id)
    stored = json.loads(row.inputs)
    assert len(chunks) == 3 and "chunks" not in stored
    assert stored["format"] == INPUTS_FORMAT_2 and len(stored["manifest"]) == 3
    keys = [k.public_key() for k in world.reg.registry.signing_keys]

    async def exported() -> dict[str, Any]:
        data: dict[str, Any] = (await world.admin.get(f"{ROUNDS}/2026-10-RU/export")).json()
        round_ = round_from_json(data)
        assert not grant_rounds.verify(round_)
        assert check_signatures(round_.settings, round_.inputs, keys).signers
        return data

    before = await exported()
    assert before["inputs"]["chunks"] == chunks
    async with world.reg.registry.sessions() as session:
        assert before == round_to_json(await rounds.stored_round(session, row))
    await world.reg.registry.engine.dispose()
    await downgrade(db_url, "0018")
    async with world.reg.registry.engine.connect() as conn:
        inputs = (await conn.execute(text("SELECT inputs FROM grant_rounds"))).scalar_one()
    assert json.loads(inputs)["chunks"] == chunks
    await world.reg.registry.engine.dispose()
    await migrate(db_url)
    assert await exported() == before  # read from the inputs column now
    assert (await world.admin.post(f"{ROUNDS}/2026-10-RU/approve")).status_code == 200
    await add_rollups(world, world.proxies["bob"], dt.date(2026, 9, 1), 2)
    draft = await create(world, period_start="2026-09-01", period_end="2026-09-30")
    assert draft.status_code == 201, draft.text

    async def chunk_rows() -> int:
        async with world.reg.registry.sessions() as session:
            query = text("SELECT count(*) FROM grant_round_chunks")
            return int((await session.execute(query)).scalar_one())

    assert await chunk_rows() == 1
    assert (await world.admin.delete(f"{ROUNDS}/2026-09-RU")).status_code in (200, 204)
    assert await chunk_rows() == 0  # the deleted draft's chunks went with it
