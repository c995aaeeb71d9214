"""The lab's cascade: a bridge on domestic hosting relaying to an exit abroad.

Two more volunteers (issue 24).  One runs the exit in the free network, on an
address of its own that no list names, with a user for the bridge in its
config file; the registry learns it as an exit (``--as-exit``: never
published).  The other runs the bridge on the domestic hosting network
(inside the censored country, a prefix a whitelist lists): SOCKS5, SOCKS5
inside TLS and an MTProto proxy (fake-TLS) for the Telegram-like client,
everything going out through the exit (``upstream`` in its config file:
plain SOCKS5 first, SOCKS5 inside TLS with the exit's certificate pinned
second), and registers as a bridge of that exit with its user there.  The
directory then lists the bridge, never the exit's address, and
``resist connect`` learns the bridge from it.

Secrets (the hop's password, the MTProto user's key) live in the nodes'
config files, mode 0600, in the lab's state dir, never on a command line; the
exit's banner (in the lab's cascade-exit.log) masks its user's password, and
the bridge's (cascade-bridge.log) the password of the user it generated
(``hide_passwords``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from resistance.lab import topology as topo
from resistance.links import mtproto_links
from resistance.node.tlscert import certificate_sha256, default_name, ensure_certificate, leaf_der
from resistance.paths import write_private
from resistance.proto.faketls import ProxySecret, SecretMode

#: The exit's own address (a /32 added to the free network's loopback): on no list.
EXIT_ADDR = "198.18.16.1"
EXIT_ROLE = "cascade-exit"
BRIDGE_ROLE = "cascade-bridge"
#: The bridge's MTProto proxy (fake-TLS), beside its SOCKS5 ports.
BRIDGE_MTPROTO_PORT = 8443
BRIDGE_MTPROTO_DOMAIN = "www.example.com"
#: The bridge's own user on the exit (one per bridge, revocable there).
HOP_USER = "bridge-7"


def egress() -> str:
    """What the lab's nodes may reach: the data centre and the probes' canary."""
    return f'allow = ["{topo.DATACENTRE_RANGE}", "{topo.REGISTRY_ADDR}/32"]\n'


def exit_config(state_dir: Path, hop_password: str) -> tuple[Path, str]:
    """The exit's config file (0600) and its certificate's pin (the bridge pins it).

    Its only user is the bridge's: the registry's proof of control uses the
    node's own probe user, and nobody else is meant to reach an exit."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, _, _ = ensure_certificate(state_dir, common_name=default_name())
    path = state_dir / "exit.toml"
    write_private(
        path,
        f'listen = ["{EXIT_ADDR}:{topo.NODE_PORT}"]\n'
        f'tls_listen = ["{EXIT_ADDR}:{topo.NODE_TLS_PORT}"]\n'
        f'public_host = "{EXIT_ADDR}"\n'
        # its banner goes to the lab's cascade-exit.log: no hop password in it
        "hide_passwords = true\n" + egress() + "[users]\n"
        f'"{HOP_USER}" = "{hop_password}"\n',
    )
    return path, certificate_sha256(leaf_der(cert))


def upstream_urls(hop_password: str, pin: str) -> list[str]:
    """The bridge's hop, in the order it tries it: plain SOCKS5, then inside TLS."""
    user = f"{HOP_USER}:{hop_password}"
    return [
        f"socks5://{user}@{EXIT_ADDR}:{topo.NODE_PORT}",
        f"socks5s://{user}@{EXIT_ADDR}:{topo.NODE_TLS_PORT}#sha256={pin}",
    ]


def bridge_config(state_dir: Path, hop_password: str, pin: str) -> tuple[Path, ProxySecret]:
    """The bridge's config file (0600) and the Telegram user's ee secret."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_certificate(state_dir, common_name=default_name())
    key = secrets.token_bytes(16)
    dcs = ", ".join(f'"{n}={topo.DATACENTRE_ADDR}:{topo.DATACENTRE_PORT}"' for n in range(1, 6))
    urls = ", ".join(f'"{u}"' for u in upstream_urls(hop_password, pin))
    path = state_dir / "bridge.toml"
    write_private(
        path,
        f'listen = ["{topo.BRIDGE_ADDR}:{topo.NODE_PORT}"]\n'
        f'tls_listen = ["{topo.BRIDGE_ADDR}:{topo.NODE_TLS_PORT}"]\n'
        f'public_host = "{topo.BRIDGE_ADDR}"\n'
        # its banner goes to the lab's cascade-bridge.log: its generated user's password masked
        "hide_passwords = true\n" + egress() + f"upstream = [{urls}]\n"
        f'mtproto_listen = ["{topo.BRIDGE_ADDR}:{BRIDGE_MTPROTO_PORT}"]\n'
        f'mtproto_domain = "{BRIDGE_MTPROTO_DOMAIN}"\n'
        f'mtproto_front = "{topo.REGISTRY_ADDR}:{topo.REGISTRY_PORT}"\n'
        f"mtproto_dc = [{dcs}]\n"
        "[mtproto_users]\n"
        f'telegram-user = "{key.hex()}"\n',
    )
    return path, ProxySecret(key, SecretMode.EE, BRIDGE_MTPROTO_DOMAIN)


def telegram_link(secret: ProxySecret) -> str:
    """The tg://proxy link the bridge's operator hands the Telegram user."""
    return mtproto_links(topo.BRIDGE_ADDR, BRIDGE_MTPROTO_PORT, secret).tg


__all__ = [
    "BRIDGE_MTPROTO_PORT",
    "BRIDGE_ROLE",
    "EXIT_ADDR",
    "EXIT_ROLE",
    "HOP_USER",
    "bridge_config",
    "exit_config",
    "telegram_link",
    "upstream_urls",
]
