"""The peer database: who may connect, until when, with how much data.

It is the source of truth.  The running interface is made to match it (one
``wg set`` per change, never a wholesale replacement), and after a restart
``resist vpn up`` applies it again.  It lives in one JSON file written
atomically with mode 0600 (it holds preshared keys) under an exclusive lock,
so the ``serve`` loop and a ``resist vpn add`` never lose each other's write.

Traffic accounting survives restarts: WireGuard's per-peer counters start at
zero whenever a peer is (re)configured, so each peer keeps ``counted_*``
(every byte ever seen) and ``device_*`` (the device counter at the last look).
A counter below the last look means the device started again from zero.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Final

from resistance.errors import ConfigError
from resistance.paths import write_private
from resistance.vpn import keys

SCHEMA: Final = 1
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", re.ASCII)


class PeerKind(StrEnum):
    CLIENT = "client"
    PROBE = "probe"


class DisabledReason(StrEnum):
    MANUAL = "manual"
    EXPIRED = "expired"
    QUOTA = "quota"


@dataclass(frozen=True, slots=True)
class Peer:
    """One peer.  ``address`` is None for probes (they get no route)."""

    name: str
    kind: PeerKind
    public_key: str
    created: datetime
    address: IPv4Address | None = None
    preshared_key: str | None = field(default=None, repr=False)
    expires: datetime | None = None
    quota_bytes: int | None = None
    disabled: DisabledReason | None = None
    counted_rx: int = 0
    counted_tx: int = 0
    device_rx: int = 0
    device_tx: int = 0

    @property
    def enabled(self) -> bool:
        return self.disabled is None

    @property
    def used_bytes(self) -> int:
        return self.counted_rx + self.counted_tx

    def allowed_ips(self) -> list[str]:
        return [] if self.address is None else [f"{self.address}/32"]

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def over_quota(self) -> bool:
        return self.quota_bytes is not None and self.used_bytes >= self.quota_bytes

    def why_blocked(self, now: datetime) -> DisabledReason | None:
        """The limit this peer has reached, if any (expiry first)."""
        if self.expired(now):
            return DisabledReason.EXPIRED
        if self.over_quota():
            return DisabledReason.QUOTA
        return None

    def observe(self, rx: int, tx: int) -> Peer:
        """Account the device counters read now (see the module docstring)."""
        new_rx = rx - self.device_rx if rx >= self.device_rx else rx
        new_tx = tx - self.device_tx if tx >= self.device_tx else tx
        return replace(
            self,
            counted_rx=self.counted_rx + new_rx,
            counted_tx=self.counted_tx + new_tx,
            device_rx=rx,
            device_tx=tx,
        )

    def detached(self) -> Peer:
        """The peer was removed from the device: its counters start again at zero."""
        return replace(self, device_rx=0, device_tx=0)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"bad peer name {name!r}: 1-32 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------
# Quotas and expiry dates as people write them.

_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?", re.ASCII | re.IGNORECASE)
_UNITS: Final = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(text: str) -> int:
    """``50GB`` (decimal), ``1.5GiB`` (binary), ``1000`` (bytes) into bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"bad quota {text!r}: expected a size like 50GB, 500MB or 2GiB")
    number, unit = match[1], (match[2] or "").lower()
    value = int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"bad quota {text!r}: must be more than zero")
    return value


def format_size(value: int) -> str:
    for unit, size in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


_DURATION: Final = re.compile(r"(\d+)\s*([smhdw])", re.ASCII)
_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, *, now: datetime) -> datetime:
    """When access ends, in UTC.

    ``2025-12-31`` means through that day (UTC); an ISO 8601 time
    (``2025-12-31T18:00:00+03:00``; without an offset, UTC) means that
    instant; ``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` count from now.
    """
    text = text.strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        return now + timedelta(seconds=int(duration[1]) * _SECONDS[duration[2]])
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return day + timedelta(days=1)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"bad expiry {text!r}: expected a date (2025-12-31), an ISO time or a duration (30d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --------------------------------------------------------------------------
# The file.


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _peer_to_json(peer: Peer) -> dict[str, Any]:
    return {
        "name": peer.name,
        "kind": peer.kind.value,
        "public_key": peer.public_key,
        "preshared_key": peer.preshared_key,
        "address": None if peer.address is None else str(peer.address),
        "created": _time_text(peer.created),
        "expires": None if peer.expires is None else _time_text(peer.expires),
        "quota_bytes": peer.quota_bytes,
        "disabled": None if peer.disabled is None else peer.disabled.value,
        "counted_rx": peer.counted_rx,
        "counted_tx": peer.counted_tx,
        "device_rx": peer.device_rx,
        "device_tx": peer.device_tx,
    }


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: field {key!r} is missing or of the wrong type")
    return value


