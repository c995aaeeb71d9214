"""A real wireguard-go server registered with a live registry and checked by a live probe agent.

One network namespace made here holds the server (``resist vpn init
--netns``), joined to this namespace by a veth pair (198.18.4.1 here,
198.18.4.2 there); the registry runs under uvicorn on loopback and the
agent as a ``resist probe run`` process.  Nothing leaves loopback or the
namespace.

The tests share that world (made once, in the module fixture ``live``) but
not an order: each asks for the state it checks.  ``announced`` starts the
agent and waits for its key, ``registered`` registers the server once (after
the announcement, so the registry hands out the agent's key), and ``serving``
and ``stopped`` bring the VPN up or take it down before a test, whatever ran
before it.  Any one test runs alone, and the file runs in any order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from resistance.vpn import keys
from tests.probe.live import AgentProcess, RegistryServer, sqlite_rows, start_agent, wait_for
from tests.vpn.test_tunnel import kill_wireguard_go

ROOT = Path(__file__).resolve().parents[2]
missing = [t for t in ("ip", "wg", "wireguard-go", "nft") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(missing), reason=f"missing {', '.join(missing)}"),
]

TAG = f"{os.getpid() % 100000}"
WG_PORT = 51821
SERVER_IP = "198.18.4.2"


@dataclass
class Live:
    tmp: Path
    vpn_state: Path
    registry: RegistryServer
    db: Path
    token: str  # the operator's
    agent: AgentProcess | None = None
    proxy_id: int = 0
    probe_wg_key: str = ""
    running: bool = True
    """Whether the VPN is up (``init`` brings it up; tests take it down)."""

    def vpn(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "resistance",
            "vpn",
            *args,
            "--state-dir",
            str(self.vpn_state),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT)

    def register(self) -> subprocess.CompletedProcess[str]:
        return self.vpn("register", "--registry", self.registry.url, "--token", self.token)

    def status(self) -> str:
        return str(self.registry.status(self.proxy_id)["status"])

    def bring_up(self) -> None:
        if not self.running:
            up = self.vpn("up")
            assert up.returncode == 0, up.stderr
            self.running = True

    def take_down(self) -> None:
        if self.running:
            down = self.vpn("down")
            assert down.returncode == 0, down.stderr
            self.running = False


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextmanager
def live_world(
    tmp: Path, *, prefix: str, net: str, port: int, init: tuple[str, ...] = ()
) -> Iterator[Live]:
    """A namespace with ``resist vpn init`` (``init``: more options) at NET.2, this side
    at NET.1 over a veth pair, and a registry on loopback; removed afterwards."""
    ns, here, there, interface = (
        f"resist-{prefix}-{TAG}",
        f"r{prefix}h{TAG}",
        f"r{prefix}s{TAG}",
        f"r{prefix}{TAG}",
    )
    made_ns = False
    registry: RegistryServer | None = None
    state = tmp / "vpn"
    world: Live | None = None
    try:
        _run("ip", "netns", "add", ns)
        made_ns = True
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", ns)
        _run("ip", "address", "add", f"{net}.1/30", "dev", here)
        _run("ip", "link", "set", here, "up")
        _run("ip", "-n", ns, "address", "add", f"{net}.2/30", "dev", there)
        _run("ip", "-n", ns, "link", "set", there, "up")
        db = tmp / "registry.sqlite3"
        registry = RegistryServer(
            tmp / "registry", f"sqlite+aiosqlite:///{db}", challenge_timeout=2.0
        )
        registry.start()
        signup = httpx.post(f"{registry.url}/api/v1/operators", json={"name": "wg"}, timeout=10)
        world = Live(tmp, state, registry, db, signup.json()["token"])
        done = world.vpn(
            "init", "--endpoint", f"{net}.2:{port}", "--interface", interface, "--netns", ns,
            *init,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield world
    finally:
        if world is not None and world.agent is not None:
            world.agent.stop()
        if (state / "vpn" / "server.json").exists():
            subprocess.run(
                [sys.executable, "-m", "resistance", "vpn", "down", "--state-dir", str(state)],
                capture_output=True,
                timeout=60,
                cwd=ROOT,
            )
        kill_wireguard_go(interface)
        if registry is not None:
            registry.stop()
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)
        if made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("wg-live")
    with live_world(tmp, prefix="wl", net="198.18.4", port=WG_PORT) as world:
        yield world


@pytest.fixture
def serving(live: Live) -> Live:
    """The VPN up: brought up again if a test before took it down."""
    live.bring_up()
    return live


@pytest.fixture
def stopped(live: Live) -> Live:
    """The VPN down."""
    live.take_down()
    return live


@pytest.fixture(scope="module")
def announced(live: Live) -> str:
    """A probe agent running (NL, control) whose WireGuard key the registry announces."""
    state = live.tmp / "probe-nl"
    token = live.registry.add_probe(state, "ams-1", "NL", control=True)
    out = subprocess.run(
        [sys.executable, "-m", "resistance", "probe", "wg-key", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    wg_key = out.stdout.strip()
    keys.decode(wg_key)
    live.probe_wg_key = wg_key
    live.agent = start_agent(live.registry, token, state, "ams-1", "NL")

    def announced() -> bool:
        return wg_key in _prober_key(live)["probe_keys"]

    wait_for(announced, 20, "the agent's WireGuard key")
    return wg_key


@dataclass(frozen=True)
class Registered:
    proxy_id: int
    first: subprocess.CompletedProcess[str]
    """What the first `resist vpn register` said."""


@pytest.fixture(scope="module")
def registered(live: Live, announced: str) -> Registered:
    """The server registered once, while up, after the agent announced its key."""
    live.bring_up()
    done = live.register()
    assert done.returncode == 0, done.stderr
    live.proxy_id = int(done.stdout.split("as proxy ")[1].split()[0])
    return Registered(live.proxy_id, done)


def _prober_key(live: Live) -> dict[str, Any]:
    response = httpx.get(f"{live.registry.url}/api/v1/wireguard/prober-key", timeout=10)
    body: dict[str, Any] = response.json()
    return body


def test_a_probe_agent_announces_its_wireguard_key(live: Live, announced: str) -> None:
    assert announced in _prober_key(live)["probe_keys"]
    assert live.agent is not None and live.agent.proc.poll() is None


def test_wrong_server_key_is_refused_and_nothing_is_stored(serving: Live) -> None:
    live = serving
    before = sqlite_rows(live.db, "SELECT id, verified_at FROM proxies")
    # The registry's prober must be a peer, or no key could get an answer: registering
    # adds it; before that (or when this test runs alone) it is added by hand.
    added = live.vpn("add-probe", _prober_key(live)["public_key"], "--name", "registry-by-hand")
    by_hand = added.returncode == 0
    assert by_hand or "already has that name or key" in added.stderr, added.stderr
    response = httpx.post(
        f"{live.registry.url}/api/v1/wireguard/endpoints",
        json={
            "endpoint": {"host": SERVER_IP, "port": WG_PORT},
            "public_key": keys.KeyPair.generate().public_text,
        },
        headers={"Authorization": f"Bearer {live.token}"},
        timeout=30,
    )
    assert response.status_code == 422
    assert "no WireGuard handshake response" in response.json()["error"]
    assert sqlite_rows(live.db, "SELECT id, verified_at FROM proxies") == before
    if by_hand:
        assert live.vpn("remove", "registry-by-hand").returncode == 0


def test_register_adds_the_probers_and_the_registry_proves_the_key(
    serving: Live, registered: Registered
) -> None:
    live, done = serving, registered.first
    assert "added probe peers: registry-" in done.stdout and "probe-" in done.stdout
    assert f"registered WireGuard endpoint {SERVER_IP}:{WG_PORT} as proxy" in done.stdout
    assert "1 probe(s) will check it" in done.stdout
    ((protocols, wg_key, probe_keys),) = sqlite_rows(
        live.db, "SELECT protocols, wg_public_key, wg_probe_keys FROM proxies"
    )
    assert protocols == '["wireguard"]'
    server_key = (live.vpn_state / "vpn" / "server.key").read_text().strip()
    assert wg_key == keys.encode(keys.public_from_private(keys.decode(server_key)))
    assert json.loads(probe_keys) == [live.probe_wg_key]
    listing = live.vpn("list").stdout
    assert "probes (handshake only)" in listing and "registry-" in listing
    again = live.register()  # idempotent: nothing new to add, same proxy
    assert again.returncode == 0 and "added probe peers" not in again.stdout
    assert f"as proxy {registered.proxy_id} " in again.stdout


def test_the_agent_measures_it_up_then_down(serving: Live, registered: Registered) -> None:
    live = serving
    wait_for(lambda: live.status() == "functional", 30, "functional")
    rows = sqlite_rows(
        live.db,
        f"SELECT attempts, successes, latency_p50_ms FROM probe_rollups "
        f"WHERE proxy_id = {live.proxy_id} AND country = 'NL'",
    )
    assert rows and rows[0][1] >= 1 and rows[0][2] is not None
    live.take_down()
    wait_for(lambda: live.status() == "down", 30, "down")
    ((attempts, successes),) = sqlite_rows(
        live.db,
        f"SELECT attempts, successes FROM probe_rollups WHERE proxy_id = {live.proxy_id}",
    )
    assert attempts > successes >= 1
    failures = sqlite_rows(live.db, "SELECT DISTINCT step, failure FROM probe_results WHERE ok = 0")
    assert set(failures) <= {("handshake", "refused"), ("handshake", "timeout")}
    assert live.agent is not None
    log = live.agent.log()
    assert f"WireGuard key {live.probe_wg_key} announced" in log
    private = (live.tmp / "probe-nl" / "wireguard.key").read_text().strip()
    assert private not in log


def test_a_stopped_server_is_refused(stopped: Live, registered: Registered) -> None:
    live = stopped
    refused = live.register()
    assert refused.returncode == 2, refused.stdout
    assert "the VPN is down" in refused.stderr
    # Asked directly, the registry hears nothing and stores nothing new.
    before = sqlite_rows(live.db, "SELECT verified_at FROM proxies")
    server_key = (live.vpn_state / "vpn" / "server.key").read_text().strip()
    response = httpx.post(
        f"{live.registry.url}/api/v1/wireguard/endpoints",
        json={
            "endpoint": {"host": SERVER_IP, "port": WG_PORT},
            "public_key": keys.encode(keys.public_from_private(keys.decode(server_key))),
        },
        headers={"Authorization": f"Bearer {live.token}"},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("proof of control failed")
    assert sqlite_rows(live.db, "SELECT verified_at FROM proxies") == before
