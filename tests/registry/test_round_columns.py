"""The round worker's inputs and awards, made from numpy columns, against the reference
forms, on a seeded database with edge cases, on SQLite and PostgreSQL.

The worker writes its chunks' text from the columns and hands the award rule the arrays
(``grants.columns``); the reference is what the registry did before: chunks through
``canonical_json`` of the entries, and the award rule reading the chunks back (a
funder's verify) or their /1 rows. The round must be the same bytes and the same
integers; and inputs a verify would refuse are refused by the worker, with its message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import text

from resistance.grants import columns as grant_columns
from resistance.grants import rounds as grant_rounds
from resistance.grants.award import compute_result_from
from resistance.grants.errors import InputError
from resistance.grants.model import (
    GrantSettings,
    canonical_json,
    chunk_text,
    settings_to_json,
)
from resistance.probe import rollup
from resistance.registry import repositories as repo
from resistance.registry import rounds
from resistance.registry.models import ProbeRollup
from tests.grants.helpers import address
from tests.registry.conftest import start_registry
from tests.registry.test_rounds_api import NOW, World, add_operator, add_rollups, create


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    """Alice (2 proxies) and bob (1) with payout addresses, carol (1) without."""
    async with start_registry(tmp_path / "registry", db_url) as reg:
        reg.registry.clock = lambda: NOW
        w = World(reg, reg.client(token=reg.admin_token), {}, {})
        await add_operator(w, "alice", 2, payout_to=address("alice"))
        await add_operator(w, "bob", 1, payout_to=address("bob"))
        await add_operator(w, "carol", 1, payout_to=None)
        yield w


KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"round-columns").digest())


def _settings(**overrides: Any) -> GrantSettings:
    values: dict[str, Any] = {
        "round_id": "r-columns", "network": "regtest", "target_country": "RU",
        "period_start": dt.date(2026, 10, 1), "period_end": dt.date(2026, 10, 31),
        "budget_sat": 5_000_000, "fee_reserve_sat": 1_000, "probation_days": 2,
        "operator_cap_bp": 6_000, "capacity_reference_kbps": 4_000,
    }  # fmt: skip
    values.update(overrides)
    return GrantSettings(**values)


async def _job(world: World, settings: GrantSettings) -> Any:
    url = world.reg.registry.engine.url.render_as_string(hide_password=False)
    keys = [KEY.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())]
    settings_json = canonical_json(settings_to_json(settings))
    return await asyncio.to_thread(rounds.compute_job, url, settings_json, keys)


async def _rows(world: World, rows: list[tuple[int, str, str, bool, int, int, Any]]) -> None:
    async with world.reg.registry.sessions.begin() as session:
        for proxy_id, day, country, control, attempts, successes, hist in rows:
            session.add(
                ProbeRollup(
                    proxy_id=proxy_id, day=day, country=country, control=control,
                    attempts=attempts, successes=successes,
                    latency_hist=rollup.empty(rollup.LATENCY_BOUNDS_MS),
                    latency_p50_ms=None, latency_p90_ms=None,
                    throughput_hist=hist, throughput_p50_kbps=None,
                )
            )  # fmt: skip


async def _seed(world: World) -> None:
    """Edge cases: a cascade (bridge and exit), an operator without an address, a proxy
    measured only from outside, days before, at both ends of and after the period, large
    counts, histograms of the wrong shape or missing, spread histograms, zero counts."""
    alice, bob, carol = (world.proxies[n] for n in ("alice", "bob", "carol"))
    everyone = alice + bob + carol
    await add_rollups(world, everyone, dt.date(2026, 9, 28), 4)  # before, and the 1st
    await add_rollups(world, alice + bob, dt.date(2026, 10, 3), 28, target_successes=22)
    await add_rollups(world, bob, dt.date(2026, 11, 1), 1)  # after the period
    async with world.reg.registry.sessions.begin() as session:
        await session.execute(
            text("UPDATE proxies SET cascade_role = 'exit' WHERE id = :e"), {"e": alice[1]}
        )
        await session.execute(
            text("UPDATE proxies SET cascade_role = 'bridge', exit_id = :e WHERE id = :b"),
            {"e": alice[1], "b": bob[0]},
        )
    spread = [0, 3, 0, 7, 1, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    big = [0] * 18 + [10**12]
    await _rows(
        world,
        [
            (alice[0], "2026-09-15", "RU", False, 10**9, 10**9 - 7, spread),
            (alice[0], "2026-09-15", "DE", True, 10**9, 10**9, big),
            (alice[0], "2026-10-31", "RU", False, 0, 0, None),  # nothing measured
            (alice[0], "2026-10-31", "DE", True, 7, 0, [1, 2]),  # wrong shape
            (alice[0], "2026-10-31", "US", True, 5, 5, spread),  # a second control row
            (bob[0], "2026-10-02", "DE", True, 2**31 - 1, 2**31 - 2, spread),  # outside only
            (bob[0], "2026-10-02", "IR", False, 3, 3, big),
        ],
    )


def _reference(computed: Any, settings: GrantSettings) -> None:
    """The worker's round is what the reference forms give."""
    inputs_json = {**json.loads(computed.stored["inputs"]), "chunks": list(computed.chunks)}
    round_ = rounds.load_round(_row(computed, settings), inputs_json)
    # each chunk is canonical_json of its entries (the old writer's text)
    for n, chunk in enumerate(computed.chunks):
        parsed = json.loads(chunk)
        assert chunk_text(dt.date.fromisoformat(parsed["first_day"]), parsed["proxies"]) == chunk
        assert canonical_json(parsed) == chunk, n
    # the awards: recomputed from the chunks (a funder's verify), and from their /1 rows
    assert grant_rounds.verify(round_) == []
    rows_result = compute_result_from(
        settings, round_.inputs.rows(), round_.inputs.carried_in, round_.inputs.prior_service_days
    )
    assert rows_result == round_.result


