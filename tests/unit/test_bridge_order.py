"""`resist connect` and bridges (issue 24): last where nodes abroad work, first where the
network is whitelisted."""

from __future__ import annotations

from resistance.client.directory import upstreams_from
from resistance.client.upstreams import Upstream, UpstreamPool

ABROAD = [Upstream("203.0.113.1", 443), Upstream("203.0.113.2", 443)]
BRIDGE = Upstream("198.51.100.20", 443, bridge=True)


def test_a_bridge_goes_last_while_nodes_abroad_work() -> None:
    pool = UpstreamPool([BRIDGE, *ABROAD])
    assert pool.order(now=0)[-1] == BRIDGE
    pool.succeeded(ABROAD[0], 0.05, now=0)
    assert pool.order(now=0)[-1] == BRIDGE and not pool.whitelisted


def test_a_whitelist_puts_bridges_first_until_a_node_abroad_works_again() -> None:
    pool = UpstreamPool([*ABROAD, BRIDGE])
    pool.failed(ABROAD[0], "timeout", now=0)
    pool.succeeded(BRIDGE, 0.01, now=0)  # one node abroad not tried yet: no conclusion
    assert not pool.whitelisted
    pool.failed(ABROAD[1], "timeout", now=0)
    pool.succeeded(BRIDGE, 0.01, now=0)
    assert pool.whitelisted
    # Even once the nodes abroad have rested, the bridge stays first.
    assert pool.order(now=1000)[0] == BRIDGE
    pool.succeeded(ABROAD[1], 0.05, now=1000)
    assert not pool.whitelisted and pool.order(now=1000)[-1] == BRIDGE


def test_only_bridges_do_not_make_a_whitelist() -> None:
    pool = UpstreamPool([BRIDGE])
    pool.succeeded(BRIDGE, 0.01, now=0)
    assert not pool.whitelisted and pool.order(now=0) == [BRIDGE]


def test_the_directory_marks_bridges() -> None:
    entry = {
        "endpoint": {"host": "198.51.100.20", "port": 1080},
        "protocols": ["socks5"],
        "credentials": [{"username": "u", "password": "p"}],
        "tls": {"port": 443, "sha256": "ab" * 32},
        "status": "functional",
    }
    document = {"proxies": [entry, {**entry, "bridge": True}, {**entry, "status": "down",
                                                              "bridge": True}]}  # fmt: skip
    found = upstreams_from(document, country="RU")
    assert [u.bridge for u in found] == [False, False, True, True]


def test_a_bridge_blocked_by_its_plain_ports_fingerprint_still_serves_over_tls() -> None:
    """Where the SOCKS5 greeting is fingerprinted the probes judge a bridge blocked by
    its plain port; its TLS listener, seen getting through beside it, stays a bridge
    on the client's ladder (as any node's does), the plain port does not."""
    entry = {
        "endpoint": {"host": "198.51.100.20", "port": 1080},
        "protocols": ["socks5"],
        "credentials": [{"username": "u", "password": "p"}],
        "tls": {"port": 443, "sha256": "ab" * 32},
        "status": "blocked:RU",
        "bridge": True,
        "measurements": {"reach": {"inside-ru-1": {"socks5": "blocked-fingerprint", "tls": "ok"}}},
    }
    found = upstreams_from({"proxies": [entry]}, country="RU")
    assert [(u.port, u.bridge) for u in found] == [(443, True)]
    reach = {"inside-ru-1": {"socks5": "blocked-ip", "tls": "blocked-ip"}}
    gone = {**entry, "measurements": {"reach": reach}}
    assert upstreams_from({"proxies": [gone]}, country="RU") == []
