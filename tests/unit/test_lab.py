"""The lab's pure parts: names, the build plan, the censor's nft statements, the stand-in."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.config import Endpoint
from resistance.lab import censor, datacentre, netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.world import require_root
from resistance.registry.blocklist import V4_OFFSET, merge_ranges, parse_prefix


@pytest.mark.parametrize("name", ["rlab", "e12345", "a", "lab-2"])
def test_good_lab_names(name: str) -> None:
    t = topo.Topology(name)
    assert t.namespaces == (
        f"{name}-censored", f"{name}-censor", f"{name}-free", f"{name}-domestic",
    )  # fmt: skip


def test_interface_names_fit_and_differ_between_labs() -> None:
    longest = topo.Topology("a" * topo.MAX_NAME)
    assert len(longest.wg_interface) <= 15  # IFNAMSIZ - 1
    assert topo.Topology("one").wg_interface != topo.Topology("two").wg_interface


@pytest.mark.parametrize("name", ["", "9lab", "toolongname", "a b", "lab/x", "läb", "-x"])
def test_bad_lab_names(name: str) -> None:
    with pytest.raises(ValueError, match="lab name"):
        topo.Topology(name)


def test_build_plan_touches_only_the_labs_namespaces() -> None:
    t = topo.Topology("x1")
    lab_ns = set(t.namespaces)
    for cmd in t.build_commands():
        assert cmd[0] == "ip"
        if cmd[1] == "netns":
            assert cmd[3] in lab_ns
        elif cmd[1] == "-n":
            assert cmd[2] in lab_ns
        else:  # a veth pair, made with both ends inside lab namespaces
            assert cmd[1:3] == ["link", "add"]
            peers = {"eth0": [t.censored, t.censor], "outside": [t.censor, t.free],
                     "domestic": [t.censor, t.domestic]}  # fmt: skip
            assert [cmd[i + 1] for i, w in enumerate(cmd) if w == "netns"] == peers[cmd[3]]


def test_every_lab_address_is_in_the_benchmarking_range() -> None:
    lab = ipaddress.ip_network(topo.LAB_RANGE)
    addrs = [topo.USER_ADDR, topo.CENSOR_INSIDE, topo.CENSOR_OUTSIDE, topo.FREE_UPLINK,
             topo.REGISTRY_ADDR, topo.DATACENTRE_ADDR, topo.VPN_ADDR,
             topo.CENSOR_DOMESTIC, topo.BRIDGE_ADDR, *topo.NODE_ADDRS]  # fmt: skip
    assert all(ipaddress.ip_address(a) in lab for a in addrs)
    assert ipaddress.ip_address(topo.DATACENTRE_ADDR) in ipaddress.ip_network(topo.DATACENTRE_RANGE)
    assert ipaddress.ip_address(topo.BRIDGE_ADDR) in ipaddress.ip_network(topo.DOMESTIC_NET)
    # one /24 per node, so the grant rule's network cap sees three networks
    assert len({ipaddress.ip_network(f"{a}/24", strict=False) for a in topo.NODE_ADDRS}) == 3


def test_ruleset_drops_both_directions_for_both_families() -> None:
    text = censor.ruleset()
    for rule in ("ip daddr @blocked4", "ip saddr @blocked4", "ip6 daddr @blocked6",
                 "ip6 saddr @blocked6"):  # fmt: skip
        assert f"{rule} counter drop" in text
    for family, name in (("ipv4", "blocked4"), ("ipv6", "blocked6")):
        assert f"set {name} {{ type {family}_addr; flags interval; auto-merge; }}" in text


ELEMENT = re.compile(r"add element inet resist_censor (blocked[46]) \{ (.*) \}")


def _parse_statements(statements: list[str]) -> list[tuple[int, int]]:
    found = []
    for s in statements:
        m = ELEMENT.fullmatch(s.strip())
        assert m, s
        for element in m.group(2).split(", "):
            first, _, last = element.partition("-")
            a = parse_prefix(first)[0]
            b = parse_prefix(last)[0] if last else a
            assert (a >= V4_OFFSET) == (m.group(1) == "blocked4")
            found.append((a, b))
    return found


v4_prefix = st.builds(
    lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}",
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)
v6_prefix = st.builds(
    lambda a, n: f"{ipaddress.IPv6Address(a)}/{n}",
    st.integers(0, 2**128 - 1),
    st.integers(16, 128),
)


@given(st.lists(st.one_of(v4_prefix, v6_prefix), max_size=60))
def test_element_statements_cover_exactly_the_merged_prefixes(prefixes: list[str]) -> None:
    ranges = censor.ranges_of(prefixes)
    statements = list(censor.element_statements(ranges))
    assert sorted(_parse_statements(statements)) == merge_ranges(ranges)


def test_large_lists_are_chunked() -> None:
    ranges = [parse_prefix(f"10.{i // 256}.{i % 256}.0/32") for i in range(censor.CHUNK * 2 + 5)]
    statements = list(censor.element_statements(ranges))
    assert len(statements) == 3
    assert len(_parse_statements(statements)) == censor.CHUNK * 2 + 5


def test_a_bad_prefix_is_one_clear_error() -> None:
    with pytest.raises(LabError, match=re.escape("cannot block '10.0.0.0/33'")):
        censor.ranges_of(["10.0.0.1", "10.0.0.0/33"])
    with pytest.raises(LabError, match="holds no address"):
        censor.ranges_from_file(b"# nothing\nnot-an-address\n", "empty.lst")


def test_file_formats_the_registry_imports() -> None:
    dump = (
        "Updated: 2018-04-16 12:00:00 +0000\n"
        "198.18.10.1 | 198.18.11.0/24;t.me;;;27-31-2018/Ид4090-18;2018-04-16\n"
    )
    ranges, count, skipped = censor.ranges_from_file(dump.encode("cp1251"), "dump.csv")
    assert (count, skipped) == (2, 0)
    assert merge_ranges(ranges) == merge_ranges(censor.ranges_of(["198.18.10.1", "198.18.11.0/24"]))


def test_process_start_ticks() -> None:
    assert isinstance(netns.process_start_ticks(os.getpid()), int)
    assert netns.process_start_ticks(2**22 + 12345) is None


def test_the_lab_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        require_root()


async def test_datacentre_stand_in_answers_http_and_echoes() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: dc\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == datacentre.http_answer()
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xef\xef\xef\xef mtproto-ish")
        assert await asyncio.wait_for(reader.readexactly(16), 5) == b"\xef\xef\xef\xef mtproto-ish"
        writer.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_demo_ends_with_the_dashboard_address_inside_the_lab() -> None:
    from resistance.lab.cli import dashboard_line

    t = topo.Topology("rlab")
    kept = dashboard_line(t, keep=True)
    assert f"http://{topo.REGISTRY_ADDR}:{topo.REGISTRY_PORT}/ui/" in kept
    assert f"ip netns exec {t.free} " in kept
    assert "--keep" in dashboard_line(t, keep=False)
