"""Through the whitelist: bridge → exit under the lab's censor (root only).

A lab of its own (pid-suffixed namespaces): an exit node abroad (the free
network), a bridge on domestic hosting (the domestic network, inside the
censored country), the data-centre stand-in and an echo service abroad.  The
user in the censored network runs ``resist connect`` with a node abroad first
and the bridge second, and a Telegram-like client uses the bridge's MTProto
proxy.  The censor escalates:

1. the whitelist (the data centre still blocked by address): only the
   domestic prefix is listed, every node abroad is cut off; both users still
   reach the destination through bridge → exit;
2. the SOCKS5 greeting is fingerprinted: the bridge's plain hop dies and the
   bridge takes its TLS hop, no error reaching the user;
3. the exit revokes the bridge's credential (users file + SIGHUP): the exit
   refuses it at once, without a restart.

Times to recovery are printed (never asserted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from resistance.lab import censor, escalate, netns
from resistance.lab import topology as topo
from resistance.net.mtproto import ask_res_pq
from resistance.paths import write_private
from resistance.proto.faketls import ProxySecret, SecretMode
from tests.conftest import RunningNode, launch_node
from tests.e2e.labkit import kept_on_failure, lab_certificate, remove_lab
from tests.integration.socksclient import SocksFailure, open_socks, recv_exact
from tests.integration.test_connect_tls_directory import banner_pin

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the censor lab needs root (network namespaces)"),
    pytest.mark.timeout(300),
]

EXIT, _, ECHO_ADDR = topo.NODE_ADDRS
BRIDGE = topo.BRIDGE_ADDR
SOCKS, TLS, MTPROTO, ECHO = 1080, 443, 8443, 7000
HOP_USER, HOP_PASSWORD = "bridge-1", "hop-8c1d2e"
MT_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
MT_DOMAIN = "www.example.com"


def exit_users(path: Path, *, bridge: bool) -> None:
    users = {"alice": "secret", **({HOP_USER: HOP_PASSWORD} if bridge else {})}
    write_private(path, "[users]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in users.items()))


def bridge_config(path: Path) -> None:
    write_private(
        path,
        f'mtproto_listen = ["{BRIDGE}:{MTPROTO}"]\n'
        f'mtproto_domain = "{MT_DOMAIN}"\n'
        f'mtproto_front = "{BRIDGE}:{TLS}"\n'
        f'mtproto_dc = ["2={topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}"]\n'
        f'listen = ["{BRIDGE}:{SOCKS}"]\n'
        "[mtproto_users]\n"
        f'telegram-user = "{MT_KEY.hex()}"\n',
    )


def through_client(port: int, payload: bytes) -> bytes:
    with open_socks(("127.0.0.1", port), ECHO_ADDR, ECHO, user=None, timeout=30) as s:
        s.sendall(payload)
        return recv_exact(s, len(payload))


def res_pq_via_bridge() -> bool:
    secret = ProxySecret(MT_KEY, SecretMode.EE, MT_DOMAIN)
    return asyncio.run(ask_res_pq(BRIDGE, MTPROTO, secret, within=15)).ok


def hop_auth_refused() -> bool:
    """Whether the exit refuses the bridge's credential (asked from the domestic network)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        open_socks((EXIT, TLS), ECHO_ADDR, ECHO, user=HOP_USER, password=HOP_PASSWORD,
                   tls=ctx, timeout=10).close()  # fmt: skip
    except PermissionError:
        return True
    return False


@dataclass
class World:
    t: topo.Topology
    exit: RunningNode
    exit_config: Path
    bridge: RunningNode
    client: RunningNode

    def request(self) -> bool:
        payload = os.urandom(4096)
        return netns.call_in(self.t.censored, through_client, self.client.port, payload) == payload

    def telegram(self) -> bool:
        return netns.call_in(self.t.censored, res_pq_via_bridge)


