"""MTProto state that every process of one node shares: replay cache, file lock.

With ``--workers N`` the kernel spreads new connections over N processes
(``SO_REUSEPORT``), so a replayed fake-TLS hello may reach a worker that did
not see the original.  A per-process cache would serve it.  The replay cache
here is therefore one table in a file of the state directory, mapped
(``MAP_SHARED``) by every worker, with an exclusive ``flock`` around each
check-and-insert: a hello seen by any worker is refused by all of them.

Why a mapped file and not a service in the supervisor: a check costs two
``flock`` calls and one 256-byte read and write of shared memory (a few
microseconds, measured in ``bench/mtproto.py --replay-cost``) where a round
trip over a unix socket to another process costs tens; no worker waits on
another process's event loop; and the table lives in the page cache, so it
survives a worker's crash and the node's restart without any saving (a
machine's crash loses only what the kernel had not yet written back).

The table is set-associative: a key's set is chosen by a keyed hash (the key
is random per file, so nobody can aim entries at one set), each set holds
``WAYS`` slots of (key, expiry).  An insert takes an empty or expired slot
of its set; in a full set of live entries it evicts the one that expires
first.  So an entry is refused for its whole window unless its set
overflows: at the default size (1,048,576 slots, a sparse 16 MiB file)
200,000 live entries (660 authenticated handshakes a second, held for the
5-minute window) evict none (checked in the unit tests).  Evictions are
counted and logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("resistance.node.mtproto")

SHARED_REPLAY_FILE = "mtproto-replay.map"
LOCK_FILE = "mtproto.lock"
MAGIC = b"RSTRPL01"
_HEADER = struct.Struct("<8sII16s")  # magic, sets, ways, hash key
HEADER_LEN = 64
_SLOT = struct.Struct("<Qq")  # key (0: empty), expiry (unix seconds)


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the node's state-directory lock: one process at a time changes shared files.

    Workers of one node resolve generated secrets and draw the fake
    certificate size under it, so they all end with the same values.
    """
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class SharedReplayCache:
    """Tokens seen recently by any process of the node, in a shared mapped file.

    Same interface as the per-process ``ReplayCache``: :meth:`seen` checks
    and remembers in one step, atomically across processes.
    """

    WAYS = 16
    SETS = 1 << 16

    def __init__(self, path: Path, *, sets: int = SETS, ways: int = WAYS) -> None:
        if sets <= 0 or sets & (sets - 1) or ways <= 0:
            raise ValueError("sets must be a power of two and ways positive")
        self.path = path
        self.evicted = 0
        size = HEADER_LEN + sets * ways * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                head = os.pread(fd, _HEADER.size, 0)
                valid = (
                    len(head) == _HEADER.size
                    and os.fstat(fd).st_size == size
                    and _HEADER.unpack(head)[:3] == (MAGIC, sets, ways)
                )
                if not valid:
                    if os.fstat(fd).st_size:
                        log.warning("%s has another layout: starting an empty replay cache", path)
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)  # sparse: pages appear as they are used
                    os.pwrite(fd, _HEADER.pack(MAGIC, sets, ways, os.urandom(16)), 0)
                    head = os.pread(fd, _HEADER.size, 0)
                self._key = _HEADER.unpack(head)[3]
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._mask = sets - 1
        self._ways = ways
        self._set = struct.Struct("<" + "Qq" * ways)
        self._set_len = ways * _SLOT.size

    def _locate(self, token: bytes) -> tuple[int, int]:
        # The first 8 bytes, as the per-process cache kept (so its saved entries carry over).
        digest = hashlib.blake2b(token[:8], key=self._key, digest_size=8).digest()
        (value,) = struct.unpack("<Q", digest)
        key = value | 1  # never 0, the empty slot's mark
        return key, HEADER_LEN + ((value >> 1) & self._mask) * self._set_len

    def seen(self, token: bytes, until: float, now: float) -> bool:
        """True if ``token`` was seen and has not expired; else remember it until ``until``."""
        key, offset = self._locate(token)
        expiry = math.ceil(until) + 1  # whole seconds, never shorter than asked
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            slots = self._set.unpack_from(self._map, offset)
            free = -1
            soonest = 0
            for i in range(0, 2 * self._ways, 2):
                slot_key, slot_expiry = slots[i], slots[i + 1]
                if slot_expiry > now:
                    if slot_key == key:
                        return True
                    if free < 0 and slot_expiry < slots[2 * soonest + 1]:
                        soonest = i // 2
                elif free < 0:
                    free = i // 2
            if free < 0:
                free = soonest
                if not self.evicted:
                    log.warning("MTProto replay cache: a full set; evicting the soonest to expire")
                self.evicted += 1
            _SLOT.pack_into(self._map, offset + free * _SLOT.size, key, expiry)
            return False
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def live(self, now: float) -> int:
        """Entries not yet expired (a full scan: for tests and diagnostics)."""
        count = 0
        slots = (len(self._map) - HEADER_LEN) // _SLOT.size
        for i in range(slots):
            key, expiry = _SLOT.unpack_from(self._map, HEADER_LEN + i * _SLOT.size)
            count += bool(key) and expiry > now
        return count

    @property
    def capacity(self) -> int:
        return (self._mask + 1) * self._ways

    def save(self, path: Path | None = None, now: float | None = None) -> None:
        """Write dirty pages back (the table is shared and kept without this)."""
        self._map.flush()

    def close(self) -> None:
        if not self._map.closed:
            self._map.flush()
            self._map.close()
            os.close(self._fd)


