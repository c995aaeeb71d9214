"""The ladder: order untried, what it learns per network, persistence and its bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.client import ladder as ladder_module
from resistance.client.ladder import (
    FAILED,
    TRANSPORTS,
    UNTRIED,
    WORKS,
    Ladder,
    current_network,
    network_from_route,
    pair_key,
    parse_ladder,
)
from resistance.client.upstreams import Upstream, UpstreamPool
from resistance.errors import ConfigError

PIN = "ab" * 32
A_TLS = Upstream("192.0.2.1", 443, "u", "p", tls_sha256=PIN)
A_PLAIN = Upstream("192.0.2.1", 1080, "u", "p")
B_TLS = Upstream("198.51.100.2", 443, "u", "p", tls_sha256=PIN)
B_PLAIN = Upstream("198.51.100.2", 1080, "u", "p")
ALL = [A_PLAIN, B_PLAIN, A_TLS, B_TLS]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_the_ladder_lists_each_transport_once_and_plain_socks5_last() -> None:
    names = [t.name for t in TRANSPORTS]
    assert len(names) == len(set(names))
    assert names[0] == "tls" and names[-1] == "socks5"
    rung = {t.name: t for t in TRANSPORTS}["mtproto-faketls"]
    assert rung.usable and names.index("mtproto-faketls") == 1  # between TLS and plain


def test_untried_the_ladder_order_holds() -> None:
    ladder = Ladder(None, "home")
    assert sorted(ALL, key=ladder.rank)[:2] == [A_TLS, B_TLS]
    pool = UpstreamPool(ALL, ladder=ladder)
    assert pool.order(0.0) == [A_TLS, B_TLS, A_PLAIN, B_PLAIN]


def test_what_got_through_here_goes_first_and_failures_last(tmp_path: Path) -> None:
    clock = Clock()
    ladder = Ladder(tmp_path / "ladder.json", "mobile", clock=clock)
    pool = UpstreamPool(ALL, ladder=ladder)
    pool.failed(A_TLS, "handshake timed out", now=0.0)
    pool.failed(B_TLS, "handshake timed out", now=0.0)
    pool.succeeded(B_PLAIN, 0.05, now=0.0)
    # even once A_TLS's and B_TLS's backoff is over, the plain port that got through leads
    assert pool.order(10_000.0) == [B_PLAIN, A_PLAIN, A_TLS, B_TLS]
    assert [ladder.state(u) for u in (B_PLAIN, A_PLAIN, A_TLS)] == [WORKS, UNTRIED, FAILED]
    # one success moves a failed transport back up, above plain again
    pool.succeeded(A_TLS, 0.05, now=10_000.0)
    assert pool.order(10_000.0)[0] == A_TLS


def test_learning_survives_a_restart_and_stays_per_network(tmp_path: Path) -> None:
    path = tmp_path / "ladder.json"
    first = Ladder(path, "mobile", clock=Clock())
    first.record(A_TLS, ok=False, error="no answer in 3 s")
    first.record(A_PLAIN, ok=True)
    again = Ladder(path, "mobile", clock=Clock())
    assert again.state(A_TLS) == FAILED and again.state(A_PLAIN) == WORKS
    assert again.here[pair_key(A_TLS)].error == "no answer in 3 s"
    elsewhere = Ladder(path, "home-wifi", clock=Clock())
    assert elsewhere.state(A_TLS) == UNTRIED
    assert sorted(ALL, key=elsewhere.rank)[0] == A_TLS
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_only_changes_of_state_are_written(tmp_path: Path) -> None:
    ladder = Ladder(tmp_path / "ladder.json", "home", clock=Clock())
    for _ in range(50):
        ladder.record(A_TLS, ok=True)
    assert ladder.saves == 1
    ladder.record(A_TLS, ok=False, error="reset")
    ladder.record(A_TLS, ok=False, error="reset")
    assert ladder.saves == 2


def test_a_damaged_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "ladder.json"
    path.write_text('{"format": "resist-ladder/1", "networks": {"x": {"k": {"ok_at": "soon"}}}}')
    ladder = Ladder(path, "home")
    assert ladder.state(A_TLS) == UNTRIED
    assert (tmp_path / "ladder.json.damaged").exists() and not path.exists()


def test_bounded_entries_and_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ladder_module, "MAX_ENTRIES", 4)
    monkeypatch.setattr(ladder_module, "MAX_NETWORKS", 3)
    path = tmp_path / "ladder.json"
    clock = Clock()
    ladder = Ladder(path, "n0", clock=clock)
    for port in range(10):
        ladder.record(Upstream("192.0.2.1", 1000 + port), ok=bool(port % 2))
    assert len(ladder.here) == 4
    assert pair_key(Upstream("192.0.2.1", 1009)) in ladder.here  # the newest stay
    for n in range(1, 6):
        Ladder(path, f"n{n}", clock=clock).record(A_TLS, ok=True)
    kept = json.loads(path.read_text())["networks"]
    assert len(kept) <= 3 and "n5" in kept and "n0" not in kept


ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
)
ARP = (
    "IP address       HW type     Flags       HW address            Mask     Device\n"
    "10.0.0.1         0x1         0x2         AA:bb:cc:00:11:22     *        eth0\n"
)


def test_the_network_is_named_from_the_default_route_with_least_metric() -> None:
    assert network_from_route(ROUTE, ARP) == "eth0/10.0.0.1@aa:bb:cc:00:11:22"
    assert network_from_route(ROUTE) == "eth0/10.0.0.1"
    assert network_from_route(ROUTE.splitlines()[0]) is None
    assert current_network("home-wifi") == "home-wifi"
    assert current_network()  # this machine's name, or "unrouted"
    with pytest.raises(ConfigError):
        current_network("no spaces please")


@given(st.text(max_size=400), st.text(max_size=200))
def test_any_route_table_gives_a_valid_name_or_none(route: str, arp: str) -> None:
    name = network_from_route(route, arp)
    assert name is None or Ladder(None, name).network == name


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                     max_size=3),
        max_leaves=10,
    )
)  # fmt: skip
def test_parsing_any_json_gives_networks_or_value_error(raw: object) -> None:
    try:
        parse_ladder({"format": "resist-ladder/1", "networks": {"home": {"k": raw}}})
        parse_ladder(raw)
    except ValueError:
        pass


def test_the_directorys_reach_orders_what_was_not_tried_here() -> None:
    ladder = Ladder(None, "msk-mobile")
    ladder.hint({pair_key(A_TLS): "blocked-fingerprint", pair_key(B_PLAIN): "ok"})
    assert sorted(ALL, key=ladder.rank) == [B_PLAIN, B_TLS, A_PLAIN, A_TLS]
    # the client's own experience comes first, whatever the probes said
    ladder.record(A_TLS, ok=True)
    ladder.record(B_PLAIN, ok=False, error="reset")
    assert sorted(ALL, key=ladder.rank) == [A_TLS, B_TLS, A_PLAIN, B_PLAIN]
    assert {r["upstream"]: r["probes"] for r in ladder.rows(ALL)}[A_TLS.label] == (
        "blocked-fingerprint"
    )


def test_reach_hints_read_the_directory_for_this_network_only() -> None:
    from resistance.client.directory import reach_hints

    entry = {
        "endpoint": {"host": "192.0.2.1", "port": 1080}, "protocols": ["socks5"],
        "credentials": [{"username": "u", "password": "p"}], "node_key": None, "status": "up",
        "tls": {"port": 443, "sha256": PIN},
        "measurements": {"reach": {"msk-mobile": {"socks5": "blocked-fingerprint", "tls": "ok"},
                                   "spb-home": {"socks5": "ok"}}},
    }  # fmt: skip
    document = {"proxies": [entry, {"junk": True}, "not an entry"]}
    hints = reach_hints(document, "msk-mobile")
    assert hints == {pair_key(A_TLS): "ok", pair_key(A_PLAIN): "blocked-fingerprint"}
    assert reach_hints(document, "spb-home") == {pair_key(A_PLAIN): "ok"}
    assert reach_hints(document, "elsewhere") == {}
    assert reach_hints({"proxies": "nope"}, "msk-mobile") == {}


@given(
    st.lists(st.tuples(st.sampled_from(ALL), st.booleans()), max_size=40),
    st.dictionaries(st.sampled_from([pair_key(u) for u in ALL]),
                    st.sampled_from(["ok", "blocked-ip", "frozen"]), max_size=4),
)  # fmt: skip
def test_any_history_orders_works_then_untried_then_failed(
    history: list[tuple[Upstream, bool]], hints: dict[str, str]
) -> None:
    ladder = Ladder(None, "prop", clock=Clock())
    ladder.hint(hints)
    for upstream, ok in history:
        ladder.record(upstream, ok=ok, error="" if ok else "x")
    order = [ladder.state(u) for u in sorted(ALL, key=ladder.rank)]
    rank = {WORKS: 0, UNTRIED: 1, FAILED: 2}
    assert order == sorted(order, key=rank.__getitem__)
    # the last outcome recorded for an upstream is its state here
    last = dict(history)
    for upstream in ALL:
        expected = UNTRIED if upstream not in last else (WORKS if last[upstream] else FAILED)
        assert ladder.state(upstream) == expected