def recovery(check: object) -> float:
    seconds = escalate.recovery(check)  # type: ignore[arg-type]
    assert seconds is not None, "never got through again"
    return seconds


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    t = topo.Topology(f"br{os.getpid() % 100000}")
    tmp = tmp_path_factory.mktemp("bridge-lab")
    cert, key = lab_certificate(tmp)
    started: list[RunningNode] = []
    servers: list[subprocess.Popen[str]] = []
    try:
        for cmd in t.build_commands():
            netns.run(*cmd)
        censor.install(t.censor)
        censor.disable(t.censor, "all")
        free = tuple(netns.exec_prefix(t.free))
        script = Path(__file__).with_name("censor_servers.py")
        echo = subprocess.Popen(
            [*free, sys.executable, str(script), str(cert), str(key), ECHO_ADDR],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        servers.append(echo)
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        dc = subprocess.Popen(
            [*free, sys.executable, "-m", "resistance", "lab", "datacentre",
             "--listen", f"{topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        servers.append(dc)
        deadline = time.monotonic() + 20
        while not netns.call_in(t.free, netns.tcp_open, topo.DATACENTRE_ADDR, 443, 0.5):
            assert time.monotonic() < deadline, "the data centre stand-in did not listen"
            time.sleep(0.1)
        exit_config = tmp / "exit.toml"
        exit_users(exit_config, bridge=True)
        exit_ = launch_node(
            ["--config", str(exit_config), "--allow", topo.LAB_RANGE,
             "--tls-listen", f"{EXIT}:{TLS}"],
            tmp / "exit", listen=f"{EXIT}:{SOCKS}", prefix=free,
        )  # fmt: skip
        started.append(exit_)
        pin = banner_pin(exit_)
        config = tmp / "bridge.toml"
        bridge_config(config)
        bridge = launch_node(
            ["--config", str(config), "--user", "alice:secret", "--allow", topo.LAB_RANGE,
             "--tls-listen", f"{BRIDGE}:{TLS}",
             "--upstream", f"socks5://{HOP_USER}:{HOP_PASSWORD}@{EXIT}:{SOCKS}",
             "--upstream", f"socks5s://{HOP_USER}:{HOP_PASSWORD}@{EXIT}:{TLS}#sha256={pin}"],
            tmp / "bridge", listen=f"{BRIDGE}:{SOCKS}",
            prefix=tuple(netns.exec_prefix(t.domestic)),
        )  # fmt: skip
        started.append(bridge)
        client = launch_node(
            ["--upstream", f"socks5s://alice:secret@{EXIT}:{TLS}#sha256={pin}",
             "--upstream", f"socks5s://alice:secret@{BRIDGE}:{TLS}#sha256={banner_pin(bridge)}",
             "--network", "lab-censored", "--check-interval", "0.5", "--dial-timeout", "10"],
            tmp / "client", listen="127.0.0.1:0", prefix=tuple(netns.exec_prefix(t.censored)),
            command="connect",
        )  # fmt: skip
        started.append(client)
        # The data centre is blocked by address from the start, as Telegram's ranges were.
        censor.enable(t.censor, "ip")
        censor.block(t.censor, censor.ranges_of([topo.DATACENTRE_RANGE]))
        with kept_on_failure(t, tmp):
            yield World(t, exit_, exit_config, bridge, client)
    finally:
        for proc in started:
            proc.stop()
        for server in servers:
            server.terminate()
            server.wait(10)
        remove_lab(t)


def test_both_users_get_through_the_whitelist_via_bridge_and_exit(world: World) -> None:
    assert world.request()
    assert world.telegram()  # the bridge reaches the blocked data centre via the exit
    figures: dict[str, float] = {}

    # 1. Whitelist: only the domestic hosting prefix is listed.
    censor.enable(world.t.censor, "whitelist", whitelist=[topo.DOMESTIC_NET])
    assert not netns.call_in(world.t.censored, netns.tcp_open, EXIT, TLS, 2.0)  # abroad: cut off
    figures["whitelist: application"] = recovery(world.request)
    figures["whitelist: telegram"] = recovery(world.telegram)
    for _ in range(3):
        assert world.request() and world.telegram()

    # 2. The SOCKS5 greeting is fingerprinted: the bridge's plain hop dies.
    censor.enable(world.t.censor, "socks5")
    figures["hop fingerprinted: application"] = recovery(world.request)
    figures["hop fingerprinted: telegram"] = recovery(world.telegram)
    for _ in range(3):
        assert world.request() and world.telegram()
    assert "trying the next" in world.bridge.stderr()
    assert HOP_PASSWORD not in world.bridge.stderr() + world.exit.stderr()

    # 3. The exit revokes the bridge's credential without a restart.
    assert not netns.call_in(world.t.domestic, hop_auth_refused)
    exit_users(world.exit_config, bridge=False)
    revoked = time.monotonic()
    world.exit.proc.send_signal(signal.SIGHUP)
    while not netns.call_in(world.t.domestic, hop_auth_refused):
        assert time.monotonic() - revoked < 10, "the exit kept the revoked credential"
        time.sleep(0.05)
    figures["revocation: refused after"] = time.monotonic() - revoked
    assert world.exit.proc.poll() is None
    with pytest.raises(SocksFailure):  # the user's connection fails: no exit takes the bridge
        world.request()
    print(f"recovery seconds per step: { {k: round(v, 2) for k, v in figures.items()} }")
