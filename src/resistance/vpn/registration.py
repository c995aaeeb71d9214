"""``resist vpn register``: put this WireGuard server in a registry, measured and paid.

The registry cannot ask a WireGuard server to sign anything; it proves
control the WireGuard way instead (see :mod:`resistance.registry.wireguard`).
So registering is: fetch the registry's prober key and the probe agents'
WireGuard keys, add each as a probe peer (no allowed IPs: it can handshake,
never carry traffic; keys already present are left as they are), then post
the endpoint, the server's public key and the probe keys now enabled here.
The registry handshakes from its prober key before it stores anything.
Running it again adds probes that joined since and refreshes the record.

``vpn/registration.json`` remembers where and as which proxy this server was
registered (never the operator's token).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Final

from resistance.errors import ConfigError
from resistance.paths import write_private
from resistance.registry.client import call_registry
from resistance.vpn import keys
from resistance.vpn.peers import PeerKind, utcnow
from resistance.vpn.server import VpnServer

PROBER_KEY_PATH: Final = "/api/v1/wireguard/prober-key"
REGISTER_PATH: Final = "/api/v1/wireguard/endpoints"
REGISTRATION_FILE: Final = "registration.json"


@dataclass(frozen=True, slots=True)
class Registered:
    proxy_id: int
    host: str
    port: int
    public: bool
    added: tuple[str, ...]  # names of the probe peers added this time
    probes: int  # probe keys the registry was told about
    #: the AmneziaWG endpoint's proxy id and port, on a server made with --amnezia
    amnezia_proxy_id: int | None = None
    amnezia_port: int | None = None


def _peer_name(prefix: str, public_key: str) -> str:
    return prefix + "".join(c for c in public_key if c.isalnum())[:12]


def fetch_prober_keys(registry: str, *, timeout: float = 30.0) -> tuple[str, list[str]]:
    """The registry's prober key and the probes' WireGuard keys."""
    url = registry.rstrip("/") + PROBER_KEY_PATH
    answer = call_registry(registry, PROBER_KEY_PATH, timeout=timeout)
    prober, probes = answer.get("public_key"), answer.get("probe_keys", [])
    if not isinstance(prober, str) or not isinstance(probes, list):
        raise ConfigError(f"{url}: not a prober-key answer")
    keys.decode(prober, what="registry prober key")
    checked = []
    for key in probes:
        if isinstance(key, str):
            keys.decode(key, what="probe key from the registry")
            checked.append(key)
    return prober, checked


def register(
    server: VpnServer,
    *,
    registry: str,
    token: str,
    public_host: str | None = None,
    public: bool = False,
    timeout: float = 60.0,
) -> Registered:
    host = public_host or server.config.endpoint.host
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(
            f"the endpoint host {host!r} is not an IP address: give --public-host IP"
        ) from None
    port = server.config.endpoint.port
    if not server.is_up():
        raise ConfigError("the VPN is down: run resist vpn up first (the registry handshakes)")
    prober, probes = fetch_prober_keys(registry, timeout=timeout)
    added = []
    peer, new = server.add_probe(prober, _peer_name("registry-", prober), again=True)
    if new:
        added.append(peer.name)
    for key in probes:
        peer, new = server.add_probe(key, _peer_name("probe-", key), again=True)
        if new:
            added.append(peer.name)
    enabled = {p.public_key for p in server.db.read() if p.kind is PeerKind.PROBE and p.enabled}
    probe_keys = sorted(k for k in set(probes) if k in enabled)
    body = {
        "endpoint": {"host": host, "port": port},
        "public_key": server.public_key,
        "public": public,
        "probe_keys": probe_keys,
    }
    answer = call_registry(
        registry, REGISTER_PATH, token=token, method="POST", body=body, expect=(201,),
        timeout=timeout,
    )  # fmt: skip
    proxy_id = int(answer["proxy_id"])
    awg_id = None
    cfg = server.config
    if cfg.amnezia is not None and cfg.amnezia_port is not None:
        # the same server again, as AmneziaWG: its own endpoint, kind and parameters
        awg_body = body | {
            "endpoint": {"host": host, "port": cfg.amnezia_port},
            "amnezia": cfg.amnezia.to_json(),
        }
        awg = call_registry(
            registry, REGISTER_PATH, token=token, method="POST", body=awg_body, expect=(201,),
            timeout=timeout,
        )  # fmt: skip
        awg_id = int(awg["proxy_id"])
    record = {
        "registry": registry,
        "proxy_id": proxy_id,
        "endpoint": f"{host}:{port}",
        "registered_at": utcnow().isoformat(timespec="seconds"),
        "probe_keys": len(probe_keys),
        "amnezia_proxy_id": awg_id,
    }
    write_private(server.dir / REGISTRATION_FILE, json.dumps(record, indent=2) + "\n")
    return Registered(
        proxy_id, host, port, bool(answer.get("public")), tuple(added), len(probe_keys),
        awg_id, cfg.amnezia_port if awg_id is not None else None,
    )  # fmt: skip
