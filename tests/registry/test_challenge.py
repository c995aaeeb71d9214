"""The registry's proof of control against a live node and against servers that are not one.

The exchange is the client's own dial (one SOCKS5 client in the package), so
these check that each way a challenge can fail still says what went wrong in
one line, and that only the node's own key passes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.node.identity import load_or_create_identity, probe_credential, public_key_text
from resistance.registry.challenge import ChallengeFailed, prove_control


@pytest.fixture
def live_node(node_factory: Any, tmp_path: Path) -> tuple[Any, Path]:
    state = tmp_path / "node"
    return node_factory("--user", "alice:secret", state_dir=state), state


async def test_only_the_nodes_key_passes(live_node: tuple[Any, Path]) -> None:
    node, state = live_node
    user, password = probe_credential(state)
    key = public_key_text(load_or_create_identity(state))
    where = {"host": "127.0.0.1", "port": node.port, "within": 10.0}
    await prove_control(**where, user=user, password=password, public_key=key)
    other = public_key_text(Ed25519PrivateKey.generate())
    with pytest.raises(ChallengeFailed, match="different key"):
        await prove_control(**where, user=user, password=password, public_key=other)
    with pytest.raises(ChallengeFailed, match="probe_user/probe_password") as failed:
        await prove_control(**where, user=user, password="wrong", public_key=key)
    assert "\n" not in str(failed.value)


@contextlib.asynccontextmanager
async def server(answer: bytes | None) -> AsyncIterator[int]:
    """A loopback server that reads the request, sends ``answer`` and closes, or (None)
    says nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is not None:
            await reader.read(512)  # the client's one write: greeting, credentials, request
            writer.write(answer)
            await writer.drain()
            writer.close()
        else:
            await reader.read()  # until the registry gives up and closes
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "broke the protocol"),
        (b"\x05\xff", "none of the offered methods"),
        (b"\x05\x02\x01\x00\x05\x04\x00\x01\x00\x00\x00\x00\x00\x00", "HOST_UNREACHABLE"),
        (b"\x05\x02\x01\x00\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"x" * 10, "mid-answer"),
        (None, "no answer from"),
    ],
)
async def test_a_server_that_is_no_node_fails_in_one_line(
    answer: bytes | None, expected: str
) -> None:
    key = public_key_text(Ed25519PrivateKey.generate())
    async with server(answer) as port:
        with pytest.raises(ChallengeFailed, match=expected) as failed:
            await prove_control(
                host="127.0.0.1", port=port, user="u", password="p", public_key=key, within=1.0
            )
    assert "\n" not in str(failed.value)


async def test_nothing_listening(unused_tcp_port: int) -> None:
    key = public_key_text(Ed25519PrivateKey.generate())
    with pytest.raises(ChallengeFailed, match="cannot reach"):
        await prove_control(
            host="127.0.0.1", port=unused_tcp_port, user="u", password="p", public_key=key,
            within=5.0,
        )  # fmt: skip
