"""The VPN server: state directory, interface, peers, limits, kept in step.

Theory of operation
-------------------
The state directory's ``vpn/`` holds ``server.json`` (interface, endpoint,
subnet, policy options), ``server.key`` (0600), ``peers.json`` (the peer
database, the source of truth) and ``runtime.json`` (wireguard-go's PID and
what ``up`` changed, so that ``down`` can undo exactly that).

Every peer operation changes the running interface with one ``wg set`` for
that peer, then the database; nothing ever replaces all peers, so other
peers' sessions carry on.  When the interface is down, only the database
changes, and ``up`` applies it: it creates the interface if needed, then
adds the peers the database enables and the device lacks, and removes the
ones it has but should not (a sync, not a replacement).

A disabled peer (by hand, past its expiry, over its quota) is removed from
the device, which cuts it off at once; enabling it adds it back, and its
client reconnects at its next handshake.  Counters are read before a peer
leaves the device, so its usage is never lost (see ``peers``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any, Final

from resistance import keyfile
from resistance.config import Endpoint, parse_endpoint
from resistance.errors import ConfigError
from resistance.node.policy import EgressPolicy
from resistance.paths import write_private
from resistance.vpn import clientconf, firewall, keys
from resistance.vpn.amnezia import AmneziaParams
from resistance.vpn.device import Host, PeerStatus, VpnError, WireGuardDevice
from resistance.vpn.peers import (
    DisabledReason,
    Peer,
    PeerDatabase,
    PeerKind,
    check_name,
    find,
    next_address,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 51820
DEFAULT_SUBNET: Final = "10.66.0.0/24"
DEFAULT_INTERFACE: Final = "wg-resist"
DEFAULT_MTU: Final = 1420
_IFNAME_CHARS: Final = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=+.-")


def check_interface(name: str) -> str:
    if not 1 <= len(name) <= 15 or not set(name) <= _IFNAME_CHARS:
        raise ConfigError(f"bad interface name {name!r}: 1-15 of letters, digits and _=+.-")
    return name


@dataclass(frozen=True, slots=True)
class ServerConfig:
    interface: str
    endpoint: Endpoint
    subnet: IPv4Network
    dns: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    netns: str | None = None
    mtu: int = DEFAULT_MTU
    #: AmneziaWG: its parameters and the UDP port its translator listens on
    amnezia: AmneziaParams | None = None
    amnezia_port: int | None = None

    @property
    def amnezia_endpoint(self) -> Endpoint | None:
        if self.amnezia_port is None:
            return None
        return Endpoint(self.endpoint.host, self.amnezia_port)

    @property
    def address(self) -> IPv4Address:
        return next(self.subnet.hosts())

    def policy(self) -> EgressPolicy:
        return EgressPolicy.from_options(allow=self.allow, deny=self.deny)

    def to_json(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "endpoint": str(self.endpoint),
            "subnet": str(self.subnet),
            "dns": list(self.dns),
            "allow": list(self.allow),
            "deny": list(self.deny),
            "netns": self.netns,
            "mtu": self.mtu,
            "amnezia": None if self.amnezia is None else self.amnezia.to_json(),
            "amnezia_port": self.amnezia_port,
        }

    @classmethod
    def from_json(cls, doc: Any, source: str) -> ServerConfig:
        try:
            return cls(
                interface=check_interface(doc["interface"]),
                endpoint=parse_endpoint(doc["endpoint"], what="endpoint"),
                subnet=IPv4Network(doc["subnet"]),
                dns=tuple(str(d) for d in doc["dns"]),
                allow=tuple(str(a) for a in doc["allow"]),
                deny=tuple(str(d) for d in doc["deny"]),
                netns=doc["netns"],
                mtu=int(doc["mtu"]),
                amnezia=None
                if doc.get("amnezia") is None
                else AmneziaParams.from_json(doc["amnezia"], source),
                amnezia_port=None if doc.get("amnezia_port") is None else int(doc["amnezia_port"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: bad server settings ({exc})") from None


def make_config(
    *,
    endpoint: str,
    subnet: str = DEFAULT_SUBNET,
    dns: tuple[str, ...] = (),
    interface: str = DEFAULT_INTERFACE,
    allow: tuple[str, ...] = (),
    deny: tuple[str, ...] = (),
    netns: str | None = None,
    amnezia: bool = False,
    amnezia_port: int | None = None,
    amnezia_legacy: bool = False,
    amnezia_v3: bool = False,
) -> ServerConfig:
    """Check ``resist vpn init``'s options and build the settings.

    ``amnezia`` generates this server's AmneziaWG parameters; its translator
    listens on ``amnezia_port`` (default: the WireGuard port + 1), beside
    plain WireGuard on the endpoint's port.  ``amnezia_legacy`` makes AWG 1.0
    parameters, ``amnezia_v3`` AWG 3's (header protection, random trailers).
    """
    try:
        net = IPv4Network(subnet)
    except ValueError as exc:
        raise ConfigError(f"bad --subnet {subnet!r}: {exc}") from None
    if net.prefixlen > 30:
        raise ConfigError(f"bad --subnet {subnet!r}: too small (at most /30)")
    for server in dns:
        try:
            ip_address(server)
        except ValueError:
            raise ConfigError(f"bad --dns {server!r}: expected an IP address") from None
    config = ServerConfig(
        interface=check_interface(interface),
        endpoint=parse_endpoint(endpoint, what="--endpoint", default_port=DEFAULT_PORT),
        subnet=net,
        dns=dns,
        allow=allow,
        deny=deny,
        netns=netns,
    )
    if amnezia:
        port = config.endpoint.port + 1 if amnezia_port is None else amnezia_port
        if not 1 <= port <= 65535 or port == config.endpoint.port:
            raise ConfigError(f"bad --amnezia-port {port}: 1-65535, not the WireGuard port")
        if amnezia_legacy and amnezia_v3:
            raise ConfigError("--amnezia-legacy and --amnezia-v3 exclude each other")
        params = AmneziaParams.generate(legacy=amnezia_legacy, awg3=amnezia_v3)
        config = replace(config, amnezia=params, amnezia_port=port)
    elif amnezia_port is not None or amnezia_legacy or amnezia_v3:
        raise ConfigError("--amnezia-port, --amnezia-legacy and --amnezia-v3 need --amnezia")
    config.policy()  # checks --allow/--deny
    return config


@dataclass(frozen=True, slots=True)
class PeerView:
    """What ``list`` and the metrics show about a peer (no keys)."""

    peer: Peer
    live: PeerStatus | None


class VpnServer:
    """The VPN of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "vpn"
        self.config_path = self.dir / "server.json"
        self.key_path = self.dir / "server.key"
        self.runtime_path = self.dir / "runtime.json"
        self.log_path = self.dir / "wireguard-go.log"
        self.db = PeerDatabase(self.dir / "peers.json")
        if not self.config_path.exists():
            raise ConfigError(f"no VPN in {state_dir}: run resist vpn init first")
        try:
            doc = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.config_path}: {exc}") from None
        self.config = ServerConfig.from_json(doc, str(self.config_path))
        self.device = WireGuardDevice(self.config.interface, Host(self.config.netns))

    @classmethod
    def initialise(cls, state_dir: Path, config: ServerConfig) -> VpnServer:
        directory = state_dir / "vpn"
        if (directory / "server.json").exists():
            raise ConfigError(
                f"a VPN is already set up in {state_dir}: use resist vpn up, or another --state-dir"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys.load_or_create_key_file(directory / "server.key", what="server key")
        PeerDatabase(directory / "peers.json").write([])
        write_private(
            directory / "server.json", json.dumps(config.to_json(), indent=2, sort_keys=True)
        )
        return cls(state_dir)

    # -- keys ----------------------------------------------------------------

    def _private_key(self) -> str:
        pair = keyfile.read_private(self.key_path, keys.parse_key_file, what="server key")
        return pair.private_text

    @property
    def public_key(self) -> str:
        return keys.encode(keys.public_from_private(keys.decode(self._private_key())))

    # -- runtime state -------------------------------------------------------

    def _runtime(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.runtime_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_runtime(self, doc: dict[str, Any]) -> None:
        write_private(self.runtime_path, json.dumps(doc))

    def is_up(self) -> bool:
        return self.device.exists()

    # -- interface -----------------------------------------------------------

    def up(self) -> str:
        """Bring the interface up (or re-sync it); how it was made."""
        cfg = self.config
        runtime = self._runtime()
        how = "already up"
        if not self.device.exists():
            pid = self.device.create(self.log_path)
            runtime["pid"] = pid
            self._save_runtime(runtime)
            how = "kernel module" if pid is None else f"wireguard-go, pid {pid}"
            self.device.configure(self._private_key(), cfg.endpoint.port)
            self.device.address_up(f"{cfg.address}/{cfg.subnet.prefixlen}", cfg.mtu)
        before = self.device.forwarding()
        if before != "1":
            runtime.setdefault("forwarding_before", before)
            self._save_runtime(runtime)
            self.device.set_forwarding("1")
        self.apply_firewall()
        self.sync()
        return how

    def apply_firewall(self) -> None:
        cfg = self.config
        operator = [
            n
            for n in (IPv4Network(x, strict=False) for x in cfg.allow + cfg.deny if ":" not in x)
            if isinstance(n, IPv4Network)
        ]
        self.device.nft(
            firewall.ruleset(
                interface=cfg.interface,
                subnet=cfg.subnet,
                server_address=cfg.address,
                policy=cfg.policy(),
                operator_networks=operator,
                dns_servers=cfg.dns,
            )
        )

    def down(self) -> None:
        runtime = self._runtime()
        if self.device.exists():
            with self.db.transaction() as peers:
                self._observe(peers)
                peers[:] = [p.detached() for p in peers]
        self.device.nft(firewall.delete_script(self.config.interface))
        self.device.delete(runtime.get("pid"))
        if runtime.get("forwarding_before") is not None:
            self.device.set_forwarding(str(runtime["forwarding_before"]))
        self.runtime_path.unlink(missing_ok=True)

    def sync(self) -> None:
        """Make the device's peers match the database (peer by peer)."""
        with self.db.transaction() as peers:
            self._observe(peers)
            self._block_limited(peers, utcnow())
            live = self.device.peers() if self.device.exists() else {}
            wanted = {p.public_key: p for p in peers if p.enabled}
            for key in live:
                if key not in wanted:
                    self.device.remove_peer(key)
            for i, peer in enumerate(peers):
                if peer.enabled and peer.public_key not in live:
                    self._attach(peer)
                elif not peer.enabled:
                    peers[i] = peer.detached()

    # -- peers ---------------------------------------------------------------

    @contextmanager
    def _peers(self) -> Iterator[list[Peer]]:
        with self.db.transaction() as peers:
            self._observe(peers)
            yield peers

    def _observe(self, peers: list[Peer]) -> dict[str, PeerStatus]:
        """Read the device's counters into the peers (nothing when it is down)."""
        if not self.device.exists():
            return {}
        live = self.device.peers()
        for i, peer in enumerate(peers):
            status = live.get(peer.public_key)
            if status is not None:
                peers[i] = peer.observe(status.rx, status.tx)
        return live

    def _attach(self, peer: Peer) -> None:
        if self.device.exists():
            self.device.set_peer(peer.public_key, peer.preshared_key, peer.allowed_ips())

    def _detach(self, peer: Peer) -> Peer:
        if self.device.exists():
            self.device.remove_peer(peer.public_key)
        return peer.detached()

    def _block_limited(self, peers: list[Peer], now: datetime) -> list[tuple[str, DisabledReason]]:
        blocked: list[tuple[str, DisabledReason]] = []
        for i, peer in enumerate(peers):
            reason = peer.why_blocked(now) if peer.enabled else None
            if reason is not None:
                peers[i] = replace(self._detach(peer), disabled=reason)
                blocked.append((peer.name, reason))
                log.warning("peer %s disabled: %s", peer.name, reason.value)
        return blocked

    def _client_config(self, peer: Peer, private_key: str) -> str:
        """The client's config: AmneziaWG when the server has it on, else WireGuard."""
        assert peer.address is not None
        endpoint = self.config.amnezia_endpoint or self.config.endpoint
        return clientconf.render(
            clientconf.ClientConfig(
                private_key=private_key,
                address=f"{peer.address}/32",
                server_public_key=self.public_key,
                endpoint=str(endpoint),
                preshared_key=peer.preshared_key,
                dns=self.config.dns,
                amnezia=self.config.amnezia,
                # S4 bytes of padding ride on every transport packet: keep them in one MTU
                # (and give wg-quick behind amnezia-client an MTU, or it takes loopback's)
                mtu=None
                if self.config.amnezia is None
                else self.config.mtu - self.config.amnezia.s4,
            )
        )

    def peer_public_keys(self) -> list[bytes]:
        """Every enabled peer's public key (the translator's mac1 candidates)."""
        return [keys.decode(p.public_key) for p in self.db.read() if p.enabled]

    def add(
        self, name: str, *, expires: datetime | None = None, quota: int | None = None
    ) -> tuple[Peer, str]:
        """A new client; its wg-quick config (the only copy of its private key)."""
        check_name(name)
        now = utcnow()
        if expires is not None and expires <= now:
            raise ConfigError(f"--expires {expires.isoformat()} is already past")
        pair = keys.KeyPair.generate()
        with self._peers() as peers:
            if any(p.name == name for p in peers):
                raise ConfigError(f"a peer named {name!r} exists (remove it or pick another name)")
            peer = Peer(
                name=name,
                kind=PeerKind.CLIENT,
                public_key=pair.public_text,
                preshared_key=keys.encode(keys.generate_psk()),
                address=next_address(peers, self.config.subnet, self.config.address),
                created=now,
                expires=expires,
                quota_bytes=quota,
            )
            self._attach(peer)
            peers.append(peer)
        return peer, self._client_config(peer, pair.private_text)

    def add_probe(
        self, public_key: str, name: str | None = None, *, again: bool = False
    ) -> tuple[Peer, bool]:
        """A prober's key as a peer with no routes: it can handshake, nothing more.

        Returns ``(peer, added)``.  A key or name already taken is an error
        (the operator adding a probe by hand), unless ``again``: a
        registration, run again and again, gets back the probe peer that
        already holds the key, unchanged, and a taken name gets a number.
        """
        keys.decode(public_key, what="probe public key")
        name = check_name(name or "probe-" + "".join(c for c in public_key if c.isalnum())[:8])
        with self._peers() as peers:
            holder = next((p for p in peers if p.public_key == public_key), None)
            if holder is not None and not again:
                raise ConfigError(f"peer {holder.name!r} already has that name or key")
            if holder is not None:
                if holder.kind is not PeerKind.PROBE:
                    raise ConfigError(f"key of probe {name} is already client {holder.name}'s")
                return holder, False
            taken = {p.name for p in peers}
            if name in taken and not again:
                raise ConfigError(f"peer {name!r} already has that name or key")
            base, n = name, 2
            while name in taken:
                name = f"{base[:28]}-{n}"
                n += 1
            peer = Peer(name=name, kind=PeerKind.PROBE, public_key=public_key, created=utcnow())
            self._attach(peer)
            peers.append(peer)
        return peer, True

    def remove(self, name: str) -> Peer:
        with self._peers() as peers:
            i = find(peers, name)
            peer = peers.pop(i)
            if peer.enabled:
                self._detach(peer)
        return peer

    def disable(self, name: str) -> Peer:
        with self._peers() as peers:
            i = find(peers, name)
            peer = peers[i]
            if peer.enabled:
                peer = self._detach(peer)
            peers[i] = peer = replace(peer, disabled=DisabledReason.MANUAL)
        return peer

    def enable(self, name: str) -> Peer:
        with self._peers() as peers:
            i = find(peers, name)
            peer = replace(peers[i], disabled=None)
            reason = peer.why_blocked(utcnow())
            if reason is DisabledReason.EXPIRED:
                raise ConfigError(f"{name} has expired: give it a new date with resist vpn limit")
            if reason is DisabledReason.QUOTA:
                raise ConfigError(
                    f"{name} has used its quota: raise it or reset usage with resist vpn limit"
                )
            if not peers[i].enabled:
                self._attach(peer)
            peers[i] = peer
        return peer

    def limit(
        self,
        name: str,
        *,
        expires: datetime | None = None,
        clear_expiry: bool = False,
        quota: int | None = None,
        clear_quota: bool = False,
        reset_usage: bool = False,
    ) -> Peer:
        """Change a peer's expiry or quota (``enforce`` applies them)."""
        with self._peers() as peers:
            i = find(peers, name)
            peer = peers[i]
            if expires is not None or clear_expiry:
                peer = replace(peer, expires=expires)
            if quota is not None or clear_quota:
                peer = replace(peer, quota_bytes=quota)
            if reset_usage:
                peer = replace(peer, counted_rx=0, counted_tx=0)
            peers[i] = peer
        return peer

    def rotate(self, name: str) -> tuple[Peer, str]:
        """New keys for a client: the old config stops working at once."""
        pair = keys.KeyPair.generate()
        with self._peers() as peers:
            i = find(peers, name)
            old = peers[i]
            if old.kind is not PeerKind.CLIENT:
                raise ConfigError(f"{name} is a probe: remove it and add the prober's new key")
            if any(p.public_key == pair.public_text for p in peers):  # pragma: no cover
                raise ConfigError("key collision; try again")
            new = replace(
                old.detached(),
                public_key=pair.public_text,
                preshared_key=keys.encode(keys.generate_psk()),
            )
            if old.enabled:
                self._detach(old)
                self._attach(new)
            peers[i] = new
        return new, self._client_config(new, pair.private_text)

    def enforce(self, now: datetime | None = None) -> list[tuple[str, DisabledReason]]:
        """Disable every enabled peer past its expiry or over its quota."""
        with self._peers() as peers:
            return self._block_limited(peers, now or utcnow())

    def view(self) -> list[PeerView]:
        """Every peer with its live status, after accounting the counters."""
        with self.db.transaction() as peers:
            live = self._observe(peers)
            return [PeerView(p, live.get(p.public_key)) for p in peers]

    def probe_config(self) -> tuple[str, Endpoint]:
        """The server's public key and endpoint, as a prober needs them."""
        return self.public_key, self.config.endpoint


def fail_if_missing_tools() -> None:
    from resistance.vpn.device import tools_missing

    missing = tools_missing(userspace=False)
    if missing:
        raise VpnError(
            f"missing {', '.join(missing)}: "
            "apt-get install wireguard-tools nftables iproute2 procps"
        )
