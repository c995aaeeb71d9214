"""The client's ladder under the lab's censor, escalating (root only).

Two nodes in the free namespace (each a plain SOCKS5 port and a TLS listener), an echo
service behind them, and ``resist connect`` in the censored namespace with all four
transports as upstreams.  The censor escalates: the SOCKS5 greeting's fingerprint, then
the project's old fixed TLS hello, then active probing of hellos without a server
name, then the address of the node in use (every transport of it).  After each step
the application's request through the client succeeds, and the ladder has learned
which transport of which node gets through in this network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resistance.lab import censor, escalate, netns
from resistance.lab import topology as topo
from tests.conftest import RunningNode, launch_node
from tests.e2e.labkit import kept_on_failure, lab_certificate, remove_lab
from tests.integration.socksclient import open_socks, recv_exact
from tests.integration.test_connect_directory import read_status, wait_for
from tests.integration.test_connect_tls_directory import banner_pin

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the censor lab needs root (network namespaces)"),
    pytest.mark.timeout(300),
]

FIRST, SECOND, ECHO_ADDR = topo.NODE_ADDRS
SOCKS, TLS, ECHO = 1080, 9443, 7000


def through_client(port: int, payload: bytes) -> bytes:
    with open_socks(("127.0.0.1", port), ECHO_ADDR, ECHO, user=None, timeout=30) as s:
        s.sendall(payload)
        return recv_exact(s, len(payload))


class Lab:
    def __init__(self, t: topo.Topology, client: RunningNode, state: Path) -> None:
        self.t, self.client, self.state = t, client, state

    def request(self) -> bytes:
        payload = os.urandom(4096)
        got = netns.call_in(self.t.censored, through_client, self.client.port, payload)
        assert got == payload
        return got

    def states(self) -> dict[tuple[str, str], str]:
        return {
            (row["upstream"].split(":")[0], row["transport"]): row["state"]
            for row in read_status(self.state).get("ladder", [])
        }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    t = topo.Topology(f"cl{os.getpid() % 100000}")
    tmp = tmp_path_factory.mktemp("ladder-lab")
    cert, key = lab_certificate(tmp)
    started: list[RunningNode] = []
    server: subprocess.Popen[str] | None = None
    try:
        for cmd in t.build_commands():
            netns.run(*cmd)
        censor.install(t.censor)
        censor.disable(t.censor, "all")
        script = Path(__file__).with_name("censor_servers.py")
        server = subprocess.Popen(
            [*netns.exec_prefix(t.free), sys.executable, str(script), str(cert), str(key),
             ECHO_ADDR],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        free = tuple(netns.exec_prefix(t.free))
        upstreams: list[str] = []
        for addr in (FIRST, SECOND):
            node = launch_node(
                ["--user", "alice:secret", "--allow", "198.18.0.0/15",
                 "--tls-listen", f"{addr}:{TLS}"],
                tmp / addr, listen=f"{addr}:{SOCKS}", prefix=free,
            )  # fmt: skip
            started.append(node)
            upstreams += [
                "--upstream", f"socks5s://alice:secret@{addr}:{TLS}#sha256={banner_pin(node)}",
                "--upstream", f"socks5://alice:secret@{addr}:{SOCKS}",
            ]  # fmt: skip
        state = tmp / "client"
        client = launch_node(
            [*upstreams, "--network", "lab-censored", "--check-interval", "0.5",
             "--dial-timeout", "3"],
            state, listen="127.0.0.1:0", prefix=tuple(netns.exec_prefix(t.censored)),
            command="connect",
        )  # fmt: skip
        started.append(client)
        with kept_on_failure(t, tmp):
            yield Lab(t, client, state)
    finally:
        for proc in started:
            proc.stop()
        if server is not None:
            server.terminate()
            server.wait(10)
        remove_lab(t)


def recovery(lab: Lab) -> float:
    """Seconds from now until the application's request goes through again (reported,
    never asserted: the figure for BENCHMARKS.md)."""

    def request() -> bool:
        try:
            return bool(lab.request())
        except AssertionError:
            return False

    seconds = escalate.recovery(request)
    assert seconds is not None, "the application never got through again"
    return seconds


def test_the_ladder_survives_an_escalating_censor(lab: Lab) -> None:
    lab.request()
    wait_for(lambda: lab.states().get((FIRST, "tls")) == "works", "TLS never got through unblocked")
    figures = {}
    # 1. The SOCKS5 greeting is a fingerprint, at the start of a flow's first payload
    #    whatever follows it (the client's plain dial sends greeting, credentials and
    #    request in one write): every plain port is dead, TLS hides the greeting.
    censor.enable(lab.t.censor, "socks5")
    figures["socks5"] = recovery(lab)
    for _ in range(3):
        lab.request()
    assert lab.states()[(FIRST, "tls")] == "works"
    # 2. The project's old fixed TLS hello is fingerprinted too: the browser-like hello
    #    the client sends is not it, so TLS keeps working.
    censor.enable(lab.t.censor, "hello")
    figures["hello"] = recovery(lab)
    for _ in range(3):
        lab.request()
    assert lab.states()[(FIRST, "tls")] == "works"
    # 3. Active probing: a hello naming no server sends the censor's prober to the
    #    server.  Every hello of the client names one (the node certificate's name once
    #    seen, a plausible one before), so no node is probed and nothing changes.
    censor.enable(lab.t.censor, "active-probe", probe_block_seconds=60)
    figures["active-probe"] = recovery(lab)
    for _ in range(3):
        lab.request()
    assert censor.report(lab.t.censor)["probes"] == []
    assert lab.states()[(FIRST, "tls")] == "works"
    # 4. The address of the node in use is blocked: its TLS listener dies as well, and
    #    the other node's TLS listener takes over.
    active = str(read_status(lab.state)["active"]).split(":")[0]
    other = SECOND if active == FIRST else FIRST
    censor.enable(lab.t.censor, "ip")
    censor.block(lab.t.censor, censor.ranges_of([active]))
    figures["ip"] = recovery(lab)
    wait_for(
        lambda: (
            lab.states().get((active, "tls")) == "failed"
            and lab.states().get((other, "tls")) == "works"
        ),
        "the blocked node's TLS listener was never left",
    )
    for _ in range(3):
        lab.request()
    ladder = read_status(lab.state)["ladder"]
    assert (ladder[0]["upstream"].split(":")[0], ladder[0]["transport"]) == (other, "tls")
    print(f"recovery seconds per step: {figures}")
