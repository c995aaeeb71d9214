"""`resist connect` taking its upstreams from a signed directory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.document import build_document, dump_signed, sign_document
from resistance.directory.keys import public_key_text
from resistance.node.identity import load_identity
from resistance.node.identity import public_key_text as node_key_text
from tests.conftest import RunningNode, launch_node
from tests.integration.test_connect import echo_through


def listing(node: RunningNode, state: Path, *, key: str | None = None) -> dict[str, Any]:
    identity = load_identity(state)
    assert identity is not None
    return {
        "endpoint": {"host": node.host, "port": node.port},
        "protocols": ["socks5"],
        "credentials": [{"username": "alice", "password": "secret"}],
        "node_key": key or node_key_text(identity),
        "status": "functional",
        "measurements": {},
    }


def signed_file(
    path: Path,
    proxies: list[dict[str, Any]],
    keys: list[Ed25519PrivateKey],
    *,
    serial: int,
    lifetime: int = 3600,
    now: int | None = None,
) -> Path:
    now = int(time.time()) if now is None else now
    document = build_document(
        serial=serial,
        valid_after=now - 60,
        fresh_until=now + lifetime // 2,
        valid_until=now + lifetime,
        proxies=proxies,
        network="regtest",
    )
    path.write_bytes(dump_signed(sign_document(document, keys)))
    return path


_clients: list[RunningNode] = []


def start_client(state: Path, *args: str) -> RunningNode:
    """A client stopped by PID when the test ends, passed or failed, in whatever module
    it runs (tests/integration/conftest.py; test_connect_ladder's tests left theirs)."""
    client = launch_node([*args, "--check-interval", "0.5"], state, command="connect")
    _clients.append(client)
    return client


def run_client(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A client that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "resistance", "connect", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def two_nodes(node_factory: Any, tmp_path: Path) -> list[tuple[RunningNode, Path]]:
    out = []
    for i in range(2):
        state = tmp_path / f"node{i}"
        out.append(
            (
                node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", state_dir=state),
                state,
            )
        )
    return out


def wait_for(condition: Any, what: str, seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def read_status(state: Path) -> dict[str, Any]:
    path = state / "connect-status.json"
    return json.loads(path.read_text()) if path.exists() else {"upstreams": []}


def test_upstreams_from_a_signed_directory_with_node_keys_checked(
    two_nodes: list[tuple[RunningNode, Path]], tmp_path: Path, echo_server: Any
) -> None:
    authority = Ed25519PrivateKey.generate()
    (good, good_state), (impostor, impostor_state) = two_nodes
    wrong_key = node_key_text(Ed25519PrivateKey.generate())
    directory = signed_file(
        tmp_path / "directory.json",
        [listing(good, good_state), listing(impostor, impostor_state, key=wrong_key)],
        [authority],
        serial=10,
    )
    state = tmp_path / "client"
    client = start_client(
        state, "--directory", str(directory), "--trust", public_key_text(authority.public_key())
    )
    for _ in range(5):
        echo_through(client, echo_server.port)

    def checked() -> dict[str, Any] | None:
        rows = {r["upstream"]: r for r in read_status(state)["upstreams"]}
        impostor_row = rows.get(f"127.0.0.1:{impostor.port}")
        if impostor_row and "not the node the directory names" in impostor_row["last_error"]:
            return rows
        return None

    rows = wait_for(checked, "the health check never caught the wrong node key")
    assert rows[f"127.0.0.1:{good.port}"]["successes"] >= 1
    client.stop()

    # The client remembers serial 10: an older directory is refused, and the cached
    # one (still valid) is used instead.
    older = signed_file(tmp_path / "older.json", [listing(good, good_state)], [authority], serial=9)
    client = start_client(
        state, "--directory", str(older), "--trust", public_key_text(authority.public_key())
    )
    echo_through(client, echo_server.port)
    assert "rollback refused" in client.stderr()
    client.stop()


def test_bad_directories_are_refused_with_one_line(
    two_nodes: list[tuple[RunningNode, Path]], tmp_path: Path
) -> None:
    authority, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (node, node_state), _ = two_nodes
    proxies = [listing(node, node_state)]
    trust = ["--trust", public_key_text(authority.public_key())]
    cases = {
        "unsigned by a trusted key": signed_file(tmp_path / "a.json", proxies, [other], serial=1),
        "expired": signed_file(
            tmp_path / "b.json", proxies, [authority], serial=1, now=int(time.time()) - 7200
        ),
    }
    tampered = signed_file(tmp_path / "c.json", proxies, [authority], serial=1)
    tampered.write_text(tampered.read_text().replace(str(node.port), str(node.port + 1)))
    cases["tampered"] = tampered
    for what, path in cases.items():
        done = run_client(tmp_path / f"client-{path.stem}", "--directory", str(path), *trust)
        assert done.returncode == 2, (what, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("resist: error:")]
        assert len(errors) == 1 and "no usable directory" in errors[0], (what, done.stderr)
    # A threshold of two needs two distinct trusted signers.
    both = signed_file(tmp_path / "d.json", proxies, [authority, authority], serial=1)
    done = run_client(
        tmp_path / "client-d",
        "--directory",
        str(both),
        *trust,
        "--trust",
        public_key_text(other.public_key()),
        "--threshold",
        "2",
    )
    assert done.returncode == 2 and "1 trusted key(s), 2 required" in done.stderr


def test_mirrors_are_tried_in_turn(
    two_nodes: list[tuple[RunningNode, Path]], tmp_path: Path, echo_server: Any
) -> None:
    authority = Ed25519PrivateKey.generate()
    (node, node_state), _ = two_nodes
    good = signed_file(tmp_path / "good.json", [listing(node, node_state)], [authority], serial=3)
    client = start_client(
        tmp_path / "client",
        "--directory",
        "http://127.0.0.1:9/directory.json",  # nothing listens there
        "--directory",
        str(tmp_path / "missing.json"),
        "--directory",
        str(good),
        "--trust",
        public_key_text(authority.public_key()),
    )
    echo_through(client, echo_server.port)
