"""`resist lab up|status|block|down` as a user runs them (root only).

Also checks the promises of ``down``: no namespace, link or process left,
even when asked twice, and that ``up`` will not build over a running lab.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resistance.lab import netns
from resistance.lab import topology as topo
from resistance.lab.errors import LabError
from resistance.lab.world import Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
    pytest.mark.timeout(300),
]


def resist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resistance", "lab", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_up_block_from_a_censor_file_status_and_down(tmp_path: Path) -> None:
    name = f"w{os.getpid() % 100000}"
    common = ("--name", name)
    state = ("--state-dir", str(tmp_path))
    up = resist("up", *common, *state)
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {name} is up" in up.stdout
        t = topo.Topology(name)
        assert set(t.namespaces) <= netns.namespaces()
        # nothing of the lab is visible in the host's own namespace
        host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert " inside" not in host_links and " outside" not in host_links

        again = resist("up", *common, *state)
        assert again.returncode == 2
        assert again.stderr.strip() == (
            f"resist: error: lab {name} is already up: `resist lab down` removes it"
        )

        node1, node3 = topo.NODE_ADDRS[0], topo.NODE_ADDRS[2]
        reach = lambda addr: netns.call_in(  # noqa: E731
            t.censored, netns.tcp_open, addr, topo.NODE_PORT, 1.0
        )
        assert reach(node1) and reach(node3)

        # Roskomnadzor's dump format, windows-1251, with node-3 among 20,000 other prefixes
        rng = random.Random(7)
        lines = ["Updated: 2018-04-16 12:00:00 +0000"]
        for i in range(20_000):
            a = rng.getrandbits(24)
            lines.append(f"10.{a >> 16}.{(a >> 8) & 255}.{a & 255};;;;Ид{i};2018-04-16")
        lines.append(f"{node3} | 198.18.12.0/30;t.me;;;27-31-2018/Ид4090-18;2018-04-16")
        dump = tmp_path / "dump.csv"
        dump.write_bytes("\n".join(lines).encode("cp1251"))
        blocked = resist("block", "--file", str(dump), *common)
        assert blocked.returncode == 0, blocked.stderr
        assert "20002 prefixes, 0 bad lines skipped" in blocked.stdout
        assert not reach(node3)
        assert reach(node1)

        bad = resist("block", "198.18.12.0/33", *common)
        assert bad.returncode == 2 and bad.stderr.startswith("resist: error: cannot block")

        status = resist("status", *common, *state)
        assert status.returncode == 0, status.stderr
        for role in ("datacentre", "registry", "node-1", "node-2", "node-3", "control-proxy"):
            assert role in status.stdout
        assert "gone" not in status.stdout
        assert "packets dropped" in status.stdout
        pids = [p.pid for p in Lab.load(tmp_path / "lab" / name, name).processes]
        assert len(pids) == 6  # with the probes' control proxy
    finally:
        down = resist("down", *common, *state)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == f"lab {name} is down: 6 processes stopped, 4 namespaces removed"
    assert not set(topo.Topology(name).namespaces) & netns.namespaces()
    assert all(netns.process_start_ticks(pid) is None for pid in pids)
    twice = resist("down", *common, *state)
    assert twice.stdout.strip() == f"lab {name} is down: 0 processes stopped, 0 namespaces removed"


def test_a_failed_up_leaves_nothing_behind(tmp_path: Path) -> None:
    """A node that exits at start (bad configuration) fails ``up``, which cleans up."""
    name = f"f{os.getpid() % 100000}"
    lab = Lab(topo.Topology(name), tmp_path)
    original = Lab.start

    def start(self: Lab, role: str, namespace: str, args: list[str], **kw: Any) -> Any:
        if role == "node-2":
            args = [*args, "--max-connections", "0"]
        return original(self, role, namespace, args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Lab, "start", start)
        with pytest.raises(LabError, match=r"node-2 exited at start: .*max-connections"):
            lab.up()
    assert not set(lab.topology.namespaces) & netns.namespaces()
    assert lab.processes == []


def test_blocking_in_a_lab_that_is_not_up_is_one_clear_error() -> None:
    name = f"n{os.getpid() % 100000}"
    for command in ("block", "unblock"):
        done = resist(command, "198.18.10.1", "--name", name)
        assert done.returncode == 2
        assert done.stderr.strip() == (
            f"resist: error: lab {name} is not up (`resist lab up --name {name}` builds it)"
        )
