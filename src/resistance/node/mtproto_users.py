"""MTProto users of a node: secrets, limits, usage, and finding who sent a hello.

Identifying the user of a fake-TLS hello means finding the key whose HMAC
matches: the hello carries nothing else that names the user.  The table tries
first the user who last authenticated from the same client network (a
keyed-hash hint, never the address itself), which is right for nearly every
connection since an app opens several connections in a row; only a first
connection from a network costs one HMAC per user.  ``bench/mtproto.py``
measures both cases at 1, 100 and 10,000 users.  Such full scans are
rationed per client network and in all (:class:`ScanBudget`), so a flood of
well-formed foreign hellos cannot take the node's time from its users.

State kept in the state directory (all mode 0600):

* ``mtproto-users.toml`` - the secrets the node generated for users
  configured without one, so that their links survive restarts;
* ``mtproto-usage.json`` - bytes used per user, for quotas across restarts;
* ``mtproto-replay.map`` - the replay cache shared by the node's workers
  (see :mod:`resistance.node.mtproto_shared`); an older node's
  ``mtproto-replay.bin`` (:class:`ReplayCache`) is read into it once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from resistance.config import MTProtoUserSpec
from resistance.errors import ConfigError, ProtocolError
from resistance.paths import write_atomic, write_private
from resistance.proto import obfuscated2
from resistance.proto.faketls import (
    DEFAULT_WINDOW,
    ClientHello,
    TimeWindow,
    hello_timestamp,
    new_secret_key,
    zeroed_hello,
)

GENERATED_FILE = "mtproto-users.toml"
USAGE_FILE = "mtproto-usage.json"
REPLAY_FILE = "mtproto-replay.bin"
HINT_CAPACITY = 65536
#: Tables up to this size are scanned without a budget (under 0.5 ms a hello).
SCAN_BUDGET_FROM = 256

_T = TypeVar("_T")


@dataclass(slots=True, eq=False)
class MTProtoUser:
    """A user with a key and limits; ``used`` and ``active`` change while serving."""

    name: str
    key: bytes
    quota_bytes: int | None = None
    expires: float | None = None
    max_connections: int | None = None
    max_addresses: int | None = None
    used: int = 0
    active: int = 0
    sessions: set[object] = field(default_factory=set)
    addresses: dict[bytes, int] = field(default_factory=dict)
    """Open connections per client address (keyed hashes, never addresses)."""
    unsynced: int = 0
    """With ``--workers``: bytes this worker relayed and has not added to the node's count."""
    shared_slot: int | None = None
    """With ``--workers``: the user's slot in the node's shared table."""

    def refusal(self, now: float, address: bytes | None = None) -> str | None:
        """Why this user may not open another connection now, or ``None``."""
        if self.expires is not None and now > self.expires:
            return "expired"
        if self.quota_bytes is not None and self.used >= self.quota_bytes:
            return "quota"
        if self.max_connections is not None and self.active >= self.max_connections:
            return "user_connections"
        if (
            self.max_addresses is not None
            and address not in self.addresses
            and len(self.addresses) >= self.max_addresses
        ):
            return "user_addresses"
        return None


