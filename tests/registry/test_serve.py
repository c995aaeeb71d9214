"""`resist registry serve` as a real process on loopback, driven by the real CLI commands."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

LISTENING = re.compile(r"registry listening on (http://\S+)")
TOKEN = re.compile(r"admin token \(shown once, keep it\): (\S+)")


def resist(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resistance", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.contextmanager
def serve_process(
    state: Path, db_url: str, *extra: str, stderr: Path | None = None, first: bool = True
) -> Iterator[tuple[str, str | None]]:
    """`resist registry serve` on a free loopback port: its URL and, if it is the
    ``first`` on its database, the admin token it printed (later processes print none).

    ``stderr`` collects the process's log (else it is discarded).
    """
    cmd = [
        sys.executable, "-m", "resistance", "registry", "serve", "--listen", "127.0.0.1:0",
        "--state-dir", str(state), "--db", db_url, "--network", "regtest",
        "--publish-interval", "0", "--allow-private-endpoints", *extra,
    ]  # fmt: skip
    with contextlib.ExitStack() as files:
        log = files.enter_context(stderr.open("w")) if stderr else subprocess.DEVNULL
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, stdin=subprocess.DEVNULL
        )
        try:
            yield _started(proc, first)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _started(proc: subprocess.Popen[str], first: bool) -> tuple[str, str | None]:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True).start()
    url = token = None
    deadline = time.monotonic() + 20
    while (url is None or (first and token is None)) and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if m := LISTENING.search(line):
            url = m.group(1)
        if m := TOKEN.search(line):
            token = m.group(1)
    assert url and (token or not first), "registry did not start (no address or token printed)"
    for _ in range(100):  # the token is printed by the lifespan, just before serving
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return url, token


@pytest.fixture
def served(tmp_path: Path, db_url: str) -> Iterator[tuple[str, str, Path]]:
    state = tmp_path / "registry"
    with serve_process(state, db_url) as (url, token):
        assert token is not None
        yield url, token, state


def test_serve_register_publish_verify(
    served: tuple[str, str, Path], node_factory: Any, tmp_path: Path
) -> None:
    url, admin, state = served
    node_state = tmp_path / "node"
    node = node_factory("--user", "alice:secret", state_dir=node_state)
    operator = httpx.post(f"{url}/api/v1/operators", json={"name": "live"}, timeout=10).json()[
        "token"
    ]

    result = resist(
        "registry", "register-node", "--registry", url, "--token", operator,
        "--public-host", "127.0.0.1", "--port", str(node.port), "--public",
        "--state-dir", str(node_state), "--user", "alice:secret",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "registered proxy" in result.stdout and "public" in result.stdout

    result = resist(
        "registry", "register-node", "--registry", url, "--token", "rst_wrong",
        "--public-host", "127.0.0.1", "--port", str(node.port), "--state-dir", str(node_state),
    )  # fmt: skip
    assert result.returncode == 2 and "registry refused (401)" in result.stderr

    published = httpx.post(
        f"{url}/api/v1/directory/publish", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    assert published.status_code == 200 and published.json()["proxies"] == 1
    keys = httpx.get(f"{url}/api/v1/directory/keys", timeout=10).json()["keys"]
    (tmp_path / "dir.json").write_bytes(httpx.get(f"{url}/api/v1/directory", timeout=10).content)
    document = json.loads((tmp_path / "dir.json").read_text())["document"]
    assert document["proxies"][0]["credentials"] == [{"username": "alice", "password": "secret"}]
    assert json.loads((state / "directory.json").read_text())["document"] == document

    verify = ["directory", "verify", str(tmp_path / "dir.json"), "--state-dir", str(tmp_path / "c")]
    result = resist(*verify, "--trust", keys[0]["public_key"])
    assert result.returncode == 0 and "1 proxies" in result.stdout, result.stderr
    result = resist(*verify, "--trust", keys[0]["public_key"], "--threshold", "2")
    assert result.returncode == 1 and "threshold 2" in result.stderr


def test_migrate_command(tmp_path: Path) -> None:
    result = resist("registry", "migrate", "--state-dir", str(tmp_path))
    assert result.returncode == 0 and (tmp_path / "registry.sqlite3").exists()
    result = resist("registry", "migrate", "--db", "mysql://x/y", "--state-dir", str(tmp_path))
    assert (
        result.returncode == 2
        and result.stderr.count("\n") == 1
        and "not supported" in result.stderr
    )


def test_every_command_has_help_with_example() -> None:
    for args in (
        ["registry"], ["registry", "serve"], ["registry", "migrate"], ["registry", "register-node"],
        ["directory"], ["directory", "verify"], ["directory", "cosign"], ["directory", "keygen"],
    ):  # fmt: skip
        result = resist(*args, "--help")
        assert result.returncode == 0 and "Example" in result.stdout, args


def test_operator_commands_publish_keys_and_docs(served: tuple[str, str, Path]) -> None:
    """Issue 19: an operator is made, listed and given a new token by commands, the
    directory is published and its key printed by commands, and the API has docs."""
    url, admin, _state = served
    result = resist("registry", "operator", "create", "alice", "--registry", url)
    assert result.returncode == 0, result.stderr
    first = re.search(r"operator token \(shown once, keep it\): (rst_\S+)", result.stdout)
    assert first and result.stdout.startswith("operator 1 alice\n")
    again = resist("registry", "operator", "create", "alice", "--registry", url)
    assert again.returncode == 2 and "is taken" in again.stderr

    listed = resist("registry", "operator", "list", "--registry", url, "--token", admin)
    assert listed.stdout == "1 alice: 0 proxies, payout address not set\n", listed.stderr
    refused = resist(
        "registry", "operator", "list", "--registry", url, "--token", first.group(1)
    )  # an operator's token is not the admin's
    assert refused.returncode == 2 and "(403)" in refused.stderr

    result = resist("registry", "operator", "token", "alice", "--registry", url, "--token", admin)
    second = re.search(r"\(shown once, keep it\): (rst_\S+)", result.stdout)
    assert result.returncode == 0 and second and second.group(1) != first.group(1)
    for token in (first.group(1), second.group(1)):  # both work
        me = httpx.get(
            f"{url}/api/v1/operators/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert me.json()["name"] == "alice"
    missing = resist("registry", "operator", "token", "bob", "--registry", url, "--token", admin)
    assert missing.returncode == 2 and "no operator named 'bob'" in missing.stderr

    published = resist("registry", "publish", "--registry", url, "--token", admin)
    assert re.fullmatch(r"published directory serial \d+ with 0 proxies\n", published.stdout)
    keys = resist("registry", "keys", "--registry", url)
    served_keys = httpx.get(f"{url}/api/v1/directory/keys", timeout=10).json()["keys"]
    assert keys.stdout == "".join(k["public_key"] + "\n" for k in served_keys)

    docs = httpx.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_dev_mode_says_what_it_relaxes(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "resistance", "registry", "serve", "--dev", "--listen",
        "127.0.0.1:0", "--state-dir", str(tmp_path), "--publish-interval", "60",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        warning = "".join(proc.stderr.readline() for _ in range(6))
        banner = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(15)
    assert warning.startswith("DEVELOPMENT MODE (--dev), never on a server:\n  - ")
    for relaxed in ("loopback and private addresses", "regtest", "probes check every 5 s"):
        assert relaxed in warning
    assert "published every" not in warning  # --publish-interval was given: it holds
    assert banner[0].startswith("registry listening on http://127.0.0.1:")
    assert re.fullmatch(r"directory key \(clients pin it: --trust KEY\): [\w-]{43}\n", banner[1])
