"""AmneziaWG through the lab censor that blocks WireGuard (root only).

The lab's three namespaces (censored, censor, free) of a throw-away
Topology.  In the free namespace ``resist vpn init --amnezia`` makes a
server on the lab's VPN address and ``resist vpn serve`` runs it with its
translator; ``resist vpn add alice`` prints her AmneziaWG config.  With the
censor's ``wireguard`` rule on, in the censored namespace:

* the same user over plain WireGuard (her keys, the WireGuard port, no
  AmneziaWG keys) brought up by wg-quick gets no handshake: no ping, and the
  rule counts the catch;
* over AmneziaWG (``resist vpn amnezia-client`` with her config, in front of
  the same stock wg-quick) she pings the server's tunnel address and moves
  200 kB over TCP inside the tunnel to a server in the free namespace.

Twice: with the default (AWG 2) parameters, and with ``--amnezia-v3`` (AWG 3:
header protection, random trailers), each on a server of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.vpn.applink import read_app_link
from tests.vpn.test_tunnel import kill_wireguard_go

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "wg", "wg-quick", "wireguard-go", "nft", "ping")
missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the censor lab needs root (network namespaces)"),
    pytest.mark.skipif(bool(missing), reason=f"missing {', '.join(missing)}"),
    pytest.mark.timeout(300),
]

TAG = f"{os.getpid() % 100000}"
#: the lines of a config that only AmneziaWG knows
AMNEZIA_KEYS = r"^(Jc|Jmin|Jmax|S\d|H\d|I\d|HeaderProtectionKey|RandomTrailers) = "
ECHO_PORT = 7017


@dataclass
class Lab:
    t: topo.Topology
    state: Path
    server_if: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    client_confs: list[Path] = field(default_factory=list)
    stderr: str = ""  # the last resist command's
    echo: subprocess.Popen[str] | None = None  # the TCP echo server in the free namespace

    def resist(self, *args: str, ns: str | None = None) -> str:
        argv = [*(netns.exec_prefix(ns) if ns else ()), sys.executable, "-m", "resistance"]
        done = subprocess.run(
            [*argv, "vpn", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert done.returncode == 0, f"resist vpn {args[0]}: {done.stdout} {done.stderr}"
        self.stderr = done.stderr
        return done.stdout

    def spawn(self, *argv: str, ns: str | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*(netns.exec_prefix(ns) if ns else ()), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.procs.append(proc)
        return proc

    def clear(self) -> None:
        """Stop every process and client tunnel but the echo server (shared by both versions)."""
        for conf in self.client_confs:
            self.wg_down(conf)
        self.client_confs.clear()
        for proc in self.procs:
            if proc is not self.echo:
                stop(proc)
        self.procs = [proc for proc in self.procs if proc is self.echo]

    def wg_up(self, conf: Path) -> None:
        self.client_confs.append(conf)
        netns.in_ns(self.t.censored, "wg-quick", "up", str(conf))

    def wg_down(self, conf: Path) -> None:
        subprocess.run(
            [*netns.exec_prefix(self.t.censored), "wg-quick", "down", str(conf)],
            capture_output=True,
            timeout=60,
        )
        kill_wireguard_go(conf.stem)

    def ping(self, host: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done = subprocess.run(
                [*netns.exec_prefix(self.t.censored), "ping", "-c1", "-W1", host],
                capture_output=True,
                timeout=10,
            )
            if done.returncode == 0:
                return True
        return False

    def tcp(self, host: str, size: int) -> str:
        done = subprocess.run(
            [*netns.exec_prefix(self.t.censored), sys.executable, "-m", "tests.vpn.nettool",
             "tcp", host, str(ECHO_PORT), str(size), "10"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        return done.stdout.strip()


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    t = topo.Topology(f"aw{TAG}")
    state = tmp_path_factory.mktemp("awg")
    state.chmod(0o700)
    lab = Lab(t=t, state=state, server_if=f"awgs{TAG}")
    try:
        for cmd in t.build_commands():
            netns.run(*cmd)
        censor.install(t.censor)
        yield lab
    finally:
        for conf in lab.client_confs:
            lab.wg_down(conf)
        for proc in lab.procs:
            stop(proc)
        if (state / "vpn" / "server.json").exists():
            subprocess.run(
                [sys.executable, "-m", "resistance", "vpn", "down", "--state-dir", str(state)],
                capture_output=True, timeout=60, cwd=ROOT,
            )  # fmt: skip
        kill_wireguard_go(lab.server_if)
        settings = censor.load_settings(t.censor)
        if settings.watcher:
            censor._stop_watcher(settings.watcher)
        for ns in t.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        censor.forget(t.censor)


@pytest.mark.parametrize("version", ["awg2", "awg3"])
def test_plain_wireguard_is_blocked_and_amneziawg_gets_through(lab: Lab, version: str) -> None:
    t = lab.t
    lab.clear()  # what a failed run of the other version left running
    if (lab.state / "vpn" / "server.json").exists():  # the other version's server: away with it
        lab.resist("down", "--state-dir", str(lab.state))
        kill_wireguard_go(lab.server_if)
        lab.state = lab.state / version
        lab.state.mkdir(mode=0o700)
    extra = ("--amnezia-v3",) if version == "awg3" else ()
    out = lab.resist(
        "init", "--endpoint", f"{topo.VPN_ADDR}:{topo.VPN_PORT}", "--interface", lab.server_if,
        "--netns", t.free, "--allow", topo.LAB_RANGE, "--amnezia", *extra,
        "--state-dir", str(lab.state),
    )  # fmt: skip
    assert f"AmneziaWG on {topo.VPN_ADDR}:{topo.VPN_PORT + 1}" in out
    assert ("AWG 3" in out) == (version == "awg3"), out
    serve = lab.spawn(
        sys.executable, "-m", "resistance", "vpn", "serve", "--interval", "1",
        "--state-dir", str(lab.state),
    )  # fmt: skip
    assert serve.stdout is not None
    # serve's line and its translator's (a child writing to the same pipe) come in either order
    lines = [serve.stdout.readline() for _ in range(2)]
    assert any("serving vpn" in line for line in lines), lines
    assert any("AmneziaWG server translator on" in line for line in lines), lines
    if lab.echo is None:  # one for both versions
        echo = lab.spawn(
            sys.executable, "-m", "tests.vpn.nettool", "serve", str(ECHO_PORT), ns=t.free
        )
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        lab.echo = echo

    config = lab.resist("add", "alice", "--state-dir", str(lab.state))
    for key in ("Jc", "Jmin", "Jmax", "S1", "S2", "S3", "S4", "H1", "H2", "H3", "H4"):
        assert re.search(rf"^{key} = \d+(-\d+)?$", config, re.M), key
    if version == "awg3":
        assert re.search(r"^HeaderProtectionKey = [A-Za-z0-9+/]{43}=$", config, re.M), config
        assert re.search(r"^RandomTrailers = on$", config, re.M), config
    assert f"Endpoint = {topo.VPN_ADDR}:{topo.VPN_PORT + 1}" in config
    # the AmneziaVPN app's link carries the same config: the tunnel below uses the link's
    link = re.search(r"^vpn://\S+$", lab.stderr, re.M)
    assert link is not None, lab.stderr
    (container,) = read_app_link(link[0])["containers"]
    assert container["container"] == "amnezia-awg"
    carried = json.loads(container["awg"]["last_config"])["config"]
    assert carried == config
    awg_conf = lab.state / "alice.conf"
    awg_conf.write_text(carried)
    awg_conf.chmod(0o600)

    censor.enable(t.censor, "wireguard", replace=True)
    caught_before = int(censor.report(t.censor)["rules"]["wireguard"]["caught"])

    # 1. the same user, plain WireGuard: no AmneziaWG keys, the WireGuard port
    plain = re.sub(AMNEZIA_KEYS + r".*\n", "", config, flags=re.M)
    plain = plain.replace(f":{topo.VPN_PORT + 1}", f":{topo.VPN_PORT}")
    plain_conf = lab.state / f"awgp{TAG}.conf"
    plain_conf.write_text(plain)
    plain_conf.chmod(0o600)
    lab.wg_up(plain_conf)
    assert not lab.ping("10.66.0.1", 6), "plain WireGuard got through the censor"
    assert int(censor.report(t.censor)["rules"]["wireguard"]["caught"]) > caught_before
    lab.wg_down(plain_conf)
    lab.client_confs.remove(plain_conf)
    caught_plain = int(censor.report(t.censor)["rules"]["wireguard"]["caught"])

    # 2. the same user over AmneziaWG, stock wg-quick behind the client translator
    wg_conf = lab.state / f"awgc{TAG}.conf"
    client = lab.spawn(
        sys.executable, "-m", "resistance", "vpn", "amnezia-client", str(awg_conf),
        "--listen", "127.0.0.1:51821", "--wg-config", str(wg_conf), ns=t.censored,
    )  # fmt: skip
    assert client.stdout is not None
    line = client.stdout.readline()
    assert "AmneziaWG client translator on 127.0.0.1:51821" in line, stop(client)
    assert ("header protection on, random trailers on" in line) == (version == "awg3"), line
    # stock wg-quick's config: no AmneziaWG key left (a line's start: a base64 key may hold "Jc")
    assert not re.search(AMNEZIA_KEYS, wg_conf.read_text(), re.M), wg_conf.read_text()
    lab.wg_up(wg_conf)
    if not lab.ping("10.66.0.1", 20):
        show = netns.in_ns(t.censored, "wg", "show")
        raise AssertionError(f"no ping over AmneziaWG: {show} {stop(client)} {stop(serve)}")
    result = lab.tcp(topo.FREE_UPLINK, 200_000)
    assert result.startswith("ok"), result
    # the censor still blocks WireGuard, and saw no WireGuard in the AmneziaWG flow
    assert "wireguard" in censor.load_settings(t.censor).on
    after = int(censor.report(t.censor)["rules"]["wireguard"]["caught"])
    lab.wg_down(wg_conf)
    lab.client_confs.remove(wg_conf)
    stop(client)
    _, err = stop(serve)
    assert serve.returncode == 0, err
    assert after == caught_plain
