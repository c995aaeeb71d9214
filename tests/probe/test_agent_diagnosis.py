"""The agent's round over the network seam: a failed check's controls run, and the
signed batch it spools carries the diagnosis and the node's TLS reach."""

from __future__ import annotations

import socket
from pathlib import Path

from resistance.probe.agent import Agent, AgentSettings, parse_assignment
from resistance.probe.batch import parse_batch
from resistance.probe.runner import CheckSettings
from tests.probe.test_controls import World


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


async def test_a_round_signs_each_failures_mechanism(tmp_path: Path) -> None:
    tls_port = closed_port()
    net = World({
        "127.0.0.1:1080": "drop",  # an address block: no port of it answers
        f"127.0.0.1:{tls_port}": "drop",
        "127.0.0.2:1080": "silent",  # a greeting fingerprint rule on the path
        "127.0.0.3:1080": "silent",  # the control proxy: its greeting dies too
    })  # fmt: skip
    settings = AgentSettings(
        registry="http://127.0.0.1:9", token="t", vantage="msk-1", country="RU",
        state_dir=tmp_path, check=CheckSettings(step_timeout=0.1, transfer_timeout=0.1),
    )  # fmt: skip
    agent = Agent(settings, network=net)
    proxy = {"username": "probe", "password": "pw", "due_ms": 0, "outside_ok": True}
    assignment = parse_assignment({
        "vantage": "msk-1", "country": "RU", "round_seconds": 0, "canary": None,
        "control_proxy": {"host": "127.0.0.3", "port": 1080, "username": "probe",
                          "password": "pw"},
        "proxies": [
            {**proxy, "proxy_id": 1, "host": "127.0.0.1", "port": 1080,
             "control_ports": [tls_port]},
            {**proxy, "proxy_id": 2, "host": "127.0.0.2", "port": 1080, "control_ports": None},
        ],
    })  # fmt: skip
    try:
        stats = await agent.run_round(assignment)
        agent.flush()
    finally:
        await agent.link.close()
    assert (stats.checked, stats.ok) == (2, 0)
    (path,) = agent.spool.pending()
    results = {r.proxy_id: r for r in parse_batch(path.read_bytes()).results}
    assert results[1].mechanism == "blocked-ip"
    assert results[1].transports == (("tls", "blocked-ip"),)  # the TLS port is dark too
    assert results[2].mechanism == "blocked-fingerprint" and results[2].transports == ()
    assert net.connects.count("127.0.0.3:1080") == 1  # asked once for the whole round
