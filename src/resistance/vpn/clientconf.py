"""wg-quick client configuration files: write them, and read them back.

The file is the standard one the official WireGuard apps import (from the
file or from its QR code) and ``wg-quick up`` brings up: an ``[Interface]``
with the client's private key, address and optional DNS, and one ``[Peer]``,
the server, carrying all traffic (``0.0.0.0/0, ::/0``; the IPv6 route keeps
the client's IPv6 traffic from leaking around the tunnel).

An AmneziaWG config is the same file with the obfuscation keys (Jc, Jmin,
Jmax, S1-S4, H1-H4, I1-I5) in its ``[Interface]``, as awg-quick and the
AmneziaVPN apps read it; :attr:`ClientConfig.amnezia` holds them, checked by
:class:`resistance.vpn.amnezia.AmneziaParams`.  Stock ``wg`` refuses them:
:func:`render` leaves them out when ``amnezia`` is ``None``.

The parser reads what ``wg-quick`` reads (section names and keys are
case-insensitive, ``#`` starts a comment) and is strict about what this
project writes; any other input raises :class:`ConfigError`, never anything
else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from resistance.errors import ConfigError
from resistance.vpn import keys
from resistance.vpn.amnezia import AmneziaParams

FULL_TUNNEL: Final = ("0.0.0.0/0", "::/0")
MAX_CONFIG: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClientConfig:
    private_key: str
    address: str
    server_public_key: str
    endpoint: str
    preshared_key: str | None = None
    dns: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = FULL_TUNNEL
    persistent_keepalive: int | None = 25
    mtu: int | None = None
    amnezia: AmneziaParams | None = None

    def __repr__(self) -> str:
        return f"ClientConfig(address={self.address!r}, endpoint={self.endpoint!r})"


def render(config: ClientConfig) -> str:
    lines = ["[Interface]", f"PrivateKey = {config.private_key}", f"Address = {config.address}"]
    if config.dns:
        lines.append(f"DNS = {', '.join(config.dns)}")
    if config.mtu is not None:
        lines.append(f"MTU = {config.mtu}")
    if config.amnezia is not None:
        lines += [f"{key} = {value}" for key, value in config.amnezia.interface_keys()]
    lines += ["", "[Peer]", f"PublicKey = {config.server_public_key}"]
    if config.preshared_key is not None:
        lines.append(f"PresharedKey = {config.preshared_key}")
    lines.append(f"AllowedIPs = {', '.join(config.allowed_ips)}")
    lines.append(f"Endpoint = {config.endpoint}")
    if config.persistent_keepalive is not None:
        lines.append(f"PersistentKeepalive = {config.persistent_keepalive}")
    return "\n".join(lines) + "\n"


_AMNEZIA_KEYS: Final = {"jc", "jmin", "jmax", "s1", "s2", "s3", "s4", "h1", "h2", "h3", "h4"} | {
    "i1",
    "i2",
    "i3",
    "i4",
    "i5",
    "headerprotectionkey",
    "randomtrailers",
    "contentpaddingaddition",
}
_INTERFACE_KEYS: Final = {"privatekey", "address", "dns", "mtu"} | _AMNEZIA_KEYS
_PEER_KEYS: Final = {"publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive"}


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _check_networks(values: tuple[str, ...], what: str) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"client config: bad {what} {value[:50]!r}") from None


def _int(value: str, what: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise ConfigError(f"client config: bad {what} {value[:20]!r}")
    return int(value)


def parse(text: str) -> ClientConfig:
    """Read a client config with one [Interface] and one [Peer]."""
    if len(text) > MAX_CONFIG:
        raise ConfigError("client config: too long")
    sections: list[tuple[str, dict[str, str]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            if section not in ("interface", "peer"):
                raise ConfigError(f"client config line {number}: unknown section")
            sections.append((section, {}))
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or not sections:
            raise ConfigError(f"client config line {number}: expected Key = Value in a section")
        section, values = sections[-1]
        known = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        if key not in known:
            raise ConfigError(f"client config line {number}: unknown key in [{section}]")
        if key in values:
            raise ConfigError(f"client config line {number}: key given twice")
        values[key] = value.strip()
    if [s for s, _ in sections] != ["interface", "peer"]:
        raise ConfigError("client config: expected one [Interface] then one [Peer]")
    iface, peer = sections[0][1], sections[1][1]
    for required, values in (("privatekey", iface), ("address", iface), ("publickey", peer)):
        if required not in values:
            raise ConfigError(f"client config: {required} is missing")
    if "endpoint" not in peer:
        raise ConfigError("client config: endpoint is missing")
    keys.decode(iface["privatekey"], what="client config private key")
    keys.decode(peer["publickey"], what="client config public key")
    if "presharedkey" in peer:
        keys.decode(peer["presharedkey"], what="client config preshared key")
    address = iface["address"]
    _check_networks(_list(address), "address")
    dns = _list(iface.get("dns", ""))
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ConfigError(f"client config: bad DNS server {server[:50]!r}") from None
    allowed = _list(peer.get("allowedips", ""))
    _check_networks(allowed, "allowed IPs")
    endpoint = peer["endpoint"]
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host:
        raise ConfigError("client config: endpoint must be HOST:PORT")
    _int(port, "endpoint port", 1, 65535)
    keepalive = peer.get("persistentkeepalive")
    mtu = iface.get("mtu")
    awg = {k: v for k, v in iface.items() if k in _AMNEZIA_KEYS}
    amnezia = AmneziaParams.from_keys(awg, "client config") if awg else None
    return ClientConfig(
        private_key=iface["privatekey"],
        address=address,
        server_public_key=peer["publickey"],
        endpoint=endpoint,
        preshared_key=peer.get("presharedkey"),
        dns=dns,
        allowed_ips=allowed,
        persistent_keepalive=None
        if keepalive is None or keepalive == "off"
        else _int(keepalive, "keepalive", 0, 65535),
        mtu=None if mtu is None else _int(mtu, "MTU", 576, 65535),
        amnezia=amnezia,
    )
