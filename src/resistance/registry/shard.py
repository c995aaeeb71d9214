"""Which probes measure which proxy: rendezvous (HRW) hashing per vantage network.

Theory of operation.  Every probe belongs to one vantage network
(:func:`resistance.probe.verdict.network`): all control vantages form one
(they see proxies from outside the censorship, and vote together on "down"),
and the inside vantages of each country form one (they vote on "blocked in
CC").  Within a network, each active proxy goes to the ``replicas`` live
probes with the highest score ``mix(h(proxy) ^ s(probe))``, where ``h`` and
``s`` are keyed by a secret only the registry knows (derived from its ring
key): nobody outside can tell which probes measure a proxy, and no probe can
pick its proxies.  This is rendezvous hashing, so:

* the load is even: each of N probes gets about ``replicas / N`` of the
  proxies (all of them while N <= replicas);
* it is stable: a probe that joins takes only the proxies it now ranks in the
  top ``replicas`` for (about ``replicas / (N + 1)`` of them), one that leaves
  or falls silent gives only its own to the next in rank; nothing else moves;
* a silent probe is replaced within one round: a probe is live while its last
  batch is at most :func:`silent_after` old (1.5 rounds), and the share is
  computed over live probes on every pull.  The probe asking is always
  counted as live, so a new or returning probe gets its share at once.
  A batch's results count only inside the uploader's share, checked against
  the live probes as read at most :func:`live_ttl` ago (:class:`Fleet`, so
  an honest probe's batch costs no query); right after a probe falls
  silent, its peers' results for the proxies they took from it may go
  uncounted for that long.
* only a proxy's current replicas vote on its verdict (:func:`voters`):
  the evidence of a probe that left them stops counting at once instead of
  when it ages out (3 days); a network with no live probe at all keeps its
  last replicas (ranked among all its probes), since nobody replaced them.

Scores are 64-bit integers computed with numpy over all proxies at once
(a splitmix64 finaliser, a bijection, over keyed 64-bit seeds): 100,000
proxies by 100 probes of one network take about 0.1 s, with no query per
proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]

#: Proxies scored at once: the (CHUNK x probes) score matrix stays in the CPU's cache.
CHUNK = 1024


def shard_key(ring_key: bytes) -> bytes:
    """The sharding secret, derived from the registry's ring key (shared by its processes)."""
    return hmac.new(ring_key, b"resistance probe shards v1", hashlib.sha256).digest()


def _mix(x: U64) -> U64:
    """splitmix64's finaliser, in place: a bijection on 64-bit integers that spreads
    every bit (in place and in chunks, it costs about 2 ns per score)."""
    t = np.empty_like(x)
    np.right_shift(x, np.uint64(30), out=t)
    x ^= t
    x *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(x, np.uint64(27), out=t)
    x ^= t
    x *= np.uint64(0x94D049BB133111EB)
    np.right_shift(x, np.uint64(31), out=t)
    x ^= t
    return x