class HandshakeRefused(ProtocolError):
    """A hello or init that does not authenticate; ``reason`` labels the metric."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"MTProto handshake refused: {reason}")
        self.reason = reason


def load_generated(state_dir: Path) -> dict[str, bytes]:
    path = state_dir / GENERATED_FILE
    if not path.exists():
        return {}
    out: dict[str, bytes] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        try:
            key = bytes.fromhex(value.strip().strip('"'))
        except ValueError:
            key = b""
        if not sep or len(key) != obfuscated2.SECRET_LEN:
            raise ConfigError(f"{path} is damaged at {line[:40]!r}; remove that line")
        out[name.strip()] = key
    return out


def resolve_users(specs: Iterable[MTProtoUserSpec], state_dir: Path) -> list[MTProtoUser]:
    """Users with keys: configured ones as given, the others generated once and kept."""
    specs = list(specs)
    generated = load_generated(state_dir)
    changed = False
    users = []
    for spec in specs:
        key = spec.key
        if key is None:
            key = generated.get(spec.name)
            if key is None:
                key = generated[spec.name] = new_secret_key()
                changed = True
        users.append(
            MTProtoUser(
                spec.name,
                key,
                spec.quota_bytes,
                spec.expires,
                spec.max_connections,
                spec.max_addresses,
            )
        )
    if changed:
        text = "# MTProto secrets made by resist node for users given without one\n"
        text += "".join(f'{name} = "{key.hex()}"\n' for name, key in sorted(generated.items()))
        write_private(state_dir / GENERATED_FILE, text)
    if len({u.key for u in users}) != len(users):
        raise ConfigError("two MTProto users share a secret: each needs its own")
    return users


class UserTable:
    """Finds the user behind a hello or an init, trying the hinted user first."""

    __slots__ = ("_hint_key", "_hints", "budget", "by_name", "users", "window")

    def __init__(
        self,
        users: list[MTProtoUser],
        window: TimeWindow = DEFAULT_WINDOW,
        budget: ScanBudget | None = None,
    ) -> None:
        self.users = users
        self.budget = budget or ScanBudget()
        self.by_name = {u.name: u for u in users}
        self.window = window
        self._hints: OrderedDict[bytes, MTProtoUser] = OrderedDict()
        self._hint_key = os.urandom(16)

    def replace(self, users: list[MTProtoUser]) -> None:
        """New users (SIGHUP): usage and open sessions carry over by name."""
        for user in users:
            old = self.by_name.get(user.name)
            if old is not None:
                user.used, user.active, user.sessions = old.used, old.active, old.sessions
                user.unsynced = old.unsynced
                user.addresses = old.addresses
        self.users = users
        self.by_name = {u.name: u for u in users}
        self._hints.clear()

    def hint_for(self, peer_ip: str) -> bytes:
        """A keyed digest of the client's network (/24 or /56): no address is kept."""
        if ":" in peer_ip:
            try:
                address = ipaddress.IPv6Address(peer_ip.partition("%")[0])
            except ValueError:
                net = peer_ip
            else:
                mapped = address.ipv4_mapped
                net = (
                    str(mapped).rpartition(".")[0]
                    if mapped is not None
                    else str(ipaddress.IPv6Network((int(address) >> 72 << 72, 56)))
                )
        else:
            net = peer_ip.rpartition(".")[0]
        return hashlib.blake2b(net.encode(), key=self._hint_key, digest_size=16).digest()

    def address_key(self, peer_ip: str) -> bytes:
        """A keyed digest of one client address, for per-user address limits."""
        return hashlib.blake2b(peer_ip.encode(), key=self._hint_key, digest_size=16).digest()

    def _order(self, hint: bytes | None) -> Iterable[MTProtoUser]:
        first = self._hints.get(hint) if hint is not None else None
        if first is not None:
            yield first
        for user in self.users:
            if user is not first:
                yield user

    def _remember(self, hint: bytes | None, user: MTProtoUser) -> None:
        if hint is None:
            return
        self._hints[hint] = user
        self._hints.move_to_end(hint)
        if len(self._hints) > HINT_CAPACITY:
            self._hints.popitem(last=False)

    def _scan(
        self, hint: bytes | None, now: float, check: Callable[[MTProtoUser], _T | None]
    ) -> tuple[MTProtoUser, _T]:
        """Try the hinted user, then (within the scan budget) every other one."""
        first = self._hints.get(hint) if hint is not None else None
        if first is not None:
            found = check(first)
            if found is not None:
                self._hints.move_to_end(hint)  # type: ignore[arg-type]
                return first, found
        budget = self.budget if len(self.users) > SCAN_BUDGET_FROM else None
        if budget is not None and not budget.allow(hint, now):
            raise HandshakeRefused("scan_budget")
        started = time.perf_counter()
        try:
            for user in self.users:
                if user is first:
                    continue
                found = check(user)
                if found is not None:
                    self._remember(hint, user)
                    return user, found
        finally:
            if budget is not None:
                budget.spend(time.perf_counter() - started, now)
        raise HandshakeRefused("wrong_secret")

    def find_hello(
        self, hello: ClientHello, now: float, hint: bytes | None = None
    ) -> tuple[MTProtoUser, int]:
        """The user whose key made ``hello`` and its timestamp, or HandshakeRefused."""
        zeroed = zeroed_hello(hello.record)
        client_random = hello.random
        user, stamp = self._scan(hint, now, lambda u: hello_timestamp(u.key, zeroed, client_random))
        if not self.window.contains(stamp, now):
            raise HandshakeRefused("stale" if stamp < now else "future")
        return user, stamp

    def find_init(
        self, init: bytes, hint: bytes | None = None, now: float | None = None
    ) -> tuple[MTProtoUser, obfuscated2.Init]:
        """The user whose key made a classic/dd obfuscated2 init."""

        def check(user: MTProtoUser) -> obfuscated2.Init | None:
            try:
                return obfuscated2.parse_init(init, user.key)
            except ProtocolError:
                return None

        return self._scan(hint, time.time() if now is None else now, check)


