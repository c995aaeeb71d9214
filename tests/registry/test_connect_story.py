"""The story on loopback: a node registers, the registry publishes, a client gets through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import launch_node
from tests.integration.test_connect import echo_through
from tests.registry.test_serve import served  # noqa: F401  (fixture)


def register(url: str, node_factory: Any, node_state: Path, *, public: bool) -> None:
    node = node_factory("--user", "alice:secret", "--allow", "127.0.0.0/8", state_dir=node_state)
    operator = httpx.post(f"{url}/api/v1/operators", json={"name": "volunteer"}, timeout=10)
    token = operator.json()["token"]
    registered = subprocess.run(
        [
            sys.executable, "-m", "resistance", "registry", "register-node", "--registry", url,
            "--token", token, "--public-host", "127.0.0.1", "--port", str(node.port),
            *(["--public"] if public else []),
            "--state-dir", str(node_state), "--user", "alice:secret",
        ],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr


def test_a_non_public_node_reaches_a_client_through_the_assignment(
    served: tuple[str, str, Path],  # noqa: F811
    node_factory: Any,
    tmp_path: Path,
    echo_server: Any,
) -> None:
    url, _, _ = served
    register(url, node_factory, tmp_path / "node", public=False)
    client = launch_node(
        ["--assign", f"{url}/api/v1/proxies/assign"], tmp_path / "client", command="connect"
    )
    try:
        for _ in range(3):
            echo_through(client, echo_server.port)
    finally:
        client.stop()


def test_registered_node_reaches_a_client_through_the_published_directory(
    served: tuple[str, str, Path],  # noqa: F811
    node_factory: Any,
    tmp_path: Path,
    echo_server: Any,
) -> None:
    url, admin, _ = served
    register(url, node_factory, tmp_path / "node", public=True)
    published = httpx.post(
        f"{url}/api/v1/directory/publish", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    assert published.status_code == 200
    key = httpx.get(f"{url}/api/v1/directory/keys", timeout=10).json()["keys"][0]["public_key"]
    client = launch_node(
        ["--directory", f"{url}/api/v1/directory", "--trust", key],
        tmp_path / "client",
        command="connect",
    )
    try:
        for _ in range(3):
            echo_through(client, echo_server.port)
    finally:
        client.stop()
