"""MTProto users of a node: secrets, limits, usage, and finding who sent a hello.

Identifying the user of a fake-TLS hello means finding the key whose HMAC
matches: the hello carries nothing else that names the user.  The table tries
first the user who last authenticated from the same client network (a
keyed-hash hint, never the address itself), which is right for nearly every
connection since an app opens several connections in a row; only a first
connection from a network costs one HMAC per user.  ``bench/mtproto.py``
measures both cases at 1, 100 and 10,000 users.

State kept in the state directory (all mode 0600):

* ``mtproto-users.toml`` - the secrets the node generated for users
  configured without one, so that their links survive restarts;
* ``mtproto-usage.json`` - bytes used per user, for quotas across restarts;
* ``mtproto-replay.bin`` - the replay cache (see :class:`ReplayCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(slots=True, eq=False)
class MTProtoUser:
    """A user with a key and limits; ``used`` and ``active`` change while serving."""

    name: str
    key: bytes
    quota_bytes: int | None = None
    expires: float | None = None
    max_connections: int | None = None
    used: int = 0
    active: int = 0
    sessions: set[object] = field(default_factory=set)

    def refusal(self, now: float) -> str | None:
        """Why this user may not open another connection now, or ``None``."""
        if self.expires is not None and now > self.expires:
            return "expired"
        if self.quota_bytes is not None and self.used >= self.quota_bytes:
            return "quota"
        if self.max_connections is not None and self.active >= self.max_connections:
            return "user_connections"
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
            MTProtoUser(spec.name, key, spec.quota_bytes, spec.expires, spec.max_connections)
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

    __slots__ = ("_hint_key", "_hints", "by_name", "users", "window")

    def __init__(self, users: list[MTProtoUser], window: TimeWindow = DEFAULT_WINDOW) -> None:
        self.users = users
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
        self.users = users
        self.by_name = {u.name: u for u in users}
        self._hints.clear()

    def hint_for(self, peer_ip: str) -> bytes:
        """A keyed digest of the client's network (/24 or /56): no address is kept."""
        if ":" in peer_ip:
            net = ":".join(peer_ip.split(":")[:4])[:-1]
        else:
            net = peer_ip.rpartition(".")[0]
        return hashlib.blake2b(net.encode(), key=self._hint_key, digest_size=16).digest()

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

    def find_hello(
        self, hello: ClientHello, now: float, hint: bytes | None = None
    ) -> tuple[MTProtoUser, int]:
        """The user whose key made ``hello`` and its timestamp, or HandshakeRefused."""
        zeroed = zeroed_hello(hello.record)
        client_random = hello.random
        for user in self._order(hint):
            stamp = hello_timestamp(user.key, zeroed, client_random)
            if stamp is None:
                continue
            if not self.window.contains(stamp, now):
                raise HandshakeRefused("stale" if stamp < now else "future")
            self._remember(hint, user)
            return user, stamp
        raise HandshakeRefused("wrong_secret")

    def find_init(
        self, init: bytes, hint: bytes | None = None
    ) -> tuple[MTProtoUser, obfuscated2.Init]:
        """The user whose key made a classic/dd obfuscated2 init."""
        for user in self._order(hint):
            try:
                parsed = obfuscated2.parse_init(init, user.key)
            except ProtocolError:
                continue
            self._remember(hint, user)
            return user, parsed
        raise HandshakeRefused("wrong_secret")


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

    Each entry is 16 bytes of the hello's random (or of the init's key
    material) and the time it stops mattering: a hello's timestamp plus the
    window's past side (afterwards the time check refuses it anyway).
    Entries leave in insertion order once expired; beyond ``capacity`` the
    oldest leaves early, which only matters under more than ``capacity``
    handshakes per window (default 500,000 per 5 minutes: 1,600/s).
    """

    __slots__ = ("_entries", "capacity")

    RECORD = struct.Struct("<16sd")

    def __init__(self, capacity: int = 500_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            _key, until = next(iter(entries.items()))
            if until > now:
                break
            entries.popitem(last=False)

    def seen(self, token: bytes, until: float, now: float) -> bool:
        """True if ``token`` was already seen; else remember it until ``until``."""
        self._expire(now)
        key = token[:16]
        if key in self._entries:
            return True
        self._entries[key] = until
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return False

    def save(self, path: Path, now: float | None = None) -> None:
        self._expire(time.time() if now is None else now)
        data = b"".join(self.RECORD.pack(k, v) for k, v in self._entries.items())
        write_atomic(path, data, mode=0o600)

    def load(self, path: Path, now: float | None = None) -> None:
        now = time.time() if now is None else now
        try:
            data = path.read_bytes()
        except OSError:
            return
        size = self.RECORD.size
        for offset in range(0, len(data) - len(data) % size, size):
            key, until = self.RECORD.unpack_from(data, offset)
            if until > now:
                self._entries[key] = until
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
