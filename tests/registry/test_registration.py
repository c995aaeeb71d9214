"""Node registration end to end: a live `resist node`, a signed statement, the challenge."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.node.identity import (
    challenge_message as node_challenge_message,
)
from resistance.node.identity import (
    load_or_create_identity,
    probe_credential,
    public_key_text,
)
from resistance.registry import repositories as repo
from resistance.registry.client import registration_body
from resistance.registry.statement import challenge_message, make_statement
from tests.registry.conftest import RunningRegistry
from tests.registry.test_api import assert_error, snapshot


@pytest.fixture
def live_node(node_factory: Any, tmp_path: Path) -> tuple[Any, Path]:
    state = tmp_path / "node"
    return node_factory("--user", "alice:secret", state_dir=state), state


def body_for(state: Path, port: int, operator_id: int, **kw: Any) -> dict[str, Any]:
    return registration_body(
        state_dir=state, operator_id=operator_id, host="127.0.0.1", port=port, public=False,
        users=[], **kw,
    )  # fmt: skip


def test_challenge_message_matches_the_node() -> None:
    nonce = bytes(range(16))
    assert challenge_message(nonce) == node_challenge_message(nonce)


async def test_register_success(running: RunningRegistry, live_node: tuple[Any, Path]) -> None:
    node, state = live_node
    token = await running.operator("op1")
    body = body_for(state, node.port, running.operator_ids[token])
    body["public"] = True
    body["users"] = [{"username": "alice", "password": "secret"}]
    r = await running.client(token=token).post("/api/v1/proxies", json=body)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["endpoint"] == {"host": "127.0.0.1", "port": node.port}
    assert answer["network"] == "127.0.0.0/24"
    assert answer["public_key"] == public_key_text(load_or_create_identity(state))
    mine = (await running.client(token=token).get("/api/v1/proxies")).json()["proxies"]
    assert [p["proxy_id"] for p in mine] == [answer["proxy_id"]]
    # re-registering one's own endpoint with a fresh statement is an update
    r = await running.client(token=token).post(
        "/api/v1/proxies", json=body_for(state, node.port, running.operator_ids[token])
    )
    assert r.status_code == 201 and r.json()["proxy_id"] == answer["proxy_id"]


async def test_wrong_key_refused(running: RunningRegistry, live_node: tuple[Any, Path]) -> None:
    node, state = live_node
    token = await running.operator("op2")
    user, password = probe_credential(state)
    statement, signature = make_statement(
        key=Ed25519PrivateKey.generate(), operator_id=running.operator_ids[token],
        host="127.0.0.1", port=node.port,
        probe_user=user, probe_password=password, now=int(time.time()),
    )  # fmt: skip
    before = await snapshot(running)
    r = await running.client(token=token).post(
        "/api/v1/proxies", json={"statement": statement, "signature": signature}
    )
    assert_error(r, 422, "different key")
    assert await snapshot(running) == before


async def test_replayed_statement_refused(
    running: RunningRegistry, live_node: tuple[Any, Path]
) -> None:
    node, state = live_node
    token = await running.operator("op3")
    body = body_for(state, node.port, running.operator_ids[token])
    assert (await running.client(token=token).post("/api/v1/proxies", json=body)).status_code == 201
    before = await snapshot(running)
    assert_error(
        await running.client(token=token).post("/api/v1/proxies", json=body), 409, "replay"
    )
    assert await snapshot(running) == before


async def test_endpoint_owned_by_another_operator(
    running: RunningRegistry, live_node: tuple[Any, Path]
) -> None:
    node, state = live_node
    first, second = await running.operator("op4"), await running.operator("op5")
    r = await running.client(token=first).post(
        "/api/v1/proxies", json=body_for(state, node.port, running.operator_ids[first])
    )
    assert r.status_code == 201
    before = await snapshot(running)
    r = await running.client(token=second).post(
        "/api/v1/proxies", json=body_for(state, node.port, running.operator_ids[second])
    )
    assert_error(r, 409, "another operator")
    assert await snapshot(running) == before


async def test_a_wireguard_endpoint_is_not_taken_over_by_a_socks5_node(
    running: RunningRegistry, live_node: tuple[Any, Path]
) -> None:
    """The same operator, the same host and port: a SOCKS5 registration must not
    half-rewrite the WireGuard server's row (its key would stay on a SOCKS5 node)."""
    node, state = live_node
    token = await running.operator("op-wg")
    async with running.registry.sessions.begin() as session:
        me = await repo.operator_by_name(session, name="op-wg")
        assert me is not None
        await repo.save_proxy(session, fields=wireguard_fields(me.id, port=node.port))
    before = await snapshot(running)
    r = await running.client(token=token).post(
        "/api/v1/proxies", json=body_for(state, node.port, running.operator_ids[token])
    )
    assert_error(r, 409, "registered as a WireGuard server")
    assert await snapshot(running) == before


def wireguard_fields(operator_id: int, *, port: int) -> dict[str, Any]:
    return {
        "operator_id": operator_id, "host": "127.0.0.1", "port": port, "network": "127.0.0.0/24",
        "public_key": "", "protocols": ["wireguard"], "probe_user": "", "probe_password": "",
        "credentials": [], "public": False, "status": "active", "registered_at": 1,
        "verified_at": 1, "wg_public_key": "A" * 43 + "=", "wg_probe_keys": [],
    }  # fmt: skip


async def test_bad_statements_refused(running: RunningRegistry, tmp_path: Path) -> None:
    token = await running.operator("op6")
    client = running.client(token=token)
    state = tmp_path / "offline-node"
    state.mkdir()
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    before = await snapshot(running)

    stale = body_for(state, dead_port, running.operator_ids[token], now=int(time.time()) - 1000)
    assert_error(await client.post("/api/v1/proxies", json=stale), 422, "timestamp")

    forged = body_for(state, dead_port, running.operator_ids[token])
    forged["statement"]["endpoint"]["port"] = dead_port + 1 if dead_port < 65535 else 1
    assert_error(await client.post("/api/v1/proxies", json=forged), 422, "signature")

    dead = body_for(state, dead_port, running.operator_ids[token])
    assert_error(await client.post("/api/v1/proxies", json=dead), 422, "cannot reach")

    extra = body_for(state, dead_port, running.operator_ids[token])
    extra["statement"]["extra"] = 1
    assert_error(await client.post("/api/v1/proxies", json=extra), 422, "invalid request")

    named = registration_body(
        state_dir=state,
        operator_id=running.operator_ids[token],
        host="localhost",
        port=dead_port,
        public=False,
        users=[],
    )
    # one label: neither an address nor a DNS name (test_endpoint_names has real names)
    assert_error(await client.post("/api/v1/proxies", json=named), 422, "nor a name")

    assert_error(await running.client().post("/api/v1/proxies", json=dead), 401)
    assert await snapshot(running) == before