def _seed(key: bytes, what: bytes, number: int) -> int:
    digest = hashlib.blake2b(number.to_bytes(8, "big"), key=key, person=what, digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def proxy_hashes(key: bytes, proxy_ids: Sequence[int] | npt.NDArray[np.int64]) -> U64:
    """``h(proxy)`` for every id: a keyed bijection of the id."""
    ids = np.asarray(proxy_ids, dtype=np.int64).astype(np.uint64)
    ids *= np.uint64(0x9E3779B97F4A7C15)
    ids ^= np.uint64(_seed(key, b"proxy", 0))
    return _mix(ids)


def probe_seeds(key: bytes, probe_ids: Sequence[int]) -> U64:
    """``s(probe)`` for every probe id."""
    return np.array([_seed(key, b"probe", p) for p in probe_ids], dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class Shards:
    """The replicas of every proxy among one network's live probes."""

    proxy_ids: npt.NDArray[np.int64]
    probe_ids: tuple[int, ...]
    #: ``owners[i, r]`` is the index (into ``probe_ids``) of proxy i's r-th replica.
    owners: npt.NDArray[np.intp]

    def share(self, probe_id: int) -> npt.NDArray[np.int64]:
        """The ids of the proxies this probe measures (ascending)."""
        try:
            index = self.probe_ids.index(probe_id)
        except ValueError:
            return self.proxy_ids[:0]
        mine: npt.NDArray[np.int64] = self.proxy_ids[(self.owners == index).any(axis=1)]
        return mine

    def replicas_of(self, proxy_id: int) -> tuple[int, ...]:
        at = int(np.searchsorted(self.proxy_ids, proxy_id))
        if at >= len(self.proxy_ids) or self.proxy_ids[at] != proxy_id:
            return ()
        return tuple(self.probe_ids[i] for i in self.owners[at])

    def counts(self) -> dict[int, int]:
        """How many proxies each probe measures."""
        found = np.bincount(self.owners.ravel(), minlength=len(self.probe_ids))
        return {p: int(n) for p, n in zip(self.probe_ids, found, strict=True)}


def assign(
    key: bytes,
    *,
    proxy_ids: Sequence[int] | npt.NDArray[np.int64],
    probe_ids: Sequence[int],
    replicas: int,
) -> Shards:
    """Each proxy's ``replicas`` top-scoring probes (every probe when there are fewer)."""
    probes = tuple(sorted(set(probe_ids)))
    ids = np.unique(np.asarray(proxy_ids, dtype=np.int64))
    keep = min(replicas, len(probes))
    owners = np.empty((len(ids), keep), dtype=np.intp)
    if keep == len(probes):
        owners[:] = np.arange(keep, dtype=np.intp)[None, :]
        return Shards(ids, probes, owners)
    seeds = probe_seeds(key, probes)[None, :]
    hashes = proxy_hashes(key, ids)
    for start in range(0, len(ids), CHUNK):
        scores = _mix(hashes[start : start + CHUNK, None] ^ seeds)
        rows = np.arange(len(scores))
        for r in range(keep):  # the top scores one by one: cheaper than a partition
            best = scores.argmax(axis=1)
            owners[start : start + CHUNK, r] = best
            scores[rows, best] = 0
    return Shards(ids, probes, owners)


def silent_after(round_seconds: int) -> int:
    """Seconds without a batch after which a probe counts as silent: 1.5 rounds (at
    least a minute, so back-to-back rounds of a continuous probe are not mistaken)."""
    return max(round_seconds * 3 // 2, 60)


def live_ttl(round_seconds: int) -> int:
    """How long a batch check may reuse the live probes it last read: a tenth of
    :func:`silent_after`, between 5 and 30 s."""
    return min(max(silent_after(round_seconds) // 10, 5), 30)


def flag_ttl(round_seconds: int) -> int:
    """How long a batch may reuse the flagged probes it last counted: one round (at
    least a minute).  Counting them reads every fresh evidence row, and a flag needs
    outvotes on many proxies, so it moves by rounds, not seconds."""
    return max(round_seconds, 60)


def recount_ahead(ttl: int) -> int:
    """How long before the flags' count expires it is counted again in the background: a
    quarter of its life (at most 5 minutes), time enough for the count at 100,000
    proxies (10,000,000 evidence rows: seconds to tens of seconds on a loaded machine)."""
    return min(ttl // 4, 300)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("counting the flagged probes failed: %s", error)


def is_live(last_batch_at: int | None, *, now: int, round_seconds: int) -> bool:
    return last_batch_at is not None and now - last_batch_at <= silent_after(round_seconds)


@dataclass(frozen=True, slots=True)
class Fleet:
    """What a batch's verdicts need to know about the probes: per vantage network its
    live probes and all its probes, and the probes flagged as lying or broken."""

    live: dict[str, frozenset[int]]
    everyone: dict[str, frozenset[int]]
    flagged: frozenset[int]

    def pool(self, network: str) -> frozenset[int]:
        """The probes a network's replicas are ranked among: its live ones, or all of
        them while none is live (then nobody has replaced the last ones that measured)."""
        return self.live.get(network) or self.everyone.get(network, frozenset())

    def with_live(self, network: str, probe_id: int) -> Fleet:
        """The same fleet with ``probe_id`` live in ``network`` (it is uploading now)."""
        if probe_id in self.live.get(network, frozenset()):
            return self
        live = {**self.live, network: self.live.get(network, frozenset()) | {probe_id}}
        everyone = {**self.everyone, network: self.everyone.get(network, frozenset()) | {probe_id}}
        return Fleet(live, everyone, self.flagged)


def voters(
    key: bytes, fleet: Fleet, *, proxy_ids: Sequence[int], replicas: int
) -> dict[int, frozenset[int]]:
    """Per proxy, the probes whose evidence votes on its verdict: its current replicas in
    every vantage network (ranked among :meth:`Fleet.pool`), less the flagged probes.
    Evidence from any other probe (one that left the proxy's replicas, or a flagged one)
    is kept but does not vote."""
    found: dict[int, set[int]] = {p: set() for p in proxy_ids}
    for network in sorted(fleet.everyone):
        pool = fleet.pool(network)
        if not pool:
            continue
        shards = assign(key, proxy_ids=list(found), probe_ids=sorted(pool), replicas=replicas)
        for row, proxy_id in zip(shards.owners, shards.proxy_ids.tolist(), strict=True):
            found[proxy_id].update(shards.probe_ids[i] for i in row)
    return {p: frozenset(probes - fleet.flagged) for p, probes in found.items()}


class ShardCache:
    """The latest :class:`Shards` of each network, reused while their inputs (the active
    proxies, the live probes, the replica count) stay the same: in a steady fleet every
    probe's pull in a round after the first is a lookup.  A pure memo, so registry
    processes sharing a database need not share it."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[bytes, tuple[int, ...], int], Shards] = OrderedDict()
        #: The fleet as the batch path last read it, and until when to reuse it.
        self._fleet: tuple[int, Fleet] | None = None
        self._flagged: tuple[int, frozenset[int]] | None = None
        self._flagged_at = 0
        #: The count of flags running now, if any (one at a time per process).
        self._counting: asyncio.Task[None] | None = None
        #: Held while one batch reads the fleet: the others wait for that reading instead
        #: of each running the same queries (at a round's start every probe's batch finds
        #: the reading stale at once, and each would hold a pooled connection for it).
        self.refreshing = asyncio.Lock()

    def fleet(self, *, now: int) -> Fleet | None:
        """Who votes, as recently read (see :class:`Fleet`), or ``None`` when too old.

        Only batches reuse it (assignment pulls read the database): a probe that falls
        silent stays in for at most :func:`live_ttl` more, and one that comes back is
        added by :meth:`mark_live` when its batch is stored here, or read by the next
        refresh when another process stored it."""
        if self._fleet is None or now >= self._fleet[0]:
            return None
        return self._fleet[1]

    def remember_fleet(self, fleet: Fleet, *, until: int) -> None:
        self._fleet = (until, fleet)

    def flagged(self, *, now: int) -> frozenset[int] | None:
        """The flagged probes as recently counted, or ``None`` when too old (they are
        counted over all fresh evidence, so less often than the live probes are read)."""
        if self._flagged is None or now >= self._flagged[0]:
            return None
        return self._flagged[1]

    def flags_due(self, *, now: int) -> bool:
        """Whether the flags' count is valid but near its end (its last :func:`recount_ahead`
        seconds), with no recount running: then it is counted again in the background
        (:meth:`recount`) while batches go on using it, so in a steady stream of batches
        none waits for the count, which reads every fresh evidence row (seconds at
        100,000 proxies)."""
        if self._flagged is None or now >= self._flagged[0]:
            return False
        ttl = self._flagged[0] - self._flagged_at
        return now >= self._flagged[0] - recount_ahead(ttl) and (
            self._counting is None or self._counting.done()
        )

    def recount(self, count: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """The running count of flags, or ``count()`` started as one; a task whose failure
        is logged (a batch that awaits it gets the error, one that does not loses nothing:
        the reading it had stays in use until it expires)."""
        if self._counting is None or self._counting.done():
            task = asyncio.create_task(count(), name="probe-flag-count")
            task.add_done_callback(_log_failure)
            self._counting = task
        return self._counting

    async def counted(self) -> None:
        """Wait for the count of flags running now, if any (its failure not raised here)."""
        if self._counting is not None:
            await asyncio.wait({self._counting})

    async def close(self) -> None:
        """Stop a count of flags still running (the registry is shutting down)."""
        if self._counting is not None and not self._counting.done():
            self._counting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._counting

    def remember_flagged(self, flagged: frozenset[int], *, until: int, at: int) -> None:
        self._flagged = (until, flagged)
        self._flagged_at = at

    def mark_live(self, network: str, probe_id: int) -> None:
        if self._fleet is not None:
            self._fleet = (self._fleet[0], self._fleet[1].with_live(network, probe_id))

    def get(
        self, key: bytes, *, proxy_ids: Sequence[int], probe_ids: Sequence[int], replicas: int
    ) -> Shards:
        ids = np.asarray(proxy_ids, dtype=np.int64)
        fingerprint = hashlib.blake2b(ids.tobytes(), key=key[:32], digest_size=16).digest()
        entry = (fingerprint, tuple(sorted(set(probe_ids))), replicas)
        found = self._entries.get(entry)
        if found is None:
            found = assign(key, proxy_ids=ids, probe_ids=entry[1], replicas=replicas)
            self._entries[entry] = found
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(entry)
        return found
