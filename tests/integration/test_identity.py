"""A node proves it holds its identity key, over SOCKS5, only after authentication."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature

from resistance.node.identity import (
    challenge_message,
    challenge_name,
    load_identity,
    parse_challenge,
    probe_credential,
    public_key_text,
)
from resistance.proto.socks5 import Address, Command, Reply
from tests.integration.socksclient import SocksFailure, handshake, recv_exact


def challenge(node: Any, nonce: bytes, user: str, password: str) -> bytes:
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        bound = handshake(
            sock,
            Command.CONNECT,
            Address.from_host(challenge_name(nonce), 0),
            user=user,
            password=password,
        )
        assert bound == Address.from_ip("0.0.0.0", 0)
        signature = recv_exact(sock, 64)
        assert sock.recv(1) == b""  # and nothing more
    return signature


def test_node_answers_a_challenge_with_its_key(node_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = node_factory("--user", "alice:secret", state_dir=state)
    assert "(splice relay, 1 user," in node.banner[0]  # the probe user is not the operator's
    key = load_identity(state)
    assert key is not None
    assert (state / "node-identity.pem").stat().st_mode & 0o077 == 0
    user, password = probe_credential(state)
    nonce = os.urandom(16)
    signature = challenge(node, nonce, user, password)
    key.public_key().verify(signature, challenge_message(nonce))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, challenge_message(os.urandom(16)))
    # Any of the node's users may ask; the key stays the same across restarts.
    challenge(node, os.urandom(16), "alice", "secret")
    node.stop()
    again = node_factory("--user", "alice:secret", state_dir=state)
    reloaded = load_identity(state)
    assert reloaded is not None and public_key_text(reloaded) == public_key_text(key)
    nonce = os.urandom(16)
    reloaded.public_key().verify(challenge(again, nonce, user, password), challenge_message(nonce))


def test_malformed_challenge_names_are_unresolvable(node: Any) -> None:
    for host in ("abc.challenge.resist.invalid", "X" * 32 + ".challenge.resist.invalid"):
        with socket.create_connection((node.host, node.port), timeout=10) as sock:
            with pytest.raises(SocksFailure) as failure:
                handshake(sock, Command.CONNECT, Address.from_host(host, 0))
            assert failure.value.reply is Reply.HOST_UNREACHABLE


def test_the_challenge_needs_authentication(node: Any) -> None:
    with (
        socket.create_connection((node.host, node.port), timeout=10) as sock,
        pytest.raises(PermissionError),
    ):
        handshake(
            sock,
            Command.CONNECT,
            Address.from_host(challenge_name(os.urandom(16)), 0),
            user="nobody",
            password="guess",
        )


def test_challenge_names_parse_strictly() -> None:
    nonce = bytes(range(16))
    assert parse_challenge(challenge_name(nonce)) == nonce
    assert parse_challenge(challenge_name(nonce).upper()) is None
    assert parse_challenge("x" + challenge_name(nonce)) is None
    assert parse_challenge(challenge_name(nonce) + ".") is None
    with pytest.raises(ValueError):
        challenge_message(b"short")
