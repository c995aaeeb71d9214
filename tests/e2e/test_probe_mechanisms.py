"""A probe in the lab's censored network names the mechanism of each block (root only).

Two real nodes in the free namespace: TARGET (SOCKS5 and a TLS listener) and CONTROL
(SOCKS5, the control proxy).  The probe's own check and control experiments
(resistance.probe.controls) run inside the censored namespace over real sockets, the
outside view from the free side; the censor switches on one rule at a time:

* ``ip`` with TARGET's address listed: ``blocked-ip``;
* ``socks5`` (the greeting's fingerprint): ``blocked-fingerprint``;
* ``sni`` with the node's name listed: ``blocked-sni`` (a benign name passes);
* ``freeze`` on TARGET's prefix: ``frozen`` with the byte count (the canary's download
  through CONTROL, another prefix, completes);
* ``active-probe`` after the probe's own nameless hello to a TLS service on TARGET
  that is no website went through, its retry finding the address dark: ``probed``
  (the same darkness without that first connection of the check: ``blocked-ip``; the
  node's own TLS listener, a website to the prober, is not blocked);
* ``whitelist`` letting only CONTROL through: ``whitelisted-out`` (THIRD, a third node,
  is the unlisted control proxy);
* ``hello`` with the project's old fixed hello: the client's browser-like hello passes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resistance.directory.keys import parse_public_key
from resistance.lab import censor, netns
from resistance.lab import topology as topo
from resistance.node.tlscert import pinning_client_context
from resistance.probe.controls import (
    Controls,
    diagnose_check,
    sni_evidence,
    tcp_attempt,
    tls_attempt,
    tls_reach,
)
from resistance.probe.diagnose import Mechanism, diagnose
from resistance.probe.net import SocketNetwork
from resistance.probe.runner import Canary, CheckSettings, Target, run_check
from tests.conftest import RunningNode, launch_node
from tests.e2e.labkit import kept_on_failure, remove_lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the censor lab needs root (network namespaces)"),
    pytest.mark.timeout(300),
]

TARGET, CONTROL, THIRD = topo.NODE_ADDRS
SOCKS, TLS, CANARY_PORT = 1080, 9443, 9900
#: censor_servers.py's TLS service that is no website (a node before it fronted a site).
NOT_WEBSITE = 8443
SETTINGS = CheckSettings(step_timeout=2.0, transfer_timeout=2.0)


def check(
    addr: str,
    other_ports: tuple[int, ...],
    outside_ok: bool | None,
    control: str = CONTROL,
    listed: str | None = None,
    first_ok: bool = False,
) -> tuple[str, Any]:
    """The probe's check of addr's SOCKS5 port and, if it failed, its controls (with a
    listed host to reach when ``listed`` names one)."""

    async def run() -> tuple[str, Any]:
        network = SocketNetwork()
        result = await run_check(Target(addr, SOCKS, "probe", "pw", 1), None, network, SETTINGS)
        if result.verdict.ok:
            return Mechanism.OK.value, None
        controls = Controls(
            other_ports=other_ports,
            control=Target(control, SOCKS, "probe", "pw"),
            outside_ok=outside_ok,
            first_ok=first_ok,
        )
        listed_ok = False
        if listed is not None:
            reached = await tcp_attempt(network, listed, SOCKS, SETTINGS.step_timeout)
            listed_ok = reached.ok
        evidence, diagnosis = await diagnose_check(
            result, canary=None, network=network, settings=SETTINGS, controls=controls,
            listed_ok=listed_ok,
        )  # fmt: skip
        return diagnosis.mechanism.value, evidence.to_json()

    return asyncio.run(run())


def sni_check(addr: str, name: str) -> tuple[str, Any]:
    evidence = asyncio.run(sni_evidence(addr, TLS, name, SETTINGS.step_timeout, outside_ok=True))
    return diagnose(evidence).mechanism.value, evidence.to_json()


def hello_passes(addr: str, old_hello: bool) -> bool:
    context = pinning_client_context() if old_hello else None
    return asyncio.run(tls_attempt(addr, TLS, None, SETTINGS.step_timeout, context=context)).ok


class Lab:
    def __init__(self, t: topo.Topology, canary_key: str) -> None:
        self.t = t
        self.canary_key = canary_key

    def inside(self, func: Any, *args: Any) -> Any:
        return netns.call_in(self.t.censored, func, *args, timeout=120)

    def outside_ok(self, addr: str) -> bool:
        mechanism, _ = netns.call_in(self.t.free, check, addr, (), None, timeout=120)
        return bool(mechanism == Mechanism.OK.value)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    t = topo.Topology(f"pm{os.getpid() % 100000}")
    tmp = tmp_path_factory.mktemp("probe-lab")
    nodes: list[RunningNode] = []
    canary: subprocess.Popen[str] | None = None
    servers: subprocess.Popen[str] | None = None
    try:
        for cmd in t.build_commands():
            netns.run(*cmd)
        censor.install(t.censor)
        prefix = tuple(netns.exec_prefix(t.free))
        for addr, extra in (
            (TARGET, ["--tls-listen", f"{TARGET}:{TLS}"]), (CONTROL, []), (THIRD, []),
        ):  # fmt: skip
            args = ["--user", "probe:pw", "--allow", "198.18.0.0/15", *extra]
            nodes.append(launch_node(args, tmp / addr, listen=f"{addr}:{SOCKS}", prefix=prefix))
        canary = subprocess.Popen(
            [*prefix, sys.executable, str(Path(__file__).with_name("canary_server.py")),
             THIRD, str(CANARY_PORT)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert canary.stdout is not None
        canary_key = canary.stdout.readline().strip()
        from resistance.node.tlscert import make_self_signed

        cert, key = make_self_signed("lab")
        (tmp / "site.pem").write_bytes(cert)
        (tmp / "site.key").write_bytes(key)
        servers = subprocess.Popen(
            [*prefix, sys.executable, str(Path(__file__).with_name("censor_servers.py")),
             str(tmp / "site.pem"), str(tmp / "site.key"), TARGET],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
        censor.disable(t.censor, "all")
        with kept_on_failure(t, tmp):
            yield Lab(t, canary_key)
    finally:
        for node in nodes:
            node.stop()
        for server in (canary, servers):
            if server is not None:
                server.terminate()
                server.wait(10)
        remove_lab(t)


@pytest.fixture
def rules(lab: Lab) -> Iterator[Lab]:
    yield lab
    censor.disable(lab.t.censor, "all")


def test_unblocked_the_probe_says_ok(rules: Lab) -> None:
    assert rules.inside(check, TARGET, (TLS,), True)[0] == "ok"
    assert rules.inside(sni_check, TARGET, "node.example")[0] == "ok"


def test_an_ip_block_is_named_blocked_ip(rules: Lab) -> None:
    ranges = censor.ranges_of([TARGET])
    censor.enable(rules.t.censor, "ip")
    censor.block(rules.t.censor, ranges)
    try:
        outside = rules.outside_ok(TARGET)
        assert outside
        mechanism, evidence = rules.inside(check, TARGET, (TLS,), outside)
    finally:
        censor.unblock(rules.t.censor, ranges)
    assert mechanism == "blocked-ip", evidence
    assert evidence["other_port"]["stage"] == "tcp" and evidence["control_host"]["ok"]
    # near miss: the control proxy on another address is not blocked
    assert rules.inside(check, CONTROL, (), True)[0] == "ok"


def test_a_socks5_fingerprint_block_is_named_blocked_fingerprint(rules: Lab) -> None:
    censor.enable(rules.t.censor, "socks5")
    mechanism, evidence = rules.inside(check, TARGET, (TLS,), rules.outside_ok(TARGET))
    assert mechanism == "blocked-fingerprint", evidence
    assert evidence["main"]["stage"] == "handshake"
    assert evidence["control_host"]["stage"] == "handshake"


def test_an_sni_block_is_named_blocked_sni(rules: Lab) -> None:
    censor.enable(rules.t.censor, "sni", sni=["node.example"], replace=True)
    mechanism, evidence = rules.inside(sni_check, TARGET, "node.example")
    assert mechanism == "blocked-sni", evidence
    assert evidence["benign_sni"]["ok"]
    assert rules.inside(sni_check, TARGET, "other.example")[0] == "ok"  # near miss


def test_a_whitelist_is_named_whitelisted_out(rules: Lab) -> None:
    censor.enable(rules.t.censor, "whitelist", whitelist=[f"{CONTROL}/32"], replace=True)
    mechanism, evidence = rules.inside(check, TARGET, (TLS,), True, THIRD, CONTROL)
    assert mechanism == "whitelisted-out", evidence
    assert evidence["control_host"]["stage"] == "tcp" and evidence["listed_host"]["ok"]
    # near miss: the listed host itself is reachable and works
    assert rules.inside(check, CONTROL, (), True)[0] == "ok"


def freeze_check(addr: str, canary_key: str) -> tuple[str, Any]:
    """The full check (the canary's 64 KiB download through the proxy) and its controls."""

    async def run() -> tuple[str, Any]:
        network = SocketNetwork()
        canary = Canary(THIRD, CANARY_PORT, parse_public_key(canary_key))
        target = Target(addr, SOCKS, "probe", "pw", 1)
        result = await run_check(target, canary, network, SETTINGS)
        if result.verdict.ok:
            return Mechanism.OK.value, result.received
        evidence, diagnosis = await diagnose_check(
            result, canary=canary, network=network, settings=SETTINGS,
            controls=Controls(outside_ok=True), listed_ok=True,
        )  # fmt: skip
        return diagnosis.mechanism.value, evidence.to_json()

    return asyncio.run(run())


def test_a_freeze_is_named_frozen_with_its_byte_count(rules: Lab) -> None:
    censor.enable(
        rules.t.censor, "freeze", freeze_prefixes=[f"{TARGET}/24"], freeze_bytes=16384,
        replace=True,
    )  # fmt: skip
    mechanism, evidence = rules.inside(freeze_check, TARGET, rules.canary_key)
    assert mechanism == "frozen", evidence
    assert evidence["main"]["stage"] == "transfer"
    assert 8_000 <= evidence["main"]["received"] <= 16384
    # near miss: another prefix is not frozen (the whole download comes)
    assert rules.inside(freeze_check, CONTROL, rules.canary_key)[0] == "ok"


def freeze_behind_fingerprint_check(addr: str, canary_key: str) -> tuple[str, str, Any]:
    """The agent's plain check and, beside it, the node's TLS listener measured with
    the round's canary (tls_reach): the plain mechanism, the TLS one, its evidence."""

    async def run() -> tuple[str, str, Any]:
        network = SocketNetwork()
        canary = Canary(THIRD, CANARY_PORT, parse_public_key(canary_key))
        result = await run_check(Target(addr, SOCKS, "probe", "pw", 1), canary, network, SETTINGS)
        evidence, tls = await tls_reach(
            result, TLS, seconds=SETTINGS.step_timeout, outside_ok=True, canary=canary,
            settings=SETTINGS,
        )  # fmt: skip
        _, plain = await diagnose_check(
            result, canary=canary, network=network, settings=SETTINGS,
            controls=Controls(other_ports=(TLS,), control=Target(CONTROL, SOCKS, "probe", "pw"),
                              outside_ok=True),
            listed_ok=True,
        )  # fmt: skip
        return plain.mechanism.value, f"{tls.mechanism.value} {tls.frozen_at}", evidence.to_json()

    return asyncio.run(run())


def test_a_freeze_behind_the_socks5_fingerprint_is_named_over_tls(rules: Lab) -> None:
    """The fingerprint rule stops the plain check's download before any freeze; the
    big-transfer control over the node's TLS listener (a browser's hello) gets
    through and names the freeze with its byte count."""
    censor.enable(rules.t.censor, "socks5")
    plain, tls, evidence = rules.inside(freeze_behind_fingerprint_check, TARGET, rules.canary_key)
    # near miss: without a freeze the same control carries the whole download
    assert plain == "blocked-fingerprint" and tls == "ok None", evidence
    assert evidence["big_transfer"]["ok"]
    censor.enable(
        rules.t.censor, "freeze", freeze_prefixes=[f"{TARGET}/32"], freeze_bytes=16384,
    )  # fmt: skip
    plain, tls, evidence = rules.inside(freeze_behind_fingerprint_check, TARGET, rules.canary_key)
    assert plain == "blocked-fingerprint", evidence
    mechanism, frozen_at = tls.split()
    assert mechanism == "frozen", evidence
    assert evidence["main"]["ok"] and evidence["big_transfer"]["stage"] == "transfer"
    assert 8_000 <= int(frozen_at) <= 16384


def nameless_hello(addr: str, port: int) -> bool:
    """A TLS dial naming no server, as an old client dialling by address sent it."""
    return asyncio.run(tls_attempt(addr, port, None, SETTINGS.step_timeout)).ok


def test_an_address_blocked_after_an_active_probe_is_named_probed(rules: Lab) -> None:
    censor.enable(rules.t.censor, "active-probe", probe_block_seconds=60)
    try:
        assert rules.inside(check, TARGET, (TLS,), True)[0] == "ok"
        # near miss: a hello naming no server to the node's TLS listener sends the
        # censor's prober there, and it finds an ordinary website: nothing goes dark
        before = len(censor.report(rules.t.censor)["probes"])
        rules.inside(nameless_hello, TARGET, TLS)
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline and len(censor.report(rules.t.censor)["probes"]) == before
        ):
            time.sleep(0.3)
        assert [p["verdict"] for p in censor.report(rules.t.censor)["probes"][before:]] == [
            "website"
        ]
        # the probe's own check of a TLS service on that host that is no website (a node
        # that fronted none), dialled by address as an old client did: its first
        # connection goes through and sends the prober there, which blocks the address
        assert rules.inside(nameless_hello, TARGET, NOT_WEBSITE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and rules.inside(netns.tcp_open, TARGET, SOCKS, 1.0):
            time.sleep(0.3)
        # its retry seconds later, on the node's SOCKS5 port: the address went dark
        # during the check
        mechanism, evidence = rules.inside(check, TARGET, (TLS,), True, CONTROL, None, True)
        assert mechanism == "probed", evidence
        assert evidence["first_ok"] and evidence["other_port"]["stage"] == "tcp"
        # near miss: without this check's own connection before it (a passing check in
        # an earlier round is no evidence), the same darkness is an IP block
        assert rules.inside(check, TARGET, (TLS,), True)[0] == "blocked-ip"
    finally:
        censor.disable(rules.t.censor, "active-probe")
        netns.in_ns(rules.t.censor, "nft", "flush", "set", "inet", censor.TABLE, "probed4")


def test_the_clients_browser_hello_passes_the_hello_rule_the_old_one_does_not(
    rules: Lab,
) -> None:
    censor.enable(rules.t.censor, "hello")
    assert not rules.inside(hello_passes, TARGET, True)
    assert rules.inside(hello_passes, TARGET, False)
