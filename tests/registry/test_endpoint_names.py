"""Proxy endpoints by DNS name (issue 25): names, resolution, policy on every address,
proof of control at the resolved addresses, and probes pinning one per measurement.

No real name is ever resolved: the registry and the agent take an injected resolver
(an object answering from a table), and every address dialled is on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.net.resolve import ResolveError, host_name, is_ip_literal, pin, resolve_all
from resistance.probe.agent import parse_assignment, pinned, unresolved
from resistance.probe.batch import parse_batch, result_json, sign_batch
from resistance.probe.check import Failure, Step
from resistance.probe.runner import Target
from resistance.registry.client import registration_body
from resistance.registry.errors import ApiError
from resistance.registry.services import check_endpoint_addresses, endpoint_refusal, publish
from tests.registry.conftest import RunningRegistry, start_registry
from tests.registry.test_api import assert_error, snapshot


class TableResolver:
    """Answers names from a table, records what was asked; a missing name fails as the
    system resolver does, a name mapped to ``None`` never answers."""

    def __init__(self, table: dict[str, Sequence[str] | None]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, name: str) -> Sequence[str]:
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = self.table[name]
        if answer is None:
            await asyncio.Event().wait()
        assert answer is not None
        return answer


# --- pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("proxy.example.net", "proxy.example.net"),
        ("Proxy.Example.NET.", "proxy.example.net"),
        ("xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai"),
        ("a-1.b2.example", "a-1.b2.example"),
    ],
)
def test_host_names_are_canonical(text: str, canonical: str) -> None:
    assert host_name(text) == canonical


@pytest.mark.parametrize(
    "text",
    ["localhost", "", "-a.example", "a-.example", "a..example", "1.2.3.4444", "пример.рф",
     "a_b.example", "x" * 64 + ".example", ("a" * 60 + ".") * 5 + "example", "1.2.3"],
)  # fmt: skip
def test_not_host_names(text: str) -> None:
    with pytest.raises(ValueError):
        host_name(text)


@pytest.mark.parametrize(
    ("address", "allow_private", "why"),
    [
        ("203.0.113.9", False, "is not a public address"),  # documentation range
        ("8.8.8.8", False, None),
        ("2a00:1450:4001::1", False, None),
        ("10.1.2.3", False, "is not a public address"),
        ("10.1.2.3", True, None),
        ("127.0.0.1", False, "is not a public address"),
        ("127.0.0.1", True, None),
        ("::ffff:127.0.0.1", False, "is not a public address"),
        ("169.254.169.254", False, "is not a public address"),
        ("0.0.0.0", True, "cannot serve users"),
        ("224.0.0.1", True, "cannot serve users"),
        ("ff02::1", True, "cannot serve users"),
    ],
)
def test_endpoint_policy_per_address(address: str, allow_private: bool, why: str | None) -> None:
    assert endpoint_refusal(address, allow_private=allow_private) == why


def test_endpoint_policy_holds_for_every_resolved_address() -> None:
    check_endpoint_addresses("p.example", ["8.8.8.8", "2a00:1450:4001::1"], allow_private=False)
    with pytest.raises(ApiError, match=r"resolves to 10\.0\.0\.1, which is not a public"):
        check_endpoint_addresses("p.example", ["8.8.8.8", "10.0.0.1"], allow_private=False)
    with pytest.raises(ApiError, match=r"resolves to 0\.0\.0\.0"):
        check_endpoint_addresses("p.example", ["127.0.0.1", "0.0.0.0"], allow_private=True)
    check_endpoint_addresses("p.example", ["127.0.0.1", "10.0.0.1"], allow_private=True)


async def test_resolution_is_bounded_deduplicated_and_checked() -> None:
    resolver = TableResolver({
        "a.example": ["192.0.2.1", "2001:db8::1", "192.0.2.1", "2001:0db8::1"],
        "many.example": [f"192.0.2.{i}" for i in range(1, 30)],
        "junk.example": ["not-an-address"],
        "empty.example": [],
        "slow.example": None,
    })  # fmt: skip
    assert await resolve_all("a.example", resolver, within=1) == ("192.0.2.1", "2001:db8::1")
    assert len(await resolve_all("many.example", resolver, within=1)) == 8
    with pytest.raises(ResolveError, match="does not resolve"):
        await resolve_all("missing.example", resolver, within=1)
    with pytest.raises(ResolveError, match="not an address"):
        await resolve_all("junk.example", resolver, within=1)
    with pytest.raises(ResolveError, match="no address"):
        await resolve_all("empty.example", resolver, within=1)
    with pytest.raises(ResolveError, match=r"within 0\.05 s"):
        await resolve_all("slow.example", resolver, within=0.05)


def test_pin_takes_the_first_resolved_address_that_is_proven() -> None:
    assert pin(["192.0.2.2", "192.0.2.1"], ["192.0.2.1", "192.0.2.2"]) == "192.0.2.2"
    assert pin(["192.0.2.9", "192.0.2.1"], ["192.0.2.1"]) == "192.0.2.1"
    assert pin(["192.0.2.9"], ["192.0.2.1"]) is None


async def test_a_probe_pins_one_proven_address_per_measurement() -> None:
    resolver = TableResolver(
        {"p.example": ["192.0.2.9", "192.0.2.1"], "moved.example": ["192.0.2.7"]}
    )
    named = Target("p.example", 1080, "u", "pw", 5, addresses=("192.0.2.1",))
    target, why = await pinned(named, resolver, within=1)
    assert why is None and (target.host, target.name, target.port) == (
        "192.0.2.1",
        "p.example",
        1080,
    )

    moved = Target("moved.example", 1080, "u", "pw", 6, addresses=("192.0.2.1",))
    target, why = await pinned(moved, resolver, within=1)
    assert target is moved and why is not None
    assert "resolves to 192.0.2.7, none of the proven 192.0.2.1" in why
    gone = Target("gone.example", 1080, "u", "pw", 7, addresses=("192.0.2.1",))
    assert "does not resolve" in str((await pinned(gone, resolver, within=1))[1])

    literal = Target("192.0.2.1", 1080, "u", "pw", 8)
    assert await pinned(literal, resolver, within=1) == (literal, None)
    assert resolver.asked == ["p.example", "moved.example", "gone.example"]

    failed = unresolved(moved, None, why or "", at=1_700_000_000)
    assert not failed.verdict.ok
    assert failed.outcomes[0].step is Step.TCP and failed.outcomes[0].failure is Failure.UNREACHABLE


def test_the_result_records_the_pinned_address_and_the_batch_checks_it() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.directory.keys import public_key_text

    target = Target("192.0.2.1", 1080, "u", "pw", 5, addresses=("192.0.2.1",), name="p.example")
    result = unresolved(target, None, "dns: test", at=1_700_000_000)
    record = result_json(result)
    assert record["address"] == "192.0.2.1"
    plain = result_json(unresolved(Target("192.0.2.1", 1080, "u", "pw", 5), None, "x", at=1))
    assert "address" not in plain

    key = Ed25519PrivateKey.generate()

    def signed(results: list[dict[str, Any]]) -> bytes:
        return sign_batch(
            key=key, probe_key=public_key_text(key.public_key()), batch_id="ab" * 16,
            vantage="v", country="RU", created_at=1_700_000_000, results=results,
        )  # fmt: skip

    (parsed,) = parse_batch(signed([record])).results
    assert parsed.address == "192.0.2.1"
    for bad in ("p.example", "192.0.2.01", 7, "2001:0db8::1"):
        with pytest.raises(Exception, match="address must be"):
            parse_batch(signed([record | {"address": bad}]))


def test_the_assignment_carries_the_proven_addresses() -> None:
    raw = {
        "vantage": "v", "country": "RU", "round_seconds": 60, "canary": None,
        "proxies": [{"proxy_id": 3, "host": "p.example", "port": 1080, "username": "u",
                     "password": "pw", "due_ms": 0, "addresses": ["192.0.2.1", "2001:db8::1"]},
                    {"proxy_id": 4, "host": "192.0.2.4", "port": 1080, "username": "u",
                     "password": "pw", "due_ms": 0}],
    }  # fmt: skip
    (_, named), (_, literal) = parse_assignment(raw).targets
    assert named.addresses == ("192.0.2.1", "2001:db8::1") and literal.addresses == ()
    raw["proxies"][0]["addresses"] = ["p.example"]
    with pytest.raises(ValueError, match="addresses"):
        parse_assignment(raw)


# --- registration against a live node ---------------------------------------------------


@pytest.fixture
def live_node(node_factory: Any, tmp_path: Path) -> tuple[Any, Path]:
    state = tmp_path / "node"
    return node_factory("--user", "alice:secret", state_dir=state), state


def _body(state: Path, host: str, port: int, operator_id: int) -> dict[str, Any]:
    body = registration_body(
        state_dir=state, operator_id=operator_id, host=host, port=port, public=True,
        users=[{"username": "alice", "password": "secret"}],
    )  # fmt: skip
    return body


async def test_register_by_name_proves_control_at_the_resolved_addresses(
    running: RunningRegistry, live_node: tuple[Any, Path]
) -> None:
    node, state = live_node
    # the node listens on 127.0.0.1 only: 127.0.0.2 answers nothing, so it is not proven
    resolver = TableResolver({"node.example": ["127.0.0.2", "127.0.0.1"]})
    running.registry.resolver = resolver
    token = await running.operator("named")
    client = running.client(token=token)
    r = await client.post(
        "/api/v1/proxies", json=_body(state, "node.example", node.port, running.operator_ids[token])
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["endpoint"] == {"host": "node.example", "port": node.port}
    assert answer["addresses"] == ["127.0.0.1"]
    assert answer["network"] == "127.0.0.0/24"
    assert resolver.asked == ["node.example"]

    signed = await publish(running.registry)
    (entry,) = signed["document"]["proxies"]
    assert entry["endpoint"]["host"] == "node.example"
    assert "127.0.0.1" not in str(entry["endpoint"])
    probe = await running.client(token=running.admin_token).post(
        "/api/v1/probes", json={"name": "ru-1", "country": "RU", "public_key": "A" * 43}
    )
    assert probe.status_code == 201, probe.text
    assignment = await running.client(token=probe.json()["token"]).get("/api/v1/probe/assignment")
    (target,) = assignment.json()["proxies"]
    assert (target["host"], target["addresses"]) == ("node.example", ["127.0.0.1"])


async def test_names_refused_before_anything_is_stored(
    running: RunningRegistry, live_node: tuple[Any, Path]
) -> None:
    node, state = live_node
    running.registry.resolver = TableResolver({
        "multi.example": ["127.0.0.1", "0.0.0.0"],
        "slow.example": None,
        "elsewhere.example": ["127.0.0.3"],
    })  # fmt: skip
    running.registry.settings = dataclasses.replace(running.registry.settings, resolve_timeout=0.2)
    token = await running.operator("refused")
    client = running.client(token=token)
    me = running.operator_ids[token]
    before = await snapshot(running)

    async def refused(host: str, text: str) -> None:
        r = await client.post("/api/v1/proxies", json=_body(state, host, node.port, me))
        assert_error(r, 422, text)

    await refused("multi.example", "resolves to 0.0.0.0, which cannot serve users")
    await refused("slow.example", "did not resolve within 0.2 s")
    await refused("missing.example", "does not resolve")
    await refused("elsewhere.example", "at 127.0.0.3")  # resolves, but nobody there
    await refused("Node.Example", "must be written as 'node.example'")
    await refused("under_score.example", "neither an address nor a name")
    assert await snapshot(running) == before


async def test_a_public_registry_refuses_a_name_with_one_private_address(
    tmp_path: Path, db_url: str, live_node: tuple[Any, Path]
) -> None:
    node, state = live_node
    async with start_registry(tmp_path / "reg", db_url, allow_private_endpoints=False) as reg:
        reg.registry.resolver = TableResolver({"mixed.example": ["8.8.8.8", "127.0.0.1"]})
        token = await reg.operator("pub")
        r = await reg.client(token=token).post(
            "/api/v1/proxies",
            json=_body(state, "mixed.example", node.port, reg.operator_ids[token]),
        )
        assert_error(r, 422, "resolves to 127.0.0.1, which is not a public address")


@given(st.text(max_size=300))
def test_host_name_fuzz_gives_a_canonical_name_or_a_value_error(text: str) -> None:
    try:
        name = host_name(text)
    except ValueError:
        return
    assert host_name(name) == name and len(name) <= 253 and name.isascii()
    assert not is_ip_literal(name)
