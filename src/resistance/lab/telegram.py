"""The lab's Telegram side: a volunteer's MTProto proxy and a Telegram-like client.

A fifth volunteer runs ``resist node --mtproto-listen`` (fake-TLS, posing as
a website) on its own address in the free network, with the data centres
pointed at the lab's stand-in, adds the registry's prober secret for its
operator account as one more MTProto user and registers the proxy; its
users get a ``tg://proxy`` link from it.  The Telegram-like client
(``resist lab telegram``) does what the app does on start, without an
account: the fake-TLS handshake, obfuscated2, and ``req_pq_multi``, and
reports whether a data centre's ``resPQ`` came back — directly (blocked by
the censor) or through the proxy link (through).

Secrets never go on a command line (any user can read those in ``ps``): the
node's users are in its config file, mode 0600, in the lab's state dir.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

from resistance.config import parse_endpoint
from resistance.lab import topology as topo
from resistance.links import MODE_NAMES, mtproto_links, parse_mtproto_link
from resistance.net.mtproto import ResPQAnswer, ask_res_pq
from resistance.paths import write_private
from resistance.proto.faketls import ProxySecret, SecretMode

#: The MTProto volunteer's own address (a /32 added to the free network's loopback).
MTPROTO_ADDR = "198.18.14.1"
MTPROTO_PORT = 443
#: The website its fake-TLS hello names; non-authenticating visitors are relayed to
#: the registry's HTTP port, standing in for that site (the lab has no internet).
MTPROTO_DOMAIN = "www.example.com"
ROLE = "mtproto-node"


def node_config(prober_key: bytes, user_key: bytes) -> str:
    """The volunteer's node config file: listener, users, fronting and the lab's DCs."""
    dcs = ", ".join(f'"{n}={topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}"' for n in range(1, 6))
    return (
        f'mtproto_listen = ["{MTPROTO_ADDR}:{MTPROTO_PORT}"]\n'
        f'mtproto_domain = "{MTPROTO_DOMAIN}"\n'
        f'mtproto_front = "{topo.REGISTRY_ADDR}:{topo.REGISTRY_PORT}"\n'
        f"mtproto_dc = [{dcs}]\n"
        "[mtproto_users]\n"
        f'registry = "{prober_key.hex()}"\n'
        f'telegram-user = "{user_key.hex()}"\n'
    )


def write_node_config(state_dir: Path, prober_key: bytes) -> tuple[Path, ProxySecret]:
    """Write the config (0600) and return it with the user's ee secret."""
    user_key = secrets.token_bytes(16)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "node.toml"
    write_private(path, node_config(prober_key, user_key))
    return path, ProxySecret(user_key, SecretMode.EE, MTPROTO_DOMAIN)


def user_link(secret: ProxySecret) -> str:
    return mtproto_links(MTPROTO_ADDR, MTPROTO_PORT, secret).tg


def registration(public: bool = True) -> dict[str, Any]:
    return {
        "endpoint": {"host": MTPROTO_ADDR, "port": MTPROTO_PORT},
        "mode": "ee",
        "domain": MTPROTO_DOMAIN,
        "public": public,
    }


def describe(answer: ResPQAnswer, via: str) -> str:
    if answer.ok:
        ms = (answer.respq_us or 0) / 1000
        return f"resPQ from the data centre {via} ({ms:.1f} ms after req_pq_multi)"
    return f"no resPQ {via}: {answer.reason}"


def run_client(target: str, *, within: float) -> tuple[bool, str]:
    """``target`` is a tg://proxy (or t.me, mtproto://) link, or HOST:PORT of a data
    centre to try directly.  Returns whether a resPQ came back, and one line."""
    secret: ProxySecret | None
    if "://" in target:
        proxy = parse_mtproto_link(target)
        host, port, secret = proxy.host, proxy.port, proxy.secret
        via = f"through the proxy {host}:{port} ({MODE_NAMES[secret.mode]})"
    else:
        endpoint = parse_endpoint(target, what="data centre address")
        host, port, secret = endpoint.host, endpoint.port, None
        via = f"directly at {host}:{port}"
    answer = asyncio.run(ask_res_pq(host, port, secret, within=within))
    return answer.ok, describe(answer, via)
