"""``resist vpn`` for real: wireguard-go, wg-quick and nftables in network namespaces.

Three namespaces made here and removed afterwards:

    client ──veth 198.18.0.0/30── server ──veth 198.18.2.0/24── world
                                                   (lo: 10.99.0.1, 169.254.169.254)

The client brings up, with ``wg-quick``, the very config ``resist vpn add``
printed (a full tunnel).  "world" stands for both the internet (198.18.2.2,
allowed with ``--allow`` since 198.18.0.0/15 is reserved by default) and the
server's private surroundings (10.99.0.1 and the metadata address, routed
from the server) that the tunnel must never reach.

The tests run in file order and share one server; each step says what the
state is.  Every output is kept and searched for every private key at the end.
"""

from __future__ import annotations

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

from resistance.vpn import keys

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "wg", "wg-quick", "wireguard-go", "nft")
missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        bool(missing),
        reason=f"missing {', '.join(missing)} (apt-get install wireguard-tools wireguard-go "
        "nftables iproute2)",
    ),
]

TAG = f"{os.getpid() % 100000}"
ECHO_PORT = 7007
WG_PORT = 51820


@dataclass
class World:
    state: Path
    server_ns: str
    client_ns: str
    world_ns: str
    interface: str
    transcript: list[str] = field(default_factory=list)
    private_keys: set[str] = field(default_factory=set)
    client_keys: dict[str, str] = field(default_factory=dict)  # private key -> peer name
    client_if: str | None = None
    client_count: int = 0
    pids: list[int] = field(default_factory=list)
    server_public: str = ""

    # -- running things ------------------------------------------------------

    def sh(self, *cmd: str, ns: str | None = None, check: bool = True) -> str:
        argv = [*(("ip", "netns", "exec", ns) if ns else ()), *cmd]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        self.transcript += [done.stdout, done.stderr]
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {done.stdout} {done.stderr}")
        return done.stdout

    def resist(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "resistance", "vpn", *args]
        if args[0] not in ("probe",):
            argv += ["--state-dir", str(self.state)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        self.transcript += [done.stdout, done.stderr]
        if ok and done.returncode != 0:
            raise AssertionError(f"resist vpn {' '.join(args)}: {done.stdout} {done.stderr}")
        return done

    def add_client(self, name: str, *extra: str) -> str:
        config = self.resist("add", name, *extra).stdout
        secret = re.search(r"PrivateKey = (\S+)", config)
        assert secret is not None
        self.private_keys.add(secret[1])
        self.client_keys[secret[1]] = config
        return config

    def client_up(self, config: str) -> None:
        self.client_down()
        self.client_count += 1
        self.client_if = f"rvc{TAG}{self.client_count}"
        path = self.state / f"{self.client_if}.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, config.encode())
        os.close(fd)
        self.sh("wg-quick", "up", str(path), ns=self.client_ns)

    def client_down(self) -> None:
        if self.client_if is None:
            return
        path = self.state / f"{self.client_if}.conf"
        self.sh("wg-quick", "down", str(path), ns=self.client_ns, check=False)
        kill_wireguard_go(self.client_if)
        self.client_if = None

    def tcp(self, host: str, *, size: int = 20000, timeout: float = 3.0) -> str:
        done = subprocess.run(
            [
                *("ip", "netns", "exec", self.client_ns),
                *(sys.executable, "-m", "tests.vpn.nettool", "tcp", host, str(ECHO_PORT)),
                *(str(size), str(timeout)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        return done.stdout.strip()

    def ping(self, host: str) -> bool:
        done = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, "ping", "-c1", "-W2", host],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def wait_tcp(self, host: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        result = ""
        while time.monotonic() < deadline:
            result = self.tcp(host, timeout=1.5)
            if result.startswith("ok"):
                return result
        return result

    def server_pid(self) -> int:
        import json

        runtime = json.loads((self.state / "vpn" / "runtime.json").read_text())
        return int(runtime["pid"])

    def ifindex(self) -> str:
        return self.sh("cat", f"/sys/class/net/{self.interface}/ifindex", ns=self.server_ns)


def wireguard_go_pids(interface: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go") and interface.encode() in argv[1:]:
            found.append(int(entry.name))
    return found


def kill_wireguard_go(interface: str) -> None:
    for pid in wireguard_go_pids(interface):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sock = Path(f"/var/run/wireguard/{interface}.sock")
    for _ in range(50):
        if not wireguard_go_pids(interface):
            break
        time.sleep(0.05)
    sock.unlink(missing_ok=True)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("vpn")
    w = World(
        state=state,
        server_ns=f"resist-vs-{TAG}",
        client_ns=f"resist-vc-{TAG}",
        world_ns=f"resist-vw-{TAG}",
        interface=f"rvs{TAG}",
    )
    made: list[str] = []
    echo: subprocess.Popen[str] | None = None
    try:
        for ns in (w.server_ns, w.client_ns, w.world_ns):
            _run("ip", "netns", "add", ns)
            made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", f"rvva{TAG}", "netns", w.server_ns, "type", "veth", "peer",
             "name", f"rvvb{TAG}", "netns", w.client_ns)  # fmt: skip
        _run("ip", "link", "add", f"rvwa{TAG}", "netns", w.server_ns, "type", "veth", "peer",
             "name", f"rvwb{TAG}", "netns", w.world_ns)  # fmt: skip
        for ns, dev, addr in (
            (w.server_ns, f"rvva{TAG}", "198.18.0.1/30"),
            (w.client_ns, f"rvvb{TAG}", "198.18.0.2/30"),
            (w.server_ns, f"rvwa{TAG}", "198.18.2.1/24"),
            (w.world_ns, f"rvwb{TAG}", "198.18.2.2/24"),
        ):
            _run("ip", "-n", ns, "address", "add", addr, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        # (no dummy interface module on every kernel: the world's loopback holds them)
        for addr in ("10.99.0.1/32", "169.254.169.254/32"):
            _run("ip", "-n", w.world_ns, "address", "add", addr, "dev", "lo")
            _run("ip", "-n", w.server_ns, "route", "add", addr, "via", "198.18.2.2")
        echo = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                w.world_ns,
                sys.executable,
                "-m",
                "tests.vpn.nettool",
                "serve",
                str(ECHO_PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        yield w
    finally:
        w.client_down()
        if (state / "vpn" / "server.json").exists():
            w.resist("down", ok=False)
        kill_wireguard_go(w.interface)
        if echo is not None:
            echo.kill()
            echo.wait(5)
        for pid in w.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_init_brings_up_the_server(world: World) -> None:
    out = world.resist(
        "init",
        "--endpoint", f"198.18.0.1:{WG_PORT}",
        "--interface", world.interface,
        "--netns", world.server_ns,
        "--allow", "198.18.2.0/24",
    ).stdout  # fmt: skip
    assert "wireguard-go" in out and world.interface in out
    server_key = (world.state / "vpn" / "server.key").read_text().strip()
    world.private_keys.add(server_key)
    assert (world.state / "vpn" / "server.key").stat().st_mode & 0o777 == 0o600
    assert world.sh("sysctl", "-n", "net.ipv4.ip_forward", ns=world.server_ns).strip() == "1"
    tables = world.sh("nft", "list", "tables", ns=world.server_ns)
    assert f"resist_vpn_rvs{TAG}" in tables
    # init twice is refused in one line
    again = world.resist("init", "--endpoint", "198.18.0.1", ok=False)
    assert again.returncode == 2 and again.stderr.count("\n") == 1


def test_added_client_carries_ping_and_tcp_through_wg_quick(world: World) -> None:
    config = world.add_client("alice", "--qr-file", str(world.state / "alice.png"))
    assert "[Interface]" in config and "AllowedIPs = 0.0.0.0/0, ::/0" in config
    assert (world.state / "alice.png").read_bytes()[:4] == b"\x89PNG"
    world.client_up(config)
    assert world.ping("10.66.0.1")
    assert world.ping("198.18.2.2")
    # The world sees the server's address: traffic went through the tunnel, masqueraded.
    assert world.tcp("198.18.2.2", size=300_000) == "ok 198.18.2.1"


def test_private_and_metadata_ranges_are_unreachable(world: World) -> None:
    assert world.tcp("198.18.2.2").startswith("ok")
    assert world.tcp("10.99.0.1", timeout=1.5).startswith("fail")
    assert world.tcp("169.254.169.254", timeout=1.5).startswith("fail")
    assert not world.ping("10.99.0.1")
    # From the server itself both are reachable: the VPN's policy refuses them, not routing.
    for host in ("10.99.0.1", "169.254.169.254"):
        out = world.sh(
            sys.executable, "-m", "tests.vpn.nettool", "tcp", host, str(ECHO_PORT), "10", "2",
            ns=world.server_ns,
        )  # fmt: skip
        assert out.startswith("ok")


def test_disable_and_enable_are_live(world: World) -> None:
    pid, index = world.server_pid(), world.ifindex()
    world.resist("disable", "alice")
    assert world.tcp("198.18.2.2", timeout=1.5).startswith("fail")
    listing = world.resist("list").stdout
    assert "disabled (manual)" in listing
    world.resist("enable", "alice")
    # The client notices at its next handshake (about 15 s in WireGuard's timers).
    assert world.wait_tcp("198.18.2.2", 30).startswith("ok")
    assert (world.server_pid(), world.ifindex()) == (pid, index)


def test_expiry_is_enforced_without_restart(world: World) -> None:
    pid = world.server_pid()
    world.resist("limit", "alice", "--expires", "1s")
    time.sleep(1.2)
    out = world.resist("enforce").stdout
    assert out.strip() == "disabled alice: expired"
    assert world.tcp("198.18.2.2", timeout=1.5).startswith("fail")
    refused = world.resist("enable", "alice", ok=False)
    assert refused.returncode == 2 and "expired" in refused.stderr
    assert world.server_pid() == pid


def test_quota_is_enforced(world: World) -> None:
    world.client_up(world.add_client("carol", "--quota", "300kB"))
    assert world.tcp("198.18.2.2", size=10_000).startswith("ok")
    assert world.resist("enforce").stdout == ""
    assert world.tcp("198.18.2.2", size=400_000).startswith("ok")
    assert world.resist("enforce").stdout.strip() == "disabled carol: quota"
    assert world.tcp("198.18.2.2", timeout=1.5).startswith("fail")
    import json

    rows = {r["name"]: r for r in json.loads(world.resist("list", "--json").stdout)}
    assert rows["carol"]["up_bytes"] + rows["carol"]["down_bytes"] > 800_000
    assert rows["carol"]["disabled"] == "quota"


def test_rotate_and_remove_cut_the_old_keys(world: World) -> None:
    world.client_up(world.add_client("dave"))
    assert world.tcp("198.18.2.2").startswith("ok")
    rotated = world.resist("rotate", "dave").stdout
    new_key = re.search(r"PrivateKey = (\S+)", rotated)
    assert new_key is not None
    world.private_keys.add(new_key[1])
    world.client_keys[new_key[1]] = rotated
    assert world.tcp("198.18.2.2", timeout=1.5).startswith("fail")
    world.client_up(rotated)
    assert world.tcp("198.18.2.2").startswith("ok")
    world.resist("remove", "dave")
    assert world.tcp("198.18.2.2", timeout=1.5).startswith("fail")
    assert "dave" not in world.resist("list").stdout


def _probe(world: World, server_key: str, key_file: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        *("ip", "netns", "exec", world.client_ns, sys.executable, "-m", "resistance", "vpn"),
        *("probe", f"198.18.0.1:{WG_PORT}", "--server-key", server_key, "--key", str(key_file)),
        *("--timeout", "1"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    world.transcript += [done.stdout, done.stderr]
    return done


def test_handshake_probe(world: World) -> None:
    world.client_down()  # the probe goes over the veth, as from the internet
    prober, stranger = keys.KeyPair.generate(), keys.KeyPair.generate()
    for pair, name in ((prober, "prober.key"), (stranger, "stranger.key")):
        world.private_keys.add(pair.private_text)
        (world.state / name).write_text(pair.private_text + "\n")
    out = world.resist("add-probe", prober.public_text, "--name", "probe-test").stdout
    server_key = re.search(r"--server-key (\S+)", out)
    assert server_key is not None
    up = _probe(world, server_key[1], world.state / "prober.key")
    assert up.returncode == 0 and up.stdout.startswith("up:")
    wrong = _probe(world, keys.KeyPair.generate().public_text, world.state / "prober.key")
    assert wrong.returncode == 1 and wrong.stdout.startswith("down:")
    unknown = _probe(world, server_key[1], world.state / "stranger.key")
    assert unknown.returncode == 1
    world.server_public = server_key[1]


def test_serve_exports_metrics_by_name_only(world: World) -> None:
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", world.server_ns, sys.executable, "-m", "resistance", "vpn"),
            *("serve", "--interval", "0.3", "--metrics", "127.0.0.1:0"),
            *("--state-dir", str(world.state)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    world.pids.append(proc.pid)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://127.0.0.1:(\d+)/metrics", line)
    assert match, line
    time.sleep(0.8)
    text = world.sh(
        sys.executable, "-c",
        f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{match[1]}/metrics')"
        ".read().decode())",
        ns=world.server_ns,
    )  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    world.transcript += [line, out, err, text]
    assert proc.returncode == 0
    assert 'resist_vpn_peer_bytes_total{direction="up",peer="carol"}' in text
    assert 'resist_vpn_peer_enabled{peer="alice"} 0.0' in text
    assert 'resist_vpn_peer_quota_bytes{peer="carol"} 300000.0' in text
    assert "resist_vpn_peer_handshake_age_seconds{" in text
    assert "10.66." not in text and "198.18." not in text
    db = (world.state / "vpn" / "peers.json").read_text()
    for public in re.findall(r'"public_key": "(\S+)"', db):
        assert public not in text
    assert world.server_public not in text


def test_down_then_up_reapplies_the_database(world: World) -> None:
    erin = world.add_client("erin")
    pid = world.server_pid()
    world.resist("down")
    assert world.sh("ip", "link", "show", world.interface, ns=world.server_ns, check=False) == ""
    assert f"resist_vpn_rvs{TAG}" not in world.sh("nft", "list", "tables", ns=world.server_ns)
    assert not Path(f"/var/run/wireguard/{world.interface}.sock").exists()
    assert not Path(f"/proc/{pid}/cmdline").exists() or not wireguard_go_pids(world.interface)
    stopped = _probe(world, world.server_public, world.state / "prober.key")
    assert stopped.returncode == 1
    world.resist("up")
    world.client_up(erin)
    assert world.tcp("198.18.2.2").startswith("ok")
    # carol stays over quota and alice expired: neither is back on the device.
    peers_on_device = world.sh("wg", "show", world.interface, "peers", ns=world.server_ns)
    assert len(peers_on_device.split()) == 2  # erin and the probe


def test_no_private_key_in_any_output(world: World) -> None:
    logs = [p.read_text(errors="replace") for p in world.state.rglob("*.log")]
    db = (world.state / "vpn" / "peers.json").read_text()
    everything = world.transcript + logs + [db]
    assert world.private_keys, "no keys were collected"
    for secret in world.private_keys:
        own = world.client_keys.get(secret)
        for text in everything:
            if secret in text:
                # A client's key appears only in the config made for that client.
                assert own is not None and text == own, "a private key leaked into output"
