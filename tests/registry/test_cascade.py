"""Cascades in the registry (issue 24): a bridge and its exit, each with its operator.

Live nodes on loopback: the exit (a user of its own for the bridge) and the
bridge (``--upstream`` to the exit).  The exit registers with role exit and
is never published nor handed out; the bridge registers naming the exit, and
the registry logs in on the exit with the bridge's credential once (the
exit's operator agreed); a grant round's rows carry the exit's operator.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from resistance.grants.award import compute_result
from resistance.grants.model import GrantSettings
from resistance.probe import rollup
from resistance.registry import rounds, services
from resistance.registry.models import (
    ProbeAccount,
    ProbeBatch,
    ProbeResult,
    ProbeRollup,
    ProxyVerdict,
)
from tests.grants.helpers import address
from tests.registry.conftest import RunningRegistry
from tests.registry.test_api import assert_error
from tests.registry.test_registration import body_for

HOP = {"username": "bridge1", "password": "hop-Secret-1"}


@pytest.fixture
def cascade_nodes(node_factory: Any, tmp_path: Path) -> dict[str, tuple[Any, Path]]:
    exit_state, bridge_state = tmp_path / "exit", tmp_path / "bridge"
    exit_ = node_factory(
        "--user", "alice:secret", "--user", f"{HOP['username']}:{HOP['password']}",
        "--allow", "127.0.0.0/8", state_dir=exit_state,
    )  # fmt: skip
    bridge = node_factory(
        "--user", "bob:secret", "--allow", "127.0.0.0/8",
        "--upstream", f"socks5://{HOP['username']}:{HOP['password']}@127.0.0.1:{exit_.port}",
        state_dir=bridge_state,
    )  # fmt: skip
    return {"exit": (exit_, exit_state), "bridge": (bridge, bridge_state)}


async def register_cascade(
    running: RunningRegistry, nodes: dict[str, tuple[Any, Path]]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    (exit_, exit_state), (bridge, bridge_state) = nodes["exit"], nodes["bridge"]
    tokens = {name: await running.operator(name) for name in ("exit-op", "bridge-op")}
    exit_client = running.client(token=tokens["exit-op"])
    bridge_client = running.client(token=tokens["bridge-op"])
    bridge_op = running.operator_ids[tokens["bridge-op"]]
    body = body_for(exit_state, exit_.port, running.operator_ids[tokens["exit-op"]], role="exit")
    body["public"] = True  # asked for, and still never published
    r = await exit_client.post("/api/v1/proxies", json=body)
    assert r.status_code == 201, r.text
    exit_view = r.json()
    assert (exit_view["cascade_role"], exit_view["public"]) == ("exit", False)

    wrong = {**HOP, "password": "not-it", "exit_id": exit_view["proxy_id"]}
    r = await bridge_client.post(
        "/api/v1/proxies", json=body_for(bridge_state, bridge.port, bridge_op, exit=wrong)
    )
    assert_error(r, 422, "the exit refused the bridge's credential")

    body = body_for(
        bridge_state, bridge.port, bridge_op, exit={**HOP, "exit_id": exit_view["proxy_id"]}
    )
    body["public"] = True
    body["users"] = [{"username": "bob", "password": "secret"}]
    r = await bridge_client.post("/api/v1/proxies", json=body)
    assert r.status_code == 201, r.text
    bridge_view = r.json()
    assert bridge_view["cascade_role"] == "bridge"
    assert bridge_view["exit_id"] == exit_view["proxy_id"]
    return exit_view, bridge_view, tokens


async def test_the_directory_lists_the_bridge_and_never_the_exit(
    running: RunningRegistry, cascade_nodes: dict[str, tuple[Any, Path]]
) -> None:
    exit_view, bridge_view, _ = await register_cascade(running, cascade_nodes)
    signed = await services.publish(running.registry)
    entries = signed["document"]["proxies"]
    assert [e["endpoint"] for e in entries] == [bridge_view["endpoint"]]
    assert entries[0]["bridge"] is True
    # the entries are returned as their bytes, decoded when read: listed for json
    assert str(exit_view["public_key"]) not in json.dumps(signed, default=list)
    handed_out = await services.assign(running.registry, client_host="198.51.100.7")
    assert handed_out["proxies"] == []  # the exit is non-public, and still never handed out


async def test_a_bridge_must_name_an_active_exit(
    running: RunningRegistry, cascade_nodes: dict[str, tuple[Any, Path]]
) -> None:
    bridge, bridge_state = cascade_nodes["bridge"]
    exit_, exit_state = cascade_nodes["exit"]
    token = await running.operator("someone")
    client = running.client(token=token)
    someone = running.operator_ids[token]
    r = await client.post("/api/v1/proxies", json=body_for(exit_state, exit_.port, someone))
    assert r.status_code == 201 and r.json()["cascade_role"] is None  # an ordinary proxy
    hop = {**HOP, "exit_id": r.json()["proxy_id"]}
    r = await client.post(
        "/api/v1/proxies", json=body_for(bridge_state, bridge.port, someone, exit=hop)
    )
    assert_error(r, 422, "is no active exit")


async def test_a_rounds_rows_pay_the_exit_through_its_bridge(
    running: RunningRegistry, cascade_nodes: dict[str, tuple[Any, Path]]
) -> None:
    exit_view, bridge_view, tokens = await register_cascade(running, cascade_nodes)
    for name, token in tokens.items():
        client = running.client(token=token)
        put = await client.put(
            "/api/v1/operators/me/payout-address", json={"address": address(name)}
        )
        assert put.status_code == 200, put.text
    hist = rollup.empty(rollup.THROUGHPUT_BOUNDS_KBPS)
    day = dt.date(2026, 10, 1)
    async with running.registry.sessions.begin() as session:
        for proxy in (exit_view, bridge_view):
            for country, control in (("DE", True), ("RU", False)):
                session.add(
                    ProbeRollup(
                        proxy_id=proxy["proxy_id"], day=day.isoformat(), country=country,
                        control=control, attempts=24, successes=24,
                        latency_hist=rollup.empty(rollup.LATENCY_BOUNDS_MS),
                        latency_p50_ms=None, latency_p90_ms=None,
                        throughput_hist=hist, throughput_p50_kbps=None,
                    )
                )  # fmt: skip
    settings = GrantSettings(
        round_id="2026-10-RU", network="regtest", target_country="RU",
        period_start=day, period_end=day, budget_sat=1_000_000, fee_reserve_sat=0,
    )  # fmt: skip
    async with running.registry.sessions() as session:
        built = await rounds.build_inputs(session, settings=settings)
    (row,) = built.inputs.rows()  # the exit has no row of its own
    assert list(built.groups()) == list(built.inputs.groups())  # what the worker reads
    assert row.proxy_id == str(bridge_view["proxy_id"])
    assert (row.operator_id, row.exit_operator_id) == ("bridge-op", "exit-op")
    assert row.exit_network == exit_view["network"]
    result = compute_result(settings, built.inputs)
    assert {a.operator_id: a.share_sat for a in result.awards} == {
        "bridge-op": 600_000,
        "exit-op": 400_000,
    }


async def test_the_operator_sees_which_hop_fails(
    running: RunningRegistry, cascade_nodes: dict[str, tuple[Any, Path]]
) -> None:
    exit_view, bridge_view, tokens = await register_cascade(running, cascade_nodes)
    client = running.client(token=tokens["bridge-op"])

    async def hop() -> str:
        (mine,) = (await client.get("/api/v1/proxies")).json()["proxies"]
        return str(mine["hop"])

    assert await hop() == "unknown"  # not measured yet
    async with running.registry.sessions.begin() as session:
        session.add(ProbeAccount(id=1, name="in-ru", public_key="k", country="RU",
                                 control=False, created_at=1))  # fmt: skip
        session.add(ProbeBatch(batch_id="b1", probe_id=1, digest="d", created_at=1,
                               received_at=1, result_count=2, body="{}"))  # fmt: skip
        session.add(ProxyVerdict(proxy_id=exit_view["proxy_id"], verdict="functional",
                                 blocked_in=[], since=1, updated_at=1))  # fmt: skip

    async def inside(at: int, ok: bool, step: str | None, failure: str | None) -> None:
        async with running.registry.sessions.begin() as session:
            session.add(
                ProbeResult(
                    batch_id="b1", probe_id=1, proxy_id=bridge_view["proxy_id"], measured_at=at,
                    country="RU", control=False, ok=ok, step=step, failure=failure, detail="",
                )
            )  # fmt: skip

    await inside(10, False, "connect", "timeout")
    assert await hop() == "hop-blocked"
    await inside(20, False, "tcp", "timeout")
    assert await hop() == "bridge-unreachable"
    await inside(30, True, None, None)
    assert await hop() == "works"
    await inside(40, False, "connect", "refused")
    async with running.registry.sessions.begin() as session:
        verdict = await session.get(ProxyVerdict, exit_view["proxy_id"])
        assert verdict is not None
        verdict.verdict = "down"
    assert await hop() == "exit-down"
