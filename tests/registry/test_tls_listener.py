"""A node's TLS listener registered, proven inside TLS, and published as the clients' pin.

Live nodes on loopback make their own certificate; the registry challenges
them inside TLS.  A listener that is not the statement's node -- another
node's, or a TLS front with its own certificate relaying to the real node --
is refused with a JSON error and nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from resistance.directory.document import verify_directory
from resistance.directory.keys import parse_public_key
from resistance.node.identity import PROBE_USER_FILE
from resistance.node.tlscert import CERT_FILE, KEY_FILE, leaf_der, make_self_signed
from resistance.registry.client import registration_body
from tests.conftest import RunningNode, launch_node
from tests.integration.test_connect import echo_through
from tests.integration.test_connect_tls_directory import banner_pin
from tests.registry.conftest import RunningRegistry
from tests.registry.test_api import assert_error, snapshot
from tests.registry.test_serve import served  # noqa: F401  (fixture)


def start_tls_node(node_factory: Any, state: Path) -> RunningNode:
    node = node_factory(
        "--user", "alice:secret", "--allow", "127.0.0.0/8", "--tls-listen", "127.0.0.1:0",
        state_dir=state,
    )  # fmt: skip
    assert node.tls_port
    return node


@pytest.fixture
def tls_node(node_factory: Any, tmp_path: Path) -> tuple[RunningNode, Path]:
    state = tmp_path / "tls-node"
    return start_tls_node(node_factory, state), state


def body_for(
    state: Path, port: int, tls_port: int | None, operator_id: int, **kw: Any
) -> dict[str, Any]:
    return registration_body(
        state_dir=state, operator_id=operator_id, host="127.0.0.1", port=port, public=True,
        users=[{"username": "alice", "password": "secret"}], tls_port=tls_port, **kw,
    )  # fmt: skip


async def publish_and_verify(running: RunningRegistry) -> dict[str, Any]:
    client = running.client()
    keys = [
        parse_public_key(k["public_key"])
        for k in (await client.get("/api/v1/directory/keys")).json()["keys"]
    ]
    r = await running.client(token=running.admin_token).post("/api/v1/directory/publish")
    assert r.status_code == 200, r.text
    served_bytes = (await client.get("/api/v1/directory")).content
    verified = verify_directory(served_bytes, trusted=keys, threshold=1, now=running.registry.now())
    return verified.document


# -- the node's own certificate ----------------------------------------------------------


def test_generated_certificate_is_made_once_and_kept(node_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "node"
    first = start_tls_node(node_factory, state)
    pin = banner_pin(first)
    assert pin == hashlib.sha256(leaf_der(state / CERT_FILE)).hexdigest()
    assert (state / KEY_FILE).stat().st_mode & 0o777 == 0o600
    link = next(line for line in first.banner if "socks5s://" in line and "#sha256=" in line)
    assert f"@127.0.0.1:{first.tls_port}#sha256={pin}" in link
    first.stop()
    again = start_tls_node(node_factory, state)
    assert banner_pin(again) == pin  # the pin survives restarts
    # The certificate really is the one the listener presents.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", again.tls_port), timeout=5)) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None and hashlib.sha256(der).hexdigest() == pin


# -- registration ------------------------------------------------------------------------


async def test_tls_listener_recorded_and_published(
    running: RunningRegistry, tls_node: tuple[RunningNode, Path]
) -> None:
    node, state = tls_node
    pin = banner_pin(node)
    token = await running.operator("tls-op")
    client = running.client(token=token)
    r = await client.post(
        "/api/v1/proxies",
        json=body_for(state, node.port, node.tls_port, running.operator_ids[token]),
    )
    assert r.status_code == 201, r.text
    assert r.json()["tls"] == {"port": node.tls_port, "sha256": pin}
    listed = (await client.get("/api/v1/proxies")).json()["proxies"]
    assert [p["tls"] for p in listed] == [{"port": node.tls_port, "sha256": pin}]

    document = await publish_and_verify(running)
    [entry] = document["proxies"]
    assert entry["endpoint"] == {"host": "127.0.0.1", "port": node.port}
    assert entry["tls"] == {"port": node.tls_port, "sha256": pin}

    # Registering again without a TLS port drops the listener from the directory.
    r = await client.post(
        "/api/v1/proxies", json=body_for(state, node.port, None, running.operator_ids[token])
    )
    assert r.status_code == 201 and r.json()["tls"] is None
    [entry] = (await publish_and_verify(running))["proxies"]
    assert "tls" not in entry
    # ... and registering with it again brings it back.
    r = await client.post(
        "/api/v1/proxies",
        json=body_for(state, node.port, node.tls_port, running.operator_ids[token]),
    )
    assert r.status_code == 201 and r.json()["tls"]["sha256"] == pin


async def test_another_nodes_tls_listener_refused(
    running: RunningRegistry, node_factory: Any, tmp_path: Path
) -> None:
    state, other_state = tmp_path / "plain-node", tmp_path / "other-node"
    mine = node_factory("--user", "alice:secret", state_dir=state)
    # The other node even accepts this node's probe credential: only its key differs.
    other_state.mkdir()
    shutil.copy(state / PROBE_USER_FILE, other_state / PROBE_USER_FILE)
    other = start_tls_node(node_factory, other_state)
    token = await running.operator("borrower")
    before = await snapshot(running)
    r = await running.client(token=token).post(
        "/api/v1/proxies",
        json=body_for(state, mine.port, other.tls_port, running.operator_ids[token]),
    )
    assert_error(r, 422, "TLS proof of control failed", "is not this node")
    assert r.json()["field"] == "statement.tls_port"
    assert await snapshot(running) == before


class TlsFront:
    """A TLS listener with its own certificate relaying to another address.

    ``inner_tls`` re-encrypts towards a TLS listener (someone in the middle);
    otherwise the bytes go on in the clear (a TLS terminator in front of a
    plain port).
    """

    def __init__(self, directory: Path, target: tuple[str, int], *, inner_tls: bool) -> None:
        cert, key = make_self_signed("front.example")
        (directory / "front.pem").write_bytes(cert)
        (directory / "front.key").write_bytes(key)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(directory / "front.pem", directory / "front.key")
        self.pin = hashlib.sha256(leaf_der(directory / "front.pem")).hexdigest()
        self.target = target
        self.inner_tls = inner_tls
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsFront:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inner: ssl.SSLContext | None = None
        if self.inner_tls:
            inner = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            inner.check_hostname, inner.verify_mode = False, ssl.CERT_NONE
        up_reader, up_writer = await asyncio.open_connection(*self.target, ssl=inner)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(4096):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer), name="front-up"),
            asyncio.create_task(pipe(up_reader, writer), name="front-down"),
        ):
            self.tasks.add(task)


@pytest.mark.parametrize("inner_tls", [True, False], ids=["re-encrypting", "to-plain-port"])
async def test_tls_front_with_another_certificate_refused(
    running: RunningRegistry, tls_node: tuple[RunningNode, Path], tmp_path: Path, inner_tls: bool
) -> None:
    """The node itself answers through the front, yet its signature names its own
    certificate (or none), never the front's: the front's pin is not recorded."""
    node, state = tls_node
    target = ("127.0.0.1", node.tls_port if inner_tls else node.port)
    assert target[1] is not None
    token = await running.operator("fronted")
    before = await snapshot(running)
    async with TlsFront(tmp_path, (target[0], target[1]), inner_tls=inner_tls) as front:
        r = await running.client(token=token).post(
            "/api/v1/proxies",
            json=body_for(state, node.port, front.port, running.operator_ids[token]),
        )
    assert_error(r, 422, "TLS proof of control failed", "is not this node")
    assert front.pin not in r.text
    assert await snapshot(running) == before


async def test_tls_port_refusals_are_json(
    running: RunningRegistry, tls_node: tuple[RunningNode, Path], echo_server: Any
) -> None:
    node, state = tls_node
    token = await running.operator("typo")
    client = running.client(token=token)
    before = await snapshot(running)
    for bad in (0, 70000, -1, "443", True, 1.5):
        body = body_for(state, node.port, 443, running.operator_ids[token])
        body["statement"]["tls_port"] = bad
        r = await client.post("/api/v1/proxies", json=body)
        assert_error(r, 422, "invalid request", "tls_port")
        assert any(d["field"] == "statement.tls_port" for d in r.json()["details"])
    same = body_for(state, node.port, node.port, running.operator_ids[token])
    assert_error(await client.post("/api/v1/proxies", json=same), 422, "must differ")
    # Something that is not TLS at all (an echo server), and nothing at all.
    not_tls = body_for(state, node.port, echo_server.port, running.operator_ids[token])
    assert_error(
        await client.post("/api/v1/proxies", json=not_tls), 422, "TLS proof of control failed"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    r = await client.post(
        "/api/v1/proxies", json=body_for(state, node.port, dead, running.operator_ids[token])
    )
    assert_error(r, 422, "TLS proof of control failed", "cannot reach")
    # A TLS port the statement does not say is not taken from outside the signature.
    forged = body_for(state, node.port, None, running.operator_ids[token])
    forged["statement"]["tls_port"] = node.tls_port
    assert_error(await client.post("/api/v1/proxies", json=forged), 422, "signature")
    assert await snapshot(running) == before


# -- the whole story with the real commands ---------------------------------------------


def test_register_node_tls_port_reaches_a_tls_only_client(
    served: tuple[str, str, Path],  # noqa: F811
    node_factory: Any,
    tmp_path: Path,
    echo_server: Any,
) -> None:
    url, admin, _ = served
    state = tmp_path / "node"
    node = start_tls_node(node_factory, state)
    token = httpx.post(f"{url}/api/v1/operators", json={"name": "v"}, timeout=10).json()["token"]
    registered = subprocess.run(
        [
            sys.executable, "-m", "resistance", "registry", "register-node", "--registry", url,
            "--token", token, "--public-host", "127.0.0.1", "--port", str(node.port),
            "--tls-port", str(node.tls_port), "--public", "--state-dir", str(state),
            "--user", "alice:secret",
        ],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert f"certificate sha256 {banner_pin(node)}" in registered.stdout
    published = httpx.post(
        f"{url}/api/v1/directory/publish", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    assert published.status_code == 200
    key = httpx.get(f"{url}/api/v1/directory/keys", timeout=10).json()["keys"][0]["public_key"]
    client = launch_node(
        ["--directory", f"{url}/api/v1/directory", "--trust", key, "--transport", "tls"],
        tmp_path / "client",
        command="connect",
    )
    try:
        assert "1 upstream (1 over TLS)" in client.banner[0]
        for _ in range(3):
            echo_through(client, echo_server.port)
    finally:
        client.stop()
