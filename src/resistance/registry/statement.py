"""The node registration statement, shared by `register-node` and the registry.

A statement is a JSON object::

    {"version": 2, "operator_id": N, "endpoint": {"host": H, "port": P},
     "protocols": ["socks5"], "public_key": B64URL, "probe_user": U,
     "probe_password": PW, "timestamp": UNIX_SECONDS, "nonce": 32_HEX, "tls_port": P}

signed by the node identity key over its canonical bytes
(:func:`resistance.directory.canonical.canonical_bytes`).  The signature proves
the statement was made by the holder of ``public_key``; the SOCKS5 challenge
then proves that this key's holder answers at the endpoint.  ``operator_id``
names the registry account the statement is for (version 2; version 1 named
none, so whoever posted an unused statement first within its time window got
the node): the registry refuses a statement posted with another account's
token.  ``tls_port`` is
optional (absent from statements of nodes without a TLS listener, so their
bytes are what they always were): the registry then challenges the node
again inside TLS on that port, where the node's signature also covers the
certificate it presents (:func:`tls_challenge_message`), and records that
certificate's SHA-256 as the pin the directory hands to clients.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resistance.directory.canonical import canonical_bytes
from resistance.directory.keys import b64url, public_key_text

# What the node signs is the node's protocol, defined once in node.identity.
from resistance.node.identity import challenge_message as challenge_message
from resistance.node.identity import tls_challenge_message as tls_challenge_message

STATEMENT_VERSION = 2


def make_statement(
    *,
    key: Ed25519PrivateKey,
    operator_id: int,
    host: str,
    port: int,
    probe_user: str,
    probe_password: str,
    now: int,
    nonce: str | None = None,
    tls_port: int | None = None,
) -> tuple[dict[str, Any], str]:
    """A statement and its signature (base64url)."""
    statement: dict[str, Any] = {
        "version": STATEMENT_VERSION,
        "operator_id": operator_id,
        "endpoint": {"host": host, "port": port},
        "protocols": ["socks5"],
        "public_key": public_key_text(key.public_key()),
        "probe_user": probe_user,
        "probe_password": probe_password,
        "timestamp": now,
        "nonce": nonce or secrets.token_hex(16),
    }
    if tls_port is not None:
        statement["tls_port"] = tls_port
    return statement, b64url(key.sign(canonical_bytes(statement)))


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    return canonical_bytes(statement)


def endpoint_network(host: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an endpoint is in; ``ValueError`` for a name."""
    ip = ipaddress.ip_address(host)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
