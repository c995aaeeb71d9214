"""Issue 25: several `resist registry serve` processes on one PostgreSQL database.

Two real processes, each with its own state directory holding copies of the
same keys (as two machines behind a load balancer would), and one process
with ``--workers 2``: what one process writes the other sees at once, a
token revoked or rotated through one is refused by the other, each
directory serial is signed by one process, and rate limits count requests
through both together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from resistance.registry.db import make_engine, make_sessions
from resistance.registry.models import Publication
from resistance.registry.ratelimit import DatabaseLimiter, buckets_engine, prune_buckets
from resistance.registry.settings import RateLimit
from tests.registry.conftest import PG_URL, _pg_admin
from tests.registry.test_serve import resist, serve_process

SERIAL = re.compile(r"published directory serial (\d+)")


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"resist_mp_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield PG_URL.format(name=name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def copy_keys(source: Path, target: Path) -> None:
    """What README says to copy to every machine: the state directory's keys."""
    target.mkdir(mode=0o700)
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        elif item.suffix in (".key", ".pem"):
            shutil.copy2(item, target / item.name)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_two_processes_share_one_database(tmp_path: Path, pg_url: str, node_factory: Any) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    every_second = ("--publish-interval", "1", "-v")
    with serve_process(first, pg_url, *every_second, stderr=logs[0]) as (url_a, admin):
        assert admin is not None
        copy_keys(first, second)
        with serve_process(second, pg_url, *every_second, stderr=logs[1], first=False) as (
            url_b,
            none,
        ):
            assert none is None  # one admin token for the database, made by the first
            keys_a = httpx.get(f"{url_a}/api/v1/directory/keys", timeout=10).json()
            assert httpx.get(f"{url_b}/api/v1/directory/keys", timeout=10).json() == keys_a

            # An operator made through one is there through the other, with its token.
            made = resist("registry", "operator", "create", "alice", "--registry", url_a)
            assert made.returncode == 0, made.stderr
            found = re.search(r"\(shown once, keep it\): (rst_\S+)", made.stdout)
            assert found is not None
            alice = found.group(1)
            listed = resist("registry", "operator", "list", "--registry", url_b, "--token", admin)
            assert "alice: 0 proxies" in listed.stdout, listed.stderr
            me = httpx.get(f"{url_b}/api/v1/operators/me", headers=bearer(alice), timeout=10)
            assert me.status_code == 200 and me.json()["name"] == "alice"
            # Rate limits count both processes together: 5 sign-ups a network
            # (alice's was the first), then 429.
            codes = [
                httpx.post(
                    f"{(url_a, url_b)[i % 2]}/api/v1/operators", json={"name": f"op{i}"}, timeout=10
                ).status_code
                for i in range(6)
            ]
            assert codes == [201] * 4 + [429] * 2

            # Its proxy, registered through the second, is in a directory the first signs.
            node_state = tmp_path / "node"
            node = node_factory("--user", "alice:secret", state_dir=node_state)
            registered = resist(
                "registry", "register-node", "--registry", url_b, "--token", alice,
                "--public-host", "127.0.0.1", "--port", str(node.port), "--public",
                "--state-dir", str(node_state), "--user", "alice:secret",
            )  # fmt: skip
            assert registered.returncode == 0, registered.stderr
            published = httpx.post(
                f"{url_a}/api/v1/directory/publish", headers=bearer(admin), timeout=10
            )
            assert published.status_code == 200 and published.json()["proxies"] == 1

            # A token rotated through one is refused by the other from the next request.
            rotated = httpx.post(f"{url_a}/api/v1/tokens/rotate", headers=bearer(alice), timeout=10)
            assert rotated.status_code == 201
            new_alice = rotated.json()["token"]
            for url in (url_b, url_a):
                old = httpx.get(f"{url}/api/v1/operators/me", headers=bearer(alice), timeout=10)
                assert old.status_code == 401
                new = httpx.get(f"{url}/api/v1/operators/me", headers=bearer(new_alice), timeout=10)
                assert new.status_code == 200
            # ... and so is a revoked one, and the admin's own rotated token.
            extra = httpx.post(
                f"{url_b}/api/v1/operators/alice/tokens", headers=bearer(admin), timeout=10
            )
            assert extra.status_code in (200, 201), extra.text
            extra_token = extra.json()["token"]
            mine = httpx.get(f"{url_a}/api/v1/tokens", headers=bearer(extra_token), timeout=10)
            extra_id = next(t["token_id"] for t in mine.json()["tokens"] if t["current"])
            gone = httpx.delete(
                f"{url_b}/api/v1/tokens/{extra_id}", headers=bearer(new_alice), timeout=10
            )
            assert gone.status_code == 204
            refused = httpx.get(f"{url_a}/api/v1/operators/me", headers=bearer(extra_token))
            assert refused.status_code == 401
            admin_rotated = httpx.post(
                f"{url_b}/api/v1/tokens/rotate", headers=bearer(admin), timeout=10
            )
            assert admin_rotated.status_code == 201
            new_admin = admin_rotated.json()["token"]
            assert httpx.get(f"{url_a}/api/v1/operators", headers=bearer(admin)).status_code == 401
            assert (
                httpx.get(f"{url_a}/api/v1/operators", headers=bearer(new_admin)).status_code == 200
            )

            # Publications asked of both at once: each gets its own serial.
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(
                    pool.map(
                        lambda i: httpx.post(
                            f"{(url_a, url_b)[i % 2]}/api/v1/directory/publish",
                            headers=bearer(new_admin),
                            timeout=30,
                        ),
                        range(6),
                    )
                )
            assert [a.status_code for a in answers] == [200] * 6
            asked = [a.json()["serial"] for a in answers]
            assert len(set(asked)) == 6
            # Let the periodic publication run a few times in both.
            _wait_for_serials(logs, count=_signed(logs) + 3)
            written_b = json.loads((second / "directory.json").read_text())["document"]["serial"]

    serials = [[int(s) for s in SERIAL.findall(log.read_text())] for log in logs]
    assert not set(serials[0]) & set(serials[1]), "a serial was signed by both processes"
    assert all(serials), "both processes signed some directories"
    assert "Traceback" not in logs[0].read_text() + logs[1].read_text()
    stored = asyncio.run(_publications(pg_url))
    assert sorted(serials[0] + serials[1]) == [serial for serial, _at in stored]
    manual = {*asked, published.json()["serial"]}
    periodic = [at for serial, at in stored if serial not in manual]
    # Periodic publications of both together: each is due a second after the last
    # one either process made, so never two in one second (not one per process).
    assert len(periodic) >= 4
    assert all(later - earlier >= 1 for earlier, later in itertools.pairwise(periodic)), stored
    # The second's directory.json followed publications the first made.
    assert written_b >= max(asked)