def _row(computed: Any, settings: GrantSettings) -> Any:
    from resistance.registry.models import GrantRoundRow

    return GrantRoundRow(
        round_id=settings.round_id, status="draft", digest=None, txid=None, **computed.stored
    )


async def test_the_workers_round_is_the_reference_round(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _seed(world)
    monkeypatch.setattr(rounds, "CHUNK_PROXIES", 1)  # a chunk per proxy
    monkeypatch.setattr(grant_columns, "TEXT_CHUNKS", 2)  # text made two chunks at a time
    settings = _settings()
    computed = await _job(world, settings)
    assert not isinstance(computed, tuple), computed
    assert len(computed.chunks) == 2  # alice's first proxy, bob's bridge (the exit: no)
    _reference(computed, settings)
    bridge = json.loads(computed.chunks[1])["proxies"][0]
    assert bridge["exit_operator_id"] == "alice" and bridge["proxy_id"] == str(
        world.proxies["bob"][0]
    )
    first = json.loads(computed.chunks[0])["proxies"][0]
    assert first["control_attempts"][-1] == 7 + 5  # both control rows of the 31st
    # the chunks as the entries' dicts through canonical_json (the writer before)
    async with world.reg.registry.sessions() as session:
        built = await rounds.build_inputs(session, settings=settings)
    assert built.inputs.chunks == computed.chunks
    assert tuple(built.groups._reference_chunks()) == computed.chunks
    assert list(built.groups()) == list(built.inputs.groups())

    # the rows path (SQLite's; PostgreSQL's if COPY is not used) gives the same round
    async def no_copy(*_: Any, **__: Any) -> bool:
        return False

    monkeypatch.setattr(repo, "rollup_lines", no_copy)
    again = await _job(world, settings)
    assert (again.stored, again.chunks, again.per_proxy) == (
        computed.stored,
        computed.chunks,
        computed.per_proxy,
    )


async def test_the_worker_refuses_inputs_a_verify_would_refuse(world: World) -> None:
    """The worker's award rule reads the arrays, not the chunks: it checks them as reading
    the chunks would (more successes than attempts here), so no round is made that a
    funder's verify refuses."""
    bob = world.proxies["bob"][0]
    await add_rollups(world, [bob], dt.date(2026, 10, 1), 3)
    async with world.reg.registry.sessions.begin() as session:
        await session.execute(
            text(
                "UPDATE probe_rollups SET successes = 30 "
                "WHERE proxy_id = :p AND day = '2026-10-02' AND country = 'RU'"
            ),
            {"p": bob},
        )
    settings = _settings(probation_days=0)
    async with world.reg.registry.sessions() as session:
        built = await rounds.build_inputs(session, settings=settings)
    with pytest.raises(InputError) as verify:
        list(built.inputs.groups())  # what a funder's verify reads
    assert "target_successes" in str(verify.value) or "successes" in str(verify.value)
    done = await _job(world, settings)
    assert done == ("refused", str(verify.value))
    created = await create(world)
    assert created.status_code == 422, created.text
    assert str(verify.value) in created.json()["error"]
    listed = await world.admin.get("/api/v1/grants/rounds")
    assert listed.json() == [] or listed.json().get("rounds", []) == []