SHARED_USERS_FILE = "mtproto-users.map"
USERS_MAGIC = b"RSTUSR01"
_USERS_HEADER = struct.Struct("<8sII16s")  # magic, slots, workers, hash key
_USER_HEAD = struct.Struct("<QQ")  # name key (0: empty), bytes used node-wide
_ACTIVE = struct.Struct("<i")
MAX_PROBE = 64


class SharedUsers:
    """Per-user numbers that must hold node-wide under ``--workers``: bytes used
    (for quotas) and open connections (for connection limits).

    One mapped file in the state directory, made afresh by the supervisor
    when the node starts (bytes used come from ``mtproto-usage.json``), with
    a slot per user name: the bytes used, and one connection count per
    worker, so that a worker that dies and is replaced clears only its own
    column.  Changes happen under an exclusive ``flock``; a worker adds its
    bytes in batches (:data:`SYNC_BYTES`) so relaying costs no lock per read.
    """

    SLOTS = 1 << 16
    SYNC_BYTES = 1 << 20
    """A worker adds its bytes to the node's count at least this often (and at
    every sweep): a quota is overrun by at most this much per worker."""

    def __init__(self, path: Path, workers: int, column: int) -> None:
        self.path = path
        self.workers = workers
        self.column = column
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            head = os.pread(fd, _USERS_HEADER.size, 0)
            if len(head) != _USERS_HEADER.size:
                raise OSError(f"{path} is damaged")
            magic, slots, cols, self._key = _USERS_HEADER.unpack(head)
            self._slot_len = _USER_HEAD.size + 4 * cols
            size = HEADER_LEN + slots * self._slot_len
            if magic != USERS_MAGIC or cols != workers or os.fstat(fd).st_size != size:
                raise OSError(f"{path} was made for another node")
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._slots = int(slots)
        self._active = struct.Struct(f"<{cols}i")
        with self._locked():  # a replaced worker starts with no connections of its own
            for slot in range(slots):
                offset = HEADER_LEN + slot * self._slot_len
                if _USER_HEAD.unpack_from(self._map, offset)[0]:
                    _ACTIVE.pack_into(self._map, offset + _USER_HEAD.size + 4 * column, 0)

    @classmethod
    def create(cls, path: Path, workers: int, used: dict[str, int], *, slots: int = SLOTS) -> None:
        """Make the file afresh (the supervisor, before any worker starts)."""
        slot_len = _USER_HEAD.size + 4 * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, HEADER_LEN + slots * slot_len)
            os.pwrite(fd, _USERS_HEADER.pack(USERS_MAGIC, slots, workers, os.urandom(16)), 0)
        finally:
            os.close(fd)
        made = cls(path, workers, 0)
        try:
            for name, value in used.items():
                slot = made.slot(name)
                if slot is not None:
                    made.add_used(slot, value)
        finally:
            made.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def slot(self, name: str) -> int | None:
        """The user's slot (claimed if new), or ``None`` when the table is full there."""
        digest = hashlib.blake2b(name.encode(), key=self._key, digest_size=8).digest()
        key: int = struct.unpack("<Q", digest)[0] | 1
        with self._locked():
            for probe in range(MAX_PROBE):
                slot = (key + probe) % self._slots
                offset = HEADER_LEN + slot * self._slot_len
                found = _USER_HEAD.unpack_from(self._map, offset)[0]
                if found == key:
                    return slot
                if found == 0:
                    _USER_HEAD.pack_into(self._map, offset, key, 0)
                    return slot
        log.warning("MTProto user table of the workers is full: %s is counted per worker", name)
        return None

    def add_used(self, slot: int, n: int) -> int:
        """Add ``n`` bytes to the user's node-wide count; the new count."""
        offset = HEADER_LEN + slot * self._slot_len
        with self._locked():
            key, used = _USER_HEAD.unpack_from(self._map, offset)
            used += n
            _USER_HEAD.pack_into(self._map, offset, key, used)
        return int(used)

    def claim(self, slot: int, limit: int | None) -> bool:
        """One more connection of the user in this worker, unless the node has ``limit``."""
        offset = HEADER_LEN + slot * self._slot_len + _USER_HEAD.size
        with self._locked():
            counts = self._active.unpack_from(self._map, offset)
            if limit is not None and sum(counts) >= limit:
                return False
            mine = offset + 4 * self.column
            _ACTIVE.pack_into(self._map, mine, counts[self.column] + 1)
        return True

    def release(self, slot: int) -> None:
        mine = HEADER_LEN + slot * self._slot_len + _USER_HEAD.size + 4 * self.column
        with self._locked():
            (count,) = _ACTIVE.unpack_from(self._map, mine)
            _ACTIVE.pack_into(self._map, mine, max(0, count - 1))

    def active(self, slot: int) -> int:
        offset = HEADER_LEN + slot * self._slot_len + _USER_HEAD.size
        return sum(self._active.unpack_from(self._map, offset))

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)


__all__ = [
    "LOCK_FILE",
    "SHARED_REPLAY_FILE",
    "SHARED_USERS_FILE",
    "SharedReplayCache",
    "SharedUsers",
    "state_lock",
]