def _signed(logs: list[Path]) -> int:
    return sum(len(SERIAL.findall(log.read_text())) for log in logs)


def _wait_for_serials(logs: list[Path], *, count: int) -> None:
    for _ in range(600):
        if _signed(logs) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the processes stopped publishing")


async def _publications(url: str) -> list[tuple[int, int]]:
    """Every publication stored: (serial, published_at), by serial."""
    engine = make_engine(url)
    try:
        async with make_sessions(engine)() as session:
            rows = await session.execute(
                select(Publication.serial, Publication.published_at).order_by(Publication.serial)
            )
            return [(serial, at) for serial, at in rows]
    finally:
        await engine.dispose()


def test_workers_share_a_socket_and_stop_together(tmp_path: Path, pg_url: str) -> None:
    out, log = tmp_path / "serve.out", tmp_path / "serve.log"
    with _serving(tmp_path / "reg", pg_url, out, log, "--workers", "2") as proc:
        url = _healthy(proc, out)
        workers = _children(proc.pid)
        assert len(workers) == 2
        for _ in range(20):
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    # The admin token is printed once, by the one worker that made it.
    assert len(re.findall(r"admin token \(shown once, keep it\): rst_", out.read_text())) == 1
    text = log.read_text()
    assert text.count("Application shutdown complete") == 2 and "Traceback" not in text
    assert text.count("published directory serial") == 1  # the start-up one, by one worker


