"""Real agents against live nodes and a live registry on loopback.

Each scenario starts the registry (with its canary) under uvicorn, one or
more `resist node` processes, and `resist probe run` agents as processes: a
control vantage ("NL", connecting from 127.0.0.1) and censored vantages
("RU", connecting from 127.0.0.2 and 127.0.0.3).  See :mod:`tests.probe.live`
for how the censor is made without leaving loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from resistance.config import Endpoint
from resistance.registry.canary import CanaryServer, load_or_create_canary_key
from tests.probe.live import (
    Censor,
    RegistryServer,
    agents,
    sqlite_rows,
    start_agent,
    wait_for,
)

NODE_ARGS = ("--user", "alice:secret", "--allow", "127.0.0.0/8")


def sqlite_url(tmp_path: Path) -> tuple[str, Path]:
    db = tmp_path / "registry.sqlite3"
    return f"sqlite+aiosqlite:///{db}", db


def status_is(registry: RegistryServer, proxy_id: int, wanted: str) -> bool:
    return registry.status(proxy_id)["status"] == wanted


def test_working_proxy_is_functional_and_a_stopped_one_goes_down(
    tmp_path: Path, node_factory: Any
) -> None:
    url, _ = sqlite_url(tmp_path)
    registry = RegistryServer(tmp_path / "registry", url)
    registry.start()
    node_state = tmp_path / "node"
    node = node_factory(*NODE_ARGS, state_dir=node_state)
    proxy_id = registry.register(node_state, node.port)
    token = registry.add_probe(tmp_path / "p-nl", "ams-1", "NL", control=True)
    try:
        with agents() as running:
            running.append(start_agent(registry, token, tmp_path / "p-nl", "ams-1", "NL"))
            wait_for(lambda: status_is(registry, proxy_id, "functional"), 20, "functional")
            published = registry.api("POST", "/api/v1/directory/publish")
            assert published.status_code == 200
            doc = httpx.get(f"{registry.url}/api/v1/directory", timeout=10).json()["document"]
            (entry,) = doc["proxies"]
            assert entry["status"] == "functional"
            reach = entry["measurements"]["reachability"]["NL"]
            assert reach["successes"] >= 1 and reach["latency_p50_ms"] is not None
            assert reach["throughput_kbps"] is not None
            node.stop()
            wait_for(lambda: status_is(registry, proxy_id, "down"), 20, "down")
            history = [h["status"] for h in registry.status(proxy_id)["history"]]
            assert history == ["functional", "down"]
            assert running[0].stop() == 0
    finally:
        registry.stop()


def test_proxy_unreachable_only_from_the_censored_country_becomes_blocked(
    tmp_path: Path, node_factory: Any
) -> None:
    url, db = sqlite_url(tmp_path)
    registry = RegistryServer(tmp_path / "registry", url)
    registry.start()
    node_state = tmp_path / "node"
    node = node_factory(*NODE_ARGS, state_dir=node_state)
    censor = Censor(node.port, blocked={"127.0.0.2", "127.0.0.3"})
    proxy_id = registry.register(node_state, censor.port)
    vantages = [
        ("ams-1", "NL", True, None),
        ("msk-1", "RU", False, "127.0.0.2"),
        ("spb-1", "RU", False, "127.0.0.3"),
    ]
    try:
        with agents() as running:
            for name, country, control, source in vantages:
                state = tmp_path / f"p-{name}"
                token = registry.add_probe(state, name, country, control=control)
                running.append(start_agent(registry, token, state, name, country, source=source))
            found = wait_for(
                lambda: (s := registry.status(proxy_id))["status"] == "blocked" and s, 30, "blocked"
            )
            assert found["blocked_in"] == ["RU"]
            failures = sqlite_rows(
                db, "SELECT DISTINCT step, failure FROM probe_results WHERE country = 'RU'"
            )
            # the RST comes right after the handshake: seen at the greeting, or at connect()
            assert failures and set(failures) <= {("greeting", "reset"), ("tcp", "reset")}
            # The censor lifts the block: the proxy is functional again.
            censor.blocked.clear()
            wait_for(lambda: status_is(registry, proxy_id, "functional"), 20, "unblocked")
            history = [h["status"] for h in registry.status(proxy_id)["history"]]
            assert "blocked" in history and history[-1] == "functional"
    finally:
        censor.close()
        registry.stop()


def registry_node_and_control_probe(
    tmp_path: Path, node_factory: Any
) -> tuple[RegistryServer, Path, Path, str]:
    """A running registry with one registered live node and one control probe account."""
    url, db = sqlite_url(tmp_path)
    registry = RegistryServer(tmp_path / "registry", url)
    registry.start()
    node_state = tmp_path / "node"
    node = node_factory(*NODE_ARGS, state_dir=node_state)
    registry.register(node_state, node.port)
    state = tmp_path / "p-nl"
    token = registry.add_probe(state, "ams-1", "NL", control=True)
    return registry, db, state, token


@contextlib.contextmanager
def standalone_canary(registry: RegistryServer) -> Iterator[None]:
    """The registry's canary, with its key, on its port, without the rest of the registry."""
    key = load_or_create_canary_key(registry.settings.state_dir)
    loop = asyncio.new_event_loop()
    canary = CanaryServer(key)
    loop.run_until_complete(canary.start(Endpoint("127.0.0.1", registry.canary_port)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(canary.close())
        loop.close()


def test_a_silent_canary_skips_rounds_instead_of_blaming_proxies(
    tmp_path: Path, node_factory: Any
) -> None:
    registry, db, state, token = registry_node_and_control_probe(tmp_path, node_factory)
    try:
        with agents() as running:
            agent = start_agent(registry, token, state, "ams-1", "NL")
            running.append(agent)
            wait_for(lambda: len(agent.signed()) >= 1, 20, "a first batch")
            registry.stop()  # API and canary both gone
            wait_for(lambda: "round skipped" in agent.log(), 20, "a skipped round")
            assert agent.stop() == 0
    finally:
        registry.stop()
    failures = sqlite_rows(db, "SELECT COUNT(*) FROM probe_results WHERE ok = 0")
    assert failures == [(0,)]  # nothing was blamed on the proxy ...
    for path in (state / "spool").glob("*.json"):  # ... nor waits to be
        assert '"ok":false' not in path.read_text().replace(" ", ""), path


def test_batches_made_while_the_registry_is_down_arrive_once_after_restart(
    tmp_path: Path, node_factory: Any
) -> None:
    registry, db, state, token = registry_node_and_control_probe(tmp_path, node_factory)
    spool = state / "spool"
    made: set[str] = set()
    try:
        with agents() as running:
            first = start_agent(registry, token, state, "ams-1", "NL")
            running.append(first)
            wait_for(lambda: len(first.signed()) >= 2, 20, "first batches")
            registry.stop()
            # The API is down but the canary still answers (as a canary hosted apart
            # would): the agent keeps measuring from its saved assignment and spools.
            with standalone_canary(registry):
                wait_for(lambda: len(list(spool.glob("*.json"))) >= 3, 20, "spooled batches")
            assert first.stop() == 0  # SIGTERM while the registry is down
            made |= first.signed()
            waiting = {p.name.split("-", 1)[1][:32] for p in spool.glob("*.json")}
            assert waiting and waiting <= made
            registry.start()
            second = start_agent(registry, token, state, "ams-1", "NL")
            running.append(second)
            wait_for(lambda: len(second.signed()) >= 1, 20, "a batch after restart")
            assert second.stop() == 0
            made |= second.signed()
            wait_for(lambda: not list(spool.glob("*.json")), 10, "an empty spool")
    finally:
        registry.stop()
    stored = {row[0] for row in sqlite_rows(db, "SELECT batch_id FROM probe_batches")}
    assert stored == made, (len(stored), len(made))
    (count,) = sqlite_rows(db, "SELECT COUNT(*) FROM probe_batches")[0]
    assert count == len(made)
    (results, declared) = sqlite_rows(
        db,
        "SELECT (SELECT COUNT(*) FROM probe_results),"
        " (SELECT SUM(result_count) FROM probe_batches)",
    )[0]
    assert results == declared
    assert not list((spool / "rejected").iterdir())


def test_one_off_check_prints_each_step_and_the_verdict(tmp_path: Path, node_factory: Any) -> None:
    import subprocess
    import sys

    url, _ = sqlite_url(tmp_path)
    registry = RegistryServer(tmp_path / "registry", url)
    registry.start()
    node = node_factory(*NODE_ARGS, state_dir=tmp_path / "node")
    try:

        def check(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "resistance", "probe", "check", *args],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            )  # fmt: skip

        good = check(f"socks5://alice:secret@127.0.0.1:{node.port}", "--registry", registry.url)
        assert good.returncode == 0, good.stdout + good.stderr
        for step in ("tcp", "greeting", "auth", "connect", "canary", "transfer"):
            assert step in good.stdout
        assert "verdict: functional" in good.stdout
        wrong = check(f"socks5://alice:nope@127.0.0.1:{node.port}", "--registry", registry.url)
        assert wrong.returncode == 1 and "failed at auth: refused" in wrong.stdout
        node.stop()
        gone = check(f"socks5://alice:secret@127.0.0.1:{node.port}", "--registry", registry.url)
        assert gone.returncode == 1 and "failed at tcp: refused" in gone.stdout
        bad = check("http://nope", "--registry", registry.url)
        assert bad.returncode == 2 and bad.stderr.startswith("resist: error:")
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        registry.stop()


def test_every_probe_command_has_help_with_an_example() -> None:
    from click.testing import CliRunner

    from resistance.cli import main

    for args in (["probe"], ["probe", "run"], ["probe", "check"], ["probe", "key"],
                 ["registry", "add-probe"], ["registry", "import-blocklist"]):  # fmt: skip
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, args
