"""Probe peers in the peer database, without an interface (no root needed).

A VPN that was initialised but never brought up changes only its database,
so the bookkeeping of probe peers can be checked on its own: they have no
address and no preshared key, are listed apart from users, and are removable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resistance.errors import ConfigError
from resistance.vpn import keys
from resistance.vpn.peers import PeerKind
from resistance.vpn.server import VpnServer, make_config


@pytest.fixture
def server(tmp_path: Path) -> VpnServer:
    config = make_config(endpoint="203.0.113.7:51820", interface="rvt-never-up")
    return VpnServer.initialise(tmp_path, config)


def resist(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "resistance", "vpn", *args, "--state-dir", str(tmp_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_probe_peers_have_no_route_and_are_kept(server: VpnServer) -> None:
    key = keys.KeyPair.generate().public_text
    peer, added = server.add_probe(key, "probe-ams")
    assert added
    assert peer.kind is PeerKind.PROBE and peer.address is None and peer.allowed_ips() == []
    assert peer.preshared_key is None
    (stored,) = server.db.read()
    assert stored.public_key == key and stored.kind is PeerKind.PROBE
    with pytest.raises(ConfigError, match="already has that name or key"):
        server.add_probe(key, "other-name")
    with pytest.raises(ConfigError, match="already has that name or key"):
        server.add_probe(keys.KeyPair.generate().public_text, "probe-ams")
    server.remove("probe-ams")
    assert server.db.read() == []


def test_adding_a_probe_again_is_idempotent_and_finds_a_free_name(server: VpnServer) -> None:
    first, second = keys.KeyPair.generate().public_text, keys.KeyPair.generate().public_text
    peer, added = server.add_probe(first, "probe-x", again=True)
    assert added and peer.name == "probe-x"
    again, added = server.add_probe(first, "anything", again=True)
    assert not added and again.name == "probe-x"
    other, added = server.add_probe(second, "probe-x", again=True)
    assert added and other.name == "probe-x-2"
    client, _ = server.add("alice")
    with pytest.raises(ConfigError, match="client alice"):
        server.add_probe(client.public_key, "probe-y", again=True)


def test_list_shows_probes_apart_from_users(server: VpnServer, tmp_path: Path) -> None:
    server.add("alice")
    probe_key = keys.KeyPair.generate().public_text
    server.add_probe(probe_key, "probe-ams")
    table = resist(tmp_path, "list")
    assert table.returncode == 0, table.stderr
    users, _, probes = table.stdout.partition("probes (handshake only)")
    assert "alice" in users and "probe-ams" not in users
    assert "probe-ams" in probes and probe_key in probes
    rows = {r["name"]: r for r in json.loads(resist(tmp_path, "list", "--json").stdout)}
    assert rows["probe-ams"]["kind"] == "probe" and rows["probe-ams"]["address"] is None
    assert rows["alice"]["kind"] == "client"


def test_register_needs_an_ip_and_a_running_vpn(tmp_path: Path) -> None:
    named = tmp_path / "named"
    VpnServer.initialise(named, make_config(endpoint="vpn.example.org", interface="rvt-never-up"))
    done = resist(named, "register", "--registry", "http://127.0.0.1:9", "--token", "t")
    assert done.returncode == 2 and "give --public-host IP" in done.stderr
    down = resist(
        named, "register", "--registry", "http://127.0.0.1:9", "--token", "t",
        "--public-host", "203.0.113.7",
    )  # fmt: skip
    assert down.returncode == 2 and "the VPN is down" in down.stderr
    assert down.stderr.count("\n") == 1
