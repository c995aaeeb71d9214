"""The whole story in the lab, asserted step by step (root only; CI runs as root).

One lab serves the module: the steps build on each other exactly as the
story does, so a failure in one shows which part of the system let the user
down.  Everything runs inside the lab's namespaces in 198.18.0.0/15; the lab
is torn down at the end and the test checks nothing of it is left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from resistance.lab import netns
from resistance.lab import topology as topo
from resistance.lab.story import Story
from resistance.lab.world import Lab
from resistance.node.tlscert import CERT_FILE, certificate_sha256, leaf_der
from tests.e2e.labkit import kept_on_failure

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    name = f"e{os.getpid() % 100000}"
    lab = Lab(topo.Topology(name), tmp_path_factory.mktemp("lab"))
    narration: list[str] = []
    lab.up(say=narration.append)
    try:
        with kept_on_failure(lab.topology, lab.dir):
            yield Story(lab, narration.append)
    finally:
        pids = [p.pid for p in lab.processes]
        lab.down()
        assert not set(lab.topology.namespaces) & netns.namespaces()
        assert not [pid for pid in pids if netns.process_start_ticks(pid) is not None]
        # wireguard-go's control socket is on the host: down leaves none behind
        assert not Path(f"/var/run/wireguard/{lab.topology.wg_interface}.sock").exists()
        print("\n".join(narration))


def test_1_data_centre_is_unreachable_directly(story: Story) -> None:
    result = story.step1_blocked_directly()
    assert result.figures["direct_ok"] is False
    assert result.figures["free_side_ok"] is True  # it is up: the censor is what stops it
    assert result.figures["dropped_packets"] > 0


def test_2_nodes_register_and_probes_make_them_functional(story: Story) -> None:
    result = story.step2_register_and_measure()
    expected = {a: "functional" for a in (*topo.NODE_ADDRS, topo.VPN_ADDR)}
    assert result.figures["listed"] == expected  # three SOCKS5 nodes and a WireGuard server
    # each SOCKS5 node's TLS listener is in the signed directory with its certificate pin
    pins = result.figures["tls_pins"]
    assert set(pins) == set(topo.NODE_ADDRS)
    for i, addr in enumerate(topo.NODE_ADDRS, start=1):  # the certificate each node serves
        assert pins[addr] == certificate_sha256(leaf_der(story.lab.dir / f"node-{i}" / CERT_FILE))
    probes = [p for p in story.lab.processes if p.role.startswith("probe-")]
    assert {p.namespace for p in probes} == {story.t.free, story.t.censored}


def test_3_the_user_gets_through_with_resist_connect(story: Story) -> None:
    result = story.step3_connect()
    assert result.figures["ok"] is True
    assert result.figures["active_node"] in (1, 2, 3)
    assert result.figures["via_tls"] is True  # --transport auto: TLS first, pinned
    # and still not directly
    assert story.fetch_directly(seconds=2).ok is False


def test_4_blocking_the_node_in_use_does_not_stop_the_user(story: Story) -> None:
    result = story.step4_block_active()
    assert result.figures["block_to_success_s"] is not None
    assert result.figures["failed_attempts"] == 0  # one slow connect, never an error
    assert result.figures["now_active"] not in (None, result.figures["blocked_node"])
    status = story.connect_status()
    assert status["switches"] >= 1
    # the blocked node really is unreachable from the censored side now
    blocked_addr = topo.NODE_ADDRS[result.figures["blocked_node"] - 1]
    assert not netns.call_in(story.t.censored, netns.tcp_open, blocked_addr, topo.NODE_PORT, 1.0)
    # later connections keep working
    for _ in range(3):
        assert story.fetch_through_connect().ok


def test_5_probes_judge_it_blocked_in_ru_only(story: Story) -> None:
    result = story.step5_verdict()
    blocked = topo.NODE_ADDRS[int(story.lab.info["blocked_node"]) - 1]
    assert result.figures["status"] == "blocked"
    assert result.figures["blocked_in"] == [topo.TARGET_COUNTRY]
    assert result.figures["listed"][blocked] == f"blocked:{topo.TARGET_COUNTRY}"
    others = [a for a in topo.NODE_ADDRS if a != blocked]
    assert all(result.figures["listed"][a] == "functional" for a in others)
    assert result.figures["usable_in_ru"] is False
    assert result.figures["usable_in_nl"] is True


def test_lab_record_lists_every_process(story: Story) -> None:
    roles = {p.role for p in story.lab.processes}
    assert {"datacentre", "registry", "node-1", "node-2", "node-3", "connect"} <= roles
    assert all(p.alive() for p in story.lab.processes)
    reloaded = Lab.load(story.lab.dir, story.lab.topology.name)
    assert [p.pid for p in reloaded.processes] == [p.pid for p in story.lab.processes]


def test_6_a_grant_round_pays_for_verified_service_and_electrum_signs(story: Story) -> None:
    import bdkpython as bdk

    from resistance.lab import funder

    result = story.step6_grants()
    f = result.figures
    blocked = int(story.lab.info["blocked_node"])
    others = [n for n in (1, 2, 3, 4) if n != blocked]  # 4: the WireGuard server, paid alike
    assert f["verified"] is True  # registry signature good, awards recompute the same
    # the blocked node earned for the checks before its block, less than the others
    assert 0 < f["reach_fraction"][blocked] < 1
    assert all(f["reach_fraction"][n] == 1 for n in others)
    assert 0 < f["awards"][blocked] < min(f["awards"][n] for n in others)
    round_ = f["round"]
    settings = round_.settings
    assert (
        sum(a.amount_sat + a.carried_out_sat for a in round_.result.awards)
        + (round_.result.returned_sat + settings.fee_reserve_sat)
        == settings.budget_sat
    )
    # Electrum's transaction is final (not a PSBT) and pays every award exactly
    tx = bdk.Transaction(bytes.fromhex(f["signed_tx"]))
    assert all(txin.witness for txin in tx.input())
    outputs = {
        str(bdk.Address.from_script(o.script_pubkey, bdk.Network.REGTEST)): o.value.to_sat()
        for o in tx.output()
    }
    for node, amount in f["awards"].items():
        assert outputs[funder.payee_address(node)] == amount
    view = story.lab.api("GET", "/api/v1/grants/rounds/lab")
    assert view["status"] == "paid"
    assert view["txid"] == str(tx.compute_txid())


def test_7_the_telegram_app_gets_through_an_mtproto_proxy(story: Story) -> None:
    result = story.step7_telegram()
    assert result.figures["direct_ok"] is False  # the data centre is still blocked
    assert result.figures["via_proxy_ok"] is True  # the tg://proxy link gets through
    # the probes inside RU and in NL check it as the app does (fake-TLS, req_pq_multi)
    assert result.figures["probe_status"] == "functional"