class ScanBudget:
    """How much time full scans of the user table may take, per network and in all.

    A hello that its network's hinted user did not make costs one HMAC per
    user: 14 ms at 10,000 users.  A prober sending well-formed hellos could
    keep a core busy with them, so when the table is large (more than
    ``SCAN_BUDGET_FROM`` users) a full scan needs budget: at most
    ``per_network`` scans per ``period`` seconds from one client network, and
    scans may take at most ``share`` of the node's time overall.  An app
    needs one scan per network (its later connections hit the hint), so
    only floods are turned away, to the front like any other failure.
    """

    __slots__ = ("_networks", "_since", "_spent", "per_network", "period", "share")

    def __init__(self, *, per_network: int = 8, period: float = 60.0, share: float = 0.5) -> None:
        self.per_network = per_network
        self.period = period
        self.share = share
        self._networks: OrderedDict[bytes | None, tuple[float, int]] = OrderedDict()
        self._spent = 0.0
        self._since = 0.0

    def allow(self, network: bytes | None, now: float) -> bool:
        start, count = self._networks.get(network, (now, 0))
        if now - start >= self.period:
            start, count = now, 0
        if count >= self.per_network:
            return False
        # The global allowance: scan time so far in this second-long slot.
        if now - self._since >= 1.0:
            self._since, self._spent = now, 0.0
        if self._spent >= self.share:
            return False
        self._networks[network] = (start, count + 1)
        self._networks.move_to_end(network)
        if len(self._networks) > HINT_CAPACITY:
            self._networks.popitem(last=False)
        return True

    def spend(self, seconds: float, now: float) -> None:
        if now - self._since >= 1.0:
            self._since, self._spent = now, 0.0
        self._spent += seconds


def load_usage(state_dir: Path) -> dict[str, int]:
    path = state_dir / USAGE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged usage file resets counters rather than stopping the node
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int) and v >= 0}


def save_usage(state_dir: Path, users: Iterable[MTProtoUser]) -> None:
    data = json.dumps({u.name: u.used for u in users if u.used}, sort_keys=True)
    write_atomic(state_dir / USAGE_FILE, data.encode(), mode=0o600)


class ReplayCache:
    """Client randoms (and classic inits) seen recently, bounded, kept across restarts.

    Each entry is 8 bytes of the hello's random (or of the init's key
    material; a false match needs a 2^-64 coincidence) filed under the
    30-second bucket in which it stops mattering: a hello's timestamp plus
    the window's past side, after which the time check refuses it anyway.
    Whole buckets expire at once (no per-entry bookkeeping); an entry costs
    about 130 bytes, so the default cap holds the cache near 27 MB.  Beyond
    ``capacity`` entries the oldest bucket goes early, which only matters
    under more than ``capacity`` handshakes per window (default 200,000 per
    5 minutes: 660/s).
    """

    __slots__ = ("_buckets", "_count", "capacity")

    BUCKET = 30.0
    HEADER = struct.Struct("<qI")
    KEY = struct.Struct("<Q")

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._buckets: dict[int, set[int]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def buckets(self) -> dict[int, set[int]]:
        """Bucket number -> keys (for carrying a saved cache into the shared one)."""
        return self._buckets

    def _expire(self, now: float) -> None:
        current = int(now // self.BUCKET)
        for bucket in [b for b in self._buckets if b < current]:
            self._count -= len(self._buckets.pop(bucket))

    def seen(self, token: bytes, until: float, now: float) -> bool:
        """True if ``token`` was already seen; else remember it until ``until``."""
        self._expire(now)
        (key,) = self.KEY.unpack_from(token)
        for keys in self._buckets.values():
            if key in keys:
                return True
        self._buckets.setdefault(int(until // self.BUCKET), set()).add(key)
        self._count += 1
        while self._count > self.capacity and self._buckets:
            self._count -= len(self._buckets.pop(min(self._buckets)))
        return False

    def save(self, path: Path, now: float | None = None) -> None:
        self._expire(time.time() if now is None else now)
        parts = []
        for bucket, keys in self._buckets.items():
            parts.append(self.HEADER.pack(bucket, len(keys)))
            parts.append(struct.pack(f"<{len(keys)}Q", *keys))
        write_atomic(path, b"".join(parts), mode=0o600)

    def load(self, path: Path, now: float | None = None) -> None:
        """Read a saved cache; a damaged file loses only what cannot be read."""
        now = time.time() if now is None else now
        try:
            data = path.read_bytes()
        except OSError:
            return
        pos = 0
        while pos + self.HEADER.size <= len(data):
            bucket, count = self.HEADER.unpack_from(data, pos)
            pos += self.HEADER.size
            if pos + 8 * count > len(data):
                break
            keys = struct.unpack_from(f"<{count}Q", data, pos)
            pos += 8 * count
            if (bucket + 1) * self.BUCKET > now:
                merged = self._buckets.setdefault(bucket, set())
                before = len(merged)
                merged.update(keys)
                self._count += len(merged) - before
        while self._count > self.capacity and self._buckets:
            self._count -= len(self._buckets.pop(min(self._buckets)))
