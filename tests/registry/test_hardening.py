"""Issue 26 (points 1, 3, 8): input that once gave a 5xx on PostgreSQL, duplicate JSON
keys, NUL characters, statements for another operator -- on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.probe.batch import PROXY_ID_MAX, BatchError, check_document
from resistance.registry.client import registration_body
from resistance.registry.guard import json_problem
from tests.registry.conftest import RunningRegistry
from tests.registry.test_api import REGTEST_P2WPKH, assert_error, snapshot

ROUND_PATHS = [
    ("GET", "/api/v1/grants/rounds/{}"),
    ("DELETE", "/api/v1/grants/rounds/{}"),
    ("GET", "/api/v1/grants/rounds/{}/export"),
    ("POST", "/api/v1/grants/rounds/{}/approve"),
    ("POST", "/api/v1/grants/rounds/{}/recompute"),
    ("POST", "/api/v1/grants/rounds/{}/mark-paid"),
]


async def test_ids_beyond_the_column_are_refused_before_the_database(
    running: RunningRegistry,
) -> None:
    admin = running.client(token=running.admin_token)
    for proxy_id in (9007199254740993, 2**31, 2**62, 0, -1):
        r = await admin.get(f"/api/v1/proxies/{proxy_id}/status")
        assert_error(r, 422, "proxy_id")
    # the largest id the column holds reaches the database, which answers (no 5xx)
    r = await admin.get(f"/api/v1/proxies/{PROXY_ID_MAX}/status")
    assert r.status_code == 200 and r.json()["status"] == "untested", r.text


async def test_round_ids_in_paths_have_the_bodys_pattern(running: RunningRegistry) -> None:
    admin = running.client(token=running.admin_token)
    for method, path in ROUND_PATHS:
        for bad in ("fz%00op", "a%20b", "x" * 65, "%2E%2E"):
            r = await admin.request(method, path.format(bad), json={})
            assert_error(r, 422, "round_id")
        r = await admin.request(method, path.format("no-such-round"), json={})
        assert r.status_code in (404, 422), r.text  # 422: mark-paid's body is incomplete


async def test_operator_names_in_paths_have_the_bodys_pattern(running: RunningRegistry) -> None:
    admin = running.client(token=running.admin_token)
    before = await snapshot(running)
    for bad in ("fz%00op", "a%20b", "x" * 65, "-lead"):
        r = await admin.post(f"/api/v1/operators/{bad}/tokens")
        assert_error(r, 422, "name")
    assert await snapshot(running) == before


async def test_duplicate_keys_are_refused_on_every_body(running: RunningRegistry) -> None:
    before = await snapshot(running)
    raw = b'{"name":"bad name!","name":"ok"}'
    r = await running.client().post(
        "/api/v1/operators", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(r, 422, "duplicate key 'name'")
    # without a content type FastAPI still parses JSON: the guard does too
    assert_error(await running.client().post("/api/v1/operators", content=raw), 422, "duplicate")
    assert await snapshot(running) == before
    token = await running.operator("dup")
    body = f'{{"address":"not-an-address","address":"{REGTEST_P2WPKH}"}}'.encode()
    r = await running.client(token=token).put(
        "/api/v1/operators/me/payout-address",
        content=body,
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert_error(r, 422, "duplicate key 'address'")
    me = await running.client(token=token).get("/api/v1/operators/me")
    assert me.json()["payout_address"] is None


async def test_nul_characters_are_refused_in_bodies(running: RunningRegistry) -> None:
    token = await running.operator("nul")
    client = running.client(token=token)
    before = await snapshot(running)
    r = await client.put("/api/v1/operators/me/payout-address", json={"address": "bc\x00rt1"})
    assert_error(r, 422, "NUL")
    admin = running.client(token=running.admin_token)
    r = await admin.post(
        "/api/v1/grants/rounds/x/mark-paid", json={"tx_hex": "00", "change_descriptor": "a\x00"}
    )
    assert_error(r, 422, "NUL")
    r = await admin.post("/api/v1/probes", json={"name": "p", "country": "RU", "k\x00": 1})
    assert_error(r, 422, "NUL")
    assert await snapshot(running) == before


def test_signed_batches_bound_proxy_ids_by_the_column() -> None:
    result = {
        "proxy_id": PROXY_ID_MAX + 1, "at": 1, "ok": False, "step": "tcp",
        "failure": "refused", "detail": "", "tcp_us": None, "connect_us": None,
        "ttfb_us": None, "throughput_kbps": None, "canary": None,
    }  # fmt: skip
    document = {
        "version": 1, "batch_id": "0" * 32, "vantage": "v", "country": "RU",
        "probe_key": "A" * 43, "created_at": 1, "results": [result],
    }  # fmt: skip
    with pytest.raises(BatchError, match="proxy_id"):
        check_document(document, "A" * 86)


async def test_a_statement_for_another_operator_is_refused(
    running: RunningRegistry, tmp_path: Path
) -> None:
    mine, theirs = await running.operator("victim"), await running.operator("thief")
    state = tmp_path / "node"
    state.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    statement = registration_body(
        state_dir=state, operator_id=running.operator_ids[mine], host="127.0.0.1", port=port,
        public=False, users=[],
    )  # fmt: skip
    before = await snapshot(running)
    r = await running.client(token=theirs).post("/api/v1/proxies", json=statement)
    assert_error(r, 403, f"statement is for operator {running.operator_ids[mine]}")
    assert await snapshot(running) == before
    # the operator it names gets past that check (to the challenge: nobody listens)
    r = await running.client(token=mine).post("/api/v1/proxies", json=statement)
    assert_error(r, 422, "cannot reach")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_json)
def test_the_guard_accepts_what_has_no_nul(value: object) -> None:
    import json

    body = json.dumps(value).encode()
    problem = json_problem(body)
    assert (problem is None) == ("\\u0000" not in body.decode())


@given(st.binary(max_size=200))
def test_the_guard_parses_any_bytes_without_crashing(body: bytes) -> None:
    problem = json_problem(body)
    assert problem is None or problem[0] == 422
