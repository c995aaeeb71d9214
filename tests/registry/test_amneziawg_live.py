"""A real AmneziaWG server (wireguard-go behind `resist vpn serve`'s translator), registered
with a live registry and measured by a live probe agent.

As test_wireguard_live.py, with a server made by ``resist vpn init --amnezia``:
one namespace made here holds it, joined to this one by a veth pair; the
registry runs under uvicorn on loopback and the agent as a ``resist probe
run`` process.  ``resist vpn register`` registers both endpoints; the agent
gets the AmneziaWG one with its parameters and finds it functional.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.probe.live import sqlite_rows, start_agent, wait_for
from tests.registry.test_wireguard_live import ROOT, Live, _prober_key, live_world

missing = [t for t in ("ip", "wg", "wireguard-go", "nft") if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(bool(missing), reason=f"missing {', '.join(missing)}"),
]

TAG = f"{os.getpid() % 100000}"
WG_PORT = 51831
AWG_PORT = 51832
SERVER_IP = "198.18.6.2"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    init = ("--amnezia", "--amnezia-port", str(AWG_PORT))
    tmp = tmp_path_factory.mktemp("awg-live")
    with live_world(tmp, prefix="al", net="198.18.6", port=WG_PORT, init=init) as world:
        serve = subprocess.Popen(
            [sys.executable, "-m", "resistance", "vpn", "serve", "--interval", "5",
             "--state-dir", str(world.vpn_state)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            lines = [serve.stdout.readline() for _ in range(2)]
            assert any("AmneziaWG server translator on" in line for line in lines), lines
            yield world
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                serve.kill()


def test_register_proves_both_endpoints_and_the_agent_measures_amneziawg(live: Live) -> None:
    state = live.tmp / "probe-nl"
    token = live.registry.add_probe(state, "ams-1", "NL", control=True)
    live.agent = start_agent(live.registry, token, state, "ams-1", "NL")
    wait_for(lambda: len(_prober_key(live)["probe_keys"]) == 1, 20, "the agent's WireGuard key")
    done = live.register()
    assert done.returncode == 0, done.stderr
    assert f"registered WireGuard endpoint {SERVER_IP}:{WG_PORT} as proxy" in done.stdout
    found = re.search(rf"registered AmneziaWG endpoint {SERVER_IP}:{AWG_PORT} as proxy (\d+)",
                      done.stdout)  # fmt: skip
    assert found, done.stdout
    live.proxy_id = int(found[1])
    rows = sqlite_rows(live.db, f"SELECT protocols FROM proxies WHERE id = {live.proxy_id}")
    assert rows == [('["amneziawg"]',)]
    wait_for(lambda: live.status() == "functional", 45, "the AmneziaWG proxy functional")
    ((attempts, successes),) = sqlite_rows(
        live.db,
        f"SELECT attempts, successes FROM probe_rollups WHERE proxy_id = {live.proxy_id}",
    )
    assert successes >= 1
    # (plain WireGuard at the AmneziaWG port hears silence: functional means the agent
    # spoke AmneziaWG with the parameters from its assignment)
    assert attempts >= successes