def _time(value: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{where}: bad time {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise ConfigError(f"{where}: time {value[:40]!r} has no UTC offset")
    return moment.astimezone(UTC)


def _count(obj: dict[str, Any], key: str, where: str) -> int:
    value = _get(obj, key, int, where)
    if value < 0:
        raise ConfigError(f"{where}: field {key!r} is negative")
    return int(value)


def _peer_from_json(obj: Any, where: str) -> Peer:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: not an object")
    name = check_name(_get(obj, "name", str, where))
    where = f"{where} ({name})"
    try:
        kind = PeerKind(_get(obj, "kind", str, where))
        disabled_text = _get(obj, "disabled", (str, type(None)), where)
        disabled = None if disabled_text is None else DisabledReason(disabled_text)
    except ValueError:
        raise ConfigError(f"{where}: unknown kind or disabled reason") from None
    keys.decode(_get(obj, "public_key", str, where), what=f"{where} public key")
    psk = _get(obj, "preshared_key", (str, type(None)), where)
    if psk is not None:
        keys.decode(psk, what=f"{where} preshared key")
    address_text = _get(obj, "address", (str, type(None)), where)
    try:
        address = None if address_text is None else IPv4Address(address_text)
    except ValueError:
        raise ConfigError(f"{where}: bad address") from None
    if (address is None) != (kind is PeerKind.PROBE):
        raise ConfigError(f"{where}: clients have an address and probes none")
    expires_text = _get(obj, "expires", (str, type(None)), where)
    quota = _get(obj, "quota_bytes", (int, type(None)), where)
    if quota is not None and quota <= 0:
        raise ConfigError(f"{where}: quota must be positive")
    return Peer(
        name=name,
        kind=kind,
        public_key=obj["public_key"],
        preshared_key=psk,
        address=address,
        created=_time(_get(obj, "created", str, where), where),
        expires=None if expires_text is None else _time(expires_text, where),
        quota_bytes=quota,
        disabled=disabled,
        counted_rx=_count(obj, "counted_rx", where),
        counted_tx=_count(obj, "counted_tx", where),
        device_rx=_count(obj, "device_rx", where),
        device_tx=_count(obj, "device_tx", where),
    )


def dumps(peers: list[Peer]) -> str:
    doc = {"schema": SCHEMA, "peers": [_peer_to_json(p) for p in peers]}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def loads(text: str, *, source: str = "peer database") -> list[Peer]:
    """Parse and check the database; any fault is one :class:`ConfigError` line."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{source}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ConfigError(f"{source}: not a schema-{SCHEMA} peer database")
    items = doc.get("peers")
    if not isinstance(items, list):
        raise ConfigError(f"{source}: 'peers' is not a list")
    peers = [_peer_from_json(item, f"{source}: peer {i}") for i, item in enumerate(items)]
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    seen_addresses: set[IPv4Address] = set()
    for peer in peers:
        if peer.name in seen_names or peer.public_key in seen_keys:
            raise ConfigError(f"{source}: peer {peer.name!r} appears twice")
        if peer.address is not None and peer.address in seen_addresses:
            raise ConfigError(f"{source}: address of {peer.name!r} is used twice")
        seen_names.add(peer.name)
        seen_keys.add(peer.public_key)
        if peer.address is not None:
            seen_addresses.add(peer.address)
    return peers


class PeerDatabase:
    """The peer file with its lock; use :meth:`transaction` for every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    def read(self) -> list[Peer]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        return loads(text, source=str(self.path))

    def write(self, peers: list[Peer]) -> None:
        write_private(self.path, dumps(peers))

    @contextmanager
    def transaction(self) -> Iterator[list[Peer]]:
        """Lock, read, let the caller change the list in place, write on success."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            peers = self.read()
            before = dumps(peers)
            yield peers
            if dumps(peers) != before:
                self.write(peers)
        finally:
            os.close(fd)


def find(peers: list[Peer], name: str) -> int:
    for i, peer in enumerate(peers):
        if peer.name == name:
            return i
    raise ConfigError(f"no peer named {name!r} (see resist vpn list)")


def next_address(peers: list[Peer], subnet: IPv4Network, server: IPv4Address) -> IPv4Address:
    used = {p.address for p in peers if p.address is not None} | {server}
    for host in subnet.hosts():
        if host not in used:
            return host
    raise ConfigError(f"subnet {subnet} is full: remove a peer or choose a larger --subnet")


def utcnow() -> datetime:
    return datetime.now(UTC)
