"""Issue 19: a refused destination is logged at -v with the reason, never the addresses.

A newcomer's first local test (curl through the node to a loopback site) is
refused by design; before, nothing said why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from resistance.proto.socks5 import Reply
from tests.integration.socksclient import SocksFailure, open_socks


def _refused(node: Any, host: str, port: int) -> None:
    with pytest.raises(SocksFailure) as caught:
        open_socks((node.host, node.port), host, port)
    assert caught.value.reply is Reply.NOT_ALLOWED


def _wait_for(node: Any, text: str) -> str:
    deadline = time.monotonic() + 10
    while text not in node.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    return str(node.stderr())


def test_verbose_node_logs_why_without_addresses(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory("--user", "alice:secret", "-v", state_dir=tmp_path / "verbose")
    _refused(node, "127.0.0.1", 8000)
    _refused(node, "169.254.169.254", 80)
    log = _wait_for(node, "link-local")
    refusals = [line for line in log.splitlines() if "refused a destination" in line]
    assert len(refusals) == 2, log
    assert "loopback" in refusals[0] and "--allow" in refusals[0]
    for line in refusals:
        assert "127.0.0.1" not in line and "169.254" not in line and ":8000" not in line


def test_quiet_node_logs_no_refusals(node_factory: Any, tmp_path: Path) -> None:
    node = node_factory("--user", "alice:secret", state_dir=tmp_path / "quiet")
    _refused(node, "127.0.0.1", 8000)
    node.stop()
    assert "refused" not in node.stderr()
