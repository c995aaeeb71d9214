"""The story under an escalating censor, asserted step by step (root only; CI runs as root).

The lab's first three steps (data centre blocked, nodes registered and measured,
the user through with resist connect), then the censor of today switches on
its rules one after another (lab.escalate, what ``resist lab demo --escalate``
narrates): the node in use's address, the SOCKS5 greeting, the server name of
the client's hello, that hello's fingerprint, a freeze, active probing, and a
whitelist.  Before the escalation a cascade is set up (step 7: an exit abroad
on no list, a bridge on domestic hosting, both registered; the directory lists
the bridge, never the exit; resist connect learns it).  After each step the
user's application gets through again and the probes inside the censored
network name the mechanism that blocked each node; under the whitelist both
users (the application and the Telegram-like client) get through bridge →
exit, and when the hop's hello is fingerprinted (15) the bridge takes another
without an error reaching either.  Recovery times are printed, never asserted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator

import pytest

from resistance.keyfile import parse_credential
from resistance.lab import cascade, netns
from resistance.lab import topology as topo
from resistance.lab.escalate import EscalatingStory, Escalation
from resistance.lab.world import Lab
from resistance.node.users import GENERATED_USERS_FILE
from tests.e2e.labkit import kept_on_failure

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EscalatingStory]:
    name = f"x{os.getpid() % 100000}"
    lab = Lab(topo.Topology(name), tmp_path_factory.mktemp("lab"))
    narration: list[str] = []
    lab.up(say=narration.append)
    try:
        with kept_on_failure(lab.topology, lab.dir):
            yield EscalatingStory(lab, narration.append)
    finally:
        lab.down()
        assert not set(lab.topology.namespaces) & netns.namespaces()
        print("\n".join(narration))


def mechanisms(step: Escalation, node: int) -> dict[str, str]:
    """The verdict on node, per transport (from ``transport mechanism`` pairs)."""
    pairs = (part.split(" ", 1) for part in step.verdicts[node].split("; ")[0].split(", "))
    return {transport: mechanism for transport, mechanism in pairs}


def test_setup_the_user_gets_through(story: EscalatingStory) -> None:
    assert story.step1_blocked_directly().outcome == "blocked"
    story.step2_register_and_measure()
    assert story.step3_connect().figures["via_tls"] is True


def test_7_a_cascade_is_registered_and_learned(story: EscalatingStory) -> None:
    result = story.step7_cascade()
    figures = result.figures
    assert figures["bridge_listed"] and not figures["exit_published"], figures
    assert figures["learned"], story.connect_status().get("ladder")
    assert not story.via_bridge()  # nodes abroad work: the bridge is kept for later
    # The exit's first user is the bridge's hop credential: no log of the lab shows it
    # (the exit's banner, in cascade-exit.log, masks it).
    exit_toml = story.lab.dir / cascade.EXIT_ROLE / "exit.toml"
    (hop_password,) = tomllib.loads(exit_toml.read_text())["users"].values()
    banner = story.lab.log_text(cascade.EXIT_ROLE)
    assert "listening on socks5s://" in banner and "pass=********" in banner, banner
    # Nor the password of the user the bridge generated for its own users (its banner,
    # in cascade-bridge.log, masks it too).
    bridge_users = story.lab.dir / cascade.BRIDGE_ROLE / GENERATED_USERS_FILE
    _, bridge_password = parse_credential(bridge_users.read_bytes())
    assert "pass=********" in story.lab.log_text(cascade.BRIDGE_ROLE)
    for log in (story.lab.dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert hop_password not in text, log.name
        assert bridge_password not in text, log.name


def test_8_an_ip_block_of_the_node_in_use(story: EscalatingStory) -> None:
    before = story.active_node()
    step = story.step8_ip()
    assert step.recovered_s is not None
    assert step.blocked == [before] and step.via != before
    # both ports' verdict is the address block (the plain port's check passed seconds
    # before: no evidence of an active probe, which needs this check's own flow first)
    assert mechanisms(step, before) == {"socks5": "blocked-ip", "tls": "blocked-ip"}, step.verdicts


def test_9_the_socks5_fingerprint(story: EscalatingStory) -> None:
    step = story.step9_socks5()
    assert step.recovered_s is not None and story.via_tls()
    for node in step.blocked:
        assert mechanisms(step, node)["socks5"] == "blocked-fingerprint", step.verdicts


def test_10_the_server_name_of_the_node_in_use(story: EscalatingStory) -> None:
    before = story.active_node()
    step = story.step10_sni()
    assert step.recovered_s is not None and step.via != before
    assert mechanisms(step, before)["tls"] == "blocked-sni", step.verdicts


def test_11_the_fingerprint_of_the_clients_hello(story: EscalatingStory) -> None:
    step = story.step11_hello()
    assert step.recovered_s is not None
    (node,) = step.blocked
    assert mechanisms(step, node)["tls"] == "blocked-fingerprint", step.verdicts


def test_12_a_freeze_of_the_node_in_use(story: EscalatingStory) -> None:
    """The application's requests are small: they get through.  The socks5 rule stops
    the probes' plain check before any freeze; their big-transfer control over the
    node's TLS listener (a browser's hello) names the freeze."""
    step = story.step12_freeze()
    assert step.recovered_s is not None
    (node,) = step.blocked
    assert mechanisms(step, node)["tls"] == "frozen", step.verdicts


def test_13_active_probing_finds_ordinary_websites(story: EscalatingStory) -> None:
    step = story.step13_active_probe()
    assert step.recovered_s is not None
    probed = [p for p in step.probes if p.get("address") in topo.NODE_ADDRS]
    assert probed and all(p["verdict"] == "website" for p in probed), probed
    assert step.blocked == []


def test_14_the_whitelist_is_survived_through_the_bridge_by_both_users(
    story: EscalatingStory,
) -> None:
    step = story.step14_whitelist()
    assert step.recovered_s is not None and step.via_bridge
    assert step.telegram_s is not None
    for node in step.blocked:
        assert "whitelisted-out" in mechanisms(step, node).values(), step.verdicts
    # The plain hop's greeting has been fingerprinted since step 9: the bridge met it
    # and carried the connections over its TLS hop.
    assert step.figures["hop_plain_failures"] >= 1 and step.figures["hop_tls_hellos"] >= 1


def test_15_the_hops_hello_fingerprinted_the_bridge_takes_another(
    story: EscalatingStory,
) -> None:
    step = story.step15_hop_hello()
    assert step.recovered_s is not None and step.telegram_s is not None
    assert step.figures["hop_hellos_dropped"] >= 1, step.figures
    assert step.figures["failed_requests"] == 0, step.figures
    print({s.rule: (s.recovered_s, s.telegram_s) for s in story.escalations})
