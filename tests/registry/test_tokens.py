"""Tokens that end: list, rotate, expire and revoke, over the API, the command line and
two registry instances on one database (SQLite and PostgreSQL).

Issue 26 point 5: no token could be revoked, rotated or expire, so a leaked probe
token handed out every proxy until a row was deleted by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.directory.keys import public_key_text
from resistance.probe.keys import load_or_create_probe_key
from resistance.registry.tokens import MAX_LIFETIME, parse_duration
from tests.registry.conftest import RunningRegistry, start_registry
from tests.registry.test_multiproc import copy_keys


async def whoami(reg: RunningRegistry, token: str) -> int:
    response = await reg.client(token=token).get("/api/v1/tokens")
    return response.status_code


# --- the duration parser --------------------------------------------------------------


@given(st.integers(1, 10**9), st.sampled_from("smhdw"))
def test_duration_round_trip(count: int, unit: str) -> None:
    seconds = count * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    text = f"{count}{unit}"
    if seconds <= MAX_LIFETIME:
        assert parse_duration(text) == seconds
    else:
        with pytest.raises(ValueError):
            parse_duration(text)


@given(st.text(max_size=20))
def test_duration_parses_or_says_why(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= seconds <= MAX_LIFETIME


@pytest.mark.parametrize("bad", ["", "30", "d", "-1d", "0s", "1y", "1.5h", "30 d 1h", "\u0661d"])
def test_duration_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# --- an account's own tokens over the API ---------------------------------------------


async def test_operator_rotates_and_the_old_token_is_refused_at_once(
    running: RunningRegistry,
) -> None:
    old = await running.operator("alice")
    now = running.registry.now()
    running.registry.clock = lambda: now
    listed = (await running.client(token=old).get("/api/v1/tokens")).json()["tokens"]
    assert [(t["role"], t["owner"], t["state"], t["current"]) for t in listed] == [
        ("operator", "alice", "live", True)
    ]
    response = await running.client(token=old).post(
        "/api/v1/tokens/rotate", json={"expires_in": 86400}
    )
    assert response.status_code == 201, response.text
    made = response.json()
    new = made["token"]
    assert new.startswith("rst_") and new != old
    assert made["replaces"] == listed[0]["token_id"]
    assert made["expires_at"] == now + 86400
    assert await whoami(running, old) == 401
    assert (await running.client(token=old).get("/api/v1/operators/me")).status_code == 401
    assert (await running.client(token=new).get("/api/v1/operators/me")).status_code == 200
    states = {
        t["token_id"]: (t["state"], t["current"])
        for t in (await running.client(token=new).get("/api/v1/tokens")).json()["tokens"]
    }
    assert states == {listed[0]["token_id"]: ("revoked", False), made["token_id"]: ("live", True)}
    # Revoking the last live token of one's own account would lock it out: rotate instead.
    response = await running.client(token=new).delete(f"/api/v1/tokens/{made['token_id']}")
    assert response.status_code == 409
    assert await whoami(running, new) == 200


async def test_accounts_see_and_revoke_only_their_own_tokens(running: RunningRegistry) -> None:
    alice = await running.operator("alice")
    bob = await running.operator("bob")
    bob_ids = [
        t["token_id"]
        for t in (await running.client(token=bob).get("/api/v1/tokens")).json()["tokens"]
    ]
    alice_view = (await running.client(token=alice).get("/api/v1/tokens")).json()["tokens"]
    assert {t["owner"] for t in alice_view} == {"alice"}
    for token_id in [*bob_ids, 2**31 - 1]:
        response = await running.client(token=alice).delete(f"/api/v1/tokens/{token_id}")
        assert response.status_code == 404
    assert await whoami(running, bob) == 200
    # The admin's list holds the admin's tokens only; operators' are managed by the CLI.
    admin_view = (await running.client(token=running.admin_token).get("/api/v1/tokens")).json()
    assert {t["role"] for t in admin_view["tokens"]} == {"admin"}


async def test_an_account_with_two_tokens_revokes_one(running: RunningRegistry) -> None:
    alice = await running.operator("alice")
    second = (await running.client(token=alice).post("/api/v1/tokens/rotate")).json()["token"]
    # Rotation revoked the first; make a second live one through the admin's repository.
    from resistance.registry import repositories as repo
    from resistance.registry.tokens import new_token, token_hash

    third = new_token()
    async with running.registry.sessions.begin() as session:
        operator = await repo.operator_by_name(session, name="alice")
        assert operator is not None
        row = await repo.add_token(
            session, role="operator", operator_id=operator.id, token_hash=token_hash(third),
            now=running.registry.now(),
        )  # fmt: skip
        third_id = row.id
    response = await running.client(token=second).delete(f"/api/v1/tokens/{third_id}")
    assert response.status_code == 204
    assert await whoami(running, third) == 401
    assert await whoami(running, second) == 200


async def test_expired_tokens_are_refused(running: RunningRegistry) -> None:
    alice = await running.operator("alice")
    start = running.registry.now()
    running.registry.clock = lambda: start  # a second ticking over mid-test moved expiry
    made = (
        await running.client(token=alice).post("/api/v1/tokens/rotate", json={"expires_in": 3600})
    ).json()
    assert made["expires_at"] == start + 3600
    running.registry.clock = lambda: start + 3599
    assert await whoami(running, made["token"]) == 200
    running.registry.clock = lambda: start + 3600
    assert await whoami(running, made["token"]) == 401
    assert (
        await running.client(token=made["token"]).post("/api/v1/tokens/rotate")
    ).status_code == 401


async def test_rotation_bounds(running: RunningRegistry) -> None:
    alice = await running.operator("alice")
    for bad in (
        {"expires_in": 59},
        {"expires_in": MAX_LIFETIME + 1},
        {"expires_in": "1d"},
        {"x": 1},
    ):
        response = await running.client(token=alice).post("/api/v1/tokens/rotate", json=bad)
        assert response.status_code == 422, bad
    assert await whoami(running, alice) == 200


async def test_probe_token_is_rotated_and_the_leaked_one_gets_no_assignment(
    running: RunningRegistry, tmp_path: Path
) -> None:
    key = load_or_create_probe_key(tmp_path / "probe")
    response = await running.client(token=running.admin_token).post(
        "/api/v1/probes",
        json={"name": "msk-1", "country": "RU", "control": False,
              "public_key": public_key_text(key.public_key())},
    )  # fmt: skip
    leaked = response.json()["token"]
    assert (await running.client(token=leaked).get("/api/v1/probe/assignment")).status_code == 200
    fresh = (await running.client(token=leaked).post("/api/v1/tokens/rotate")).json()["token"]
    assert (await running.client(token=leaked).get("/api/v1/probe/assignment")).status_code == 401
    assert (await running.client(token=fresh).get("/api/v1/probe/assignment")).status_code == 200


async def test_no_new_token_in_the_logs(
    running: RunningRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await running.operator("alice")
    with caplog.at_level(logging.DEBUG):
        made = (await running.client(token=alice).post("/api/v1/tokens/rotate")).json()
        await whoami(running, made["token"])
    assert made["token"] not in caplog.text
    assert alice not in caplog.text


# --- every process on the database ----------------------------------------------------


async def test_two_registries_on_one_database_refuse_a_rotated_admin_token_at_once(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "a", db_url) as a:
        # Registries on one database sign with the same keys (README: "When the
        # registry outgrows one machine"); one with keys of its own is refused.
        copy_keys(tmp_path / "a", tmp_path / "b")
        async with start_registry(tmp_path / "b", db_url) as b:
            await _rotations_through_either(a, b)


async def _rotations_through_either(a: RunningRegistry, b: RunningRegistry) -> None:
    admin = a.admin_token
    assert admin and not b.admin_token  # made once, by the first to start
    assert await whoami(b, admin) == 200
    alice = await a.operator("alice")
    assert await whoami(b, alice) == 200
    rotated = (await a.client(token=admin).post("/api/v1/tokens/rotate")).json()["token"]
    assert await whoami(b, admin) == 401
    assert await whoami(b, rotated) == 200
    # An operator's rotation through B is refused by A on its next request.
    fresh = (await b.client(token=alice).post("/api/v1/tokens/rotate")).json()["token"]
    assert await whoami(a, alice) == 401
    assert await whoami(a, fresh) == 200


def resist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resistance", "registry", "token", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_command_line_on_the_database_while_the_registry_serves(
    tmp_path: Path, db_url: str
) -> None:
    async with start_registry(tmp_path / "a", db_url) as reg:
        admin = reg.admin_token
        alice = await reg.operator("alice")
        db = ["--db", db_url]
        listed = await asyncio.to_thread(resist, "list", *db)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["ID", "ROLE", "OWNER", "CREATED", "EXPIRES", "STATE"]
        rows = [line.split() for line in lines[1:]]
        assert [(r[1], r[2], r[-1]) for r in rows] == [
            ("admin", "-", "live"),
            ("operator", "alice", "live"),
        ]
        admin_id, alice_id = rows[0][0], rows[1][0]
        # Nothing secret is printed: no token, no digest.
        assert admin not in listed.stdout and alice not in listed.stdout
        from resistance.registry.tokens import token_hash

        assert token_hash(admin) not in listed.stdout
        # The admin's last token can only be rotated.
        refused = await asyncio.to_thread(resist, "revoke", admin_id, *db)
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1 and "last live token" in refused.stderr
        assert await whoami(reg, admin) == 200
        rotated = await asyncio.to_thread(resist, "rotate", admin_id, "--expires", "30d", *db)
        assert rotated.returncode == 0, rotated.stderr
        new_admin = rotated.stdout.split("keep it): ")[1].strip()
        assert await whoami(reg, admin) == 401
        assert await whoami(reg, new_admin) == 200
        assert "expires 20" in rotated.stdout
        # A leaked operator token, revoked by the registry's owner.
        revoked = await asyncio.to_thread(resist, "revoke", alice_id, *db)
        assert revoked.returncode == 0, revoked.stderr
        assert await whoami(reg, alice) == 401
        again = await asyncio.to_thread(resist, "revoke", alice_id, *db)
        assert again.returncode == 2 and "already revoked" in again.stderr
        # Expiry set from the command line.
        new_id = rotated.stdout.split("token is now ")[1].split(",")[0]
        expiring = await asyncio.to_thread(resist, "expire", new_id, "1s", *db)
        assert expiring.returncode == 0, expiring.stderr
        start = reg.registry.now()
        reg.registry.clock = lambda: start + 5
        assert await whoami(reg, new_admin) == 401
        bad = await asyncio.to_thread(resist, "expire", new_id, "soon", *db)
        assert bad.returncode == 2


def test_two_serve_processes_on_one_database(tmp_path: Path, db_url: str) -> None:
    """Real `resist registry serve` processes: a rotation through one is refused by the other."""
    from tests.registry.test_serve import serve_process

    with contextlib.ExitStack() as stack:
        a, admin = stack.enter_context(serve_process(tmp_path / "a", db_url))
        copy_keys(tmp_path / "a", tmp_path / "b")  # the same keys, as on every machine
        b, second_token = stack.enter_context(serve_process(tmp_path / "b", db_url, first=False))
        assert admin is not None and second_token is None

        def get(url: str, token: str) -> int:
            auth = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{url}/api/v1/tokens", headers=auth, timeout=10).status_code

        assert get(b, admin) == 200
        rotated = httpx.post(
            f"{a}/api/v1/tokens/rotate",
            headers={"Authorization": f"Bearer {admin}"},
            json={"expires_in": 3600},
            timeout=10,
        )
        assert rotated.status_code == 201, rotated.text
        new = rotated.json()["token"]
        assert get(b, admin) == 401 and get(a, admin) == 401
        assert get(b, new) == 200
        listed = httpx.get(
            f"{b}/api/v1/tokens", headers={"Authorization": f"Bearer {new}"}, timeout=10
        ).json()["tokens"]
        assert [(t["state"], t["current"]) for t in listed] == [
            ("revoked", False),
            ("live", True),
        ]