def test_a_machine_without_the_keys_is_refused(tmp_path: Path, pg_url: str) -> None:
    """A second machine started with an empty state directory would sign with a key
    of its own, which clients pinned to the first's refuse: it does not start."""
    with serve_process(tmp_path / "a", pg_url) as (_url, admin):
        assert admin is not None
        result = subprocess.run(
            [
                sys.executable, "-m", "resistance", "registry", "serve", "--listen",
                "127.0.0.1:0", "--state-dir", str(tmp_path / "b"), "--db", pg_url,
                "--network", "regtest", "--publish-interval", "0",
            ],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode != 0
    assert "signing keys did not sign the current directory" in result.stderr
    assert "copy registry-keys/" in result.stderr


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "resistance", "registry", "serve", "--listen", "127.0.0.1:0",
            "--state-dir", str(tmp_path), "--workers", "2",
        ],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "needs PostgreSQL" in result.stderr
    assert not (tmp_path / "registry.sqlite3").exists()


def test_shared_buckets_refill_and_are_pruned(pg_url: str) -> None:
    async def run() -> None:
        engine = buckets_engine(pg_url)
        try:
            one = DatabaseLimiter(engine, "t", RateLimit(per_second=1.0, burst=2))
            other = DatabaseLimiter(engine, "t", RateLimit(per_second=1.0, burst=2))
            assert await one.allow("n", 100.0) == 0.0
            assert await other.allow("n", 100.0) == 0.0
            assert await one.allow("n", 100.5) == pytest.approx(0.5)
            assert await other.allow("m", 100.5) == 0.0  # another network: its own bucket
            assert await other.allow("n", 101.0) == 0.0  # refilled one token in a second
            assert await one.allow("n", 99.0) == pytest.approx(1.0)  # an earlier clock: no refill
            assert await prune_buckets(engine, now=101.4) == 0
            assert await prune_buckets(engine, now=101.6) == 1  # "m" is full again
            assert await prune_buckets(engine, now=103.1) == 1
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_processes_starting_together_migrate_once(tmp_path: Path, pg_template: str) -> None:
    """Two processes on a database never migrated: one migrates, makes the admin
    token and publishes; the other waits for it and finds all three done."""
    name = f"resist_mp_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    url = PG_URL.format(name=name)
    state = tmp_path / "reg"  # one machine: both use the same state directory and keys
    outs = [tmp_path / f"{i}.out" for i in range(2)]
    logs = [tmp_path / f"{i}.log" for i in range(2)]
    try:
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(_serving(state, url, outs[i], logs[i])) for i in range(2)]
            for proc, out in zip(procs, outs, strict=True):
                _healthy(proc, out)
        printed = "".join(out.read_text() for out in outs)
        assert len(re.findall(r"admin token \(shown once, keep it\): rst_", printed)) == 1
        text = "".join(log.read_text() for log in logs)
        assert text.count("published directory serial") == 1
        assert text.count("Application startup complete") == 2 and "Traceback" not in text
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def _serving(
    state: Path, url: str, out: Path, log: Path, *extra: str
) -> Iterator[subprocess.Popen[str]]:
    cmd = [
        sys.executable, "-m", "resistance", "registry", "serve", "--listen", "127.0.0.1:0",
        "--state-dir", str(state), "--db", url, "--network", "regtest",
        "--publish-interval", "0", "-v", *extra,
    ]  # fmt: skip
    with out.open("w") as stdout, log.open("w") as stderr:
        proc = subprocess.Popen(
            cmd, stdout=stdout, stderr=stderr, text=True, stdin=subprocess.DEVNULL
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _healthy(proc: subprocess.Popen[str], out: Path) -> str:
    """The URL of a started registry, once it answers (its start may wait for another's)."""
    for _ in range(1200):
        if proc.poll() is not None:
            logs = [out, *out.parent.glob("*.log")]
            said = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"the registry stopped ({proc.returncode}):\n{said}")
        found = re.search(r"registry listening on (http://\S+)", out.read_text())
        if found:
            try:
                if httpx.get(f"{found.group(1)}/healthz", timeout=2).status_code == 200:
                    return found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    raise AssertionError("the registry did not start")
