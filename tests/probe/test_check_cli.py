"""`resist probe check` with controls, on 127.0.0.1: a failed check says why."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def probe_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resistance", "probe", "check", *args, "--step-timeout", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_failed_check_names_the_mechanism_from_its_controls(node_factory: Any) -> None:
    control = node_factory("--user", "u:p")
    dark, other = closed_port(), closed_port()
    url = f"socks5://u:p@127.0.0.1:{dark}"
    controls = ("--other-port", str(other), "--control", f"socks5://u:p@127.0.0.1:{control.port}")
    blocked = probe_check(url, *controls, "--outside", "ok")
    assert blocked.returncode == 1, blocked.stderr
    assert "why: blocked-ip" in blocked.stdout
    assert "control_host  ok" in blocked.stdout
    down = probe_check(url, *controls, "--outside", "failed")
    assert "why: down" in down.stdout
    unsure = probe_check(url)  # no controls: nothing can be named
    assert "why: inconclusive" in unsure.stdout
    fine = probe_check(f"socks5://u:p@127.0.0.1:{control.port}")
    assert fine.returncode == 0 and "why:" not in fine.stdout
