"""Token buckets per client network: in memory for one process, in the database for many.

Clients are grouped by /24 (IPv4) or /48 (IPv6) so that one host cannot dodge
the limit by hopping addresses in its own subnet.

One registry process (SQLite, the default) keeps its buckets in memory
(:class:`TokenBucketLimiter`): a table of at most ``max_clients`` buckets
that forgets the least recently seen first, so a flood of spoofed networks
costs memory bounded by the setting.

Several processes on one PostgreSQL database (``serve --workers N``, or
machines behind a load balancer) must share their buckets, or each would
grant the whole burst again and N processes would let N times the limit
through.  :class:`DatabaseLimiter` keeps them in the ``rate_buckets`` table:
each request is one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``
statement that refills and takes a token atomically (PostgreSQL locks the
row, so two processes never spend the same token), and rows whose bucket
is full again -- which say no more than a missing row -- are pruned in the
background (:func:`prune_buckets`), so the table holds only the networks
seen in the last ``burst / rate`` seconds.  The buckets have their own small
engine (:func:`buckets_engine`): one statement per request in autocommit,
no ping before it, and commits that do not wait for the disk
(``synchronous_commit = off`` on those connections only) -- a bucket lost
in a crash costs nothing, while the default's five round trips and a disk
sync took a loaded machine 10-20 ms on every public request (3 ms so).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Protocol

from sqlalchemy import URL, case, delete, func, literal
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from resistance.registry.models import RateBucket
from resistance.registry.settings import RateLimit


def client_network(host: str | None, *, v4_prefix: int = 24, v6_prefix: int = 48) -> str:
    """The network a client address belongs to, as text (``unknown`` if unparsable)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class Limiter(Protocol):
    async def allow(self, key: str, now: float) -> float:
        """0.0 if a request may pass now, else the seconds until one may."""
        ...


class TokenBucketLimiter:
    """Buckets in this process's memory (one registry process)."""

    __slots__ = ("_buckets", "_limit", "_max")

    def __init__(self, limit: RateLimit, *, max_clients: int) -> None:
        self._limit = limit
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def allow(self, key: str, now: float) -> float:
        return self.take(key, now)

    def take(self, key: str, now: float) -> float:
        """:meth:`allow`, without the event loop."""
        tokens, last = self._buckets.pop(key, (float(self._limit.burst), now))
        tokens = min(float(self._limit.burst), tokens + (now - last) * self._limit.per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self._limit.per_second
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


def buckets_engine(url: str | URL) -> AsyncEngine:
    """The engine the shared buckets are kept through (see the module's docstring)."""
    return create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        connect_args={"server_settings": {"synchronous_commit": "off"}},
    )


class DatabaseLimiter:
    """Buckets in PostgreSQL's ``rate_buckets`` table, shared by every registry process."""

    __slots__ = ("_engine", "_limit", "_name")

    def __init__(self, engine: AsyncEngine, name: str, limit: RateLimit) -> None:
        self._engine = engine
        self._name = name
        self._limit = limit

    async def allow(self, key: str, now: float) -> float:
        rate, burst = self._limit.per_second, float(self._limit.burst)
        row = RateBucket
        # The existing row's bucket refilled up to now (a clock behind the last
        # writer's, on another machine, refills nothing rather than drains).
        refill = func.least(
            literal(burst), row.tokens + func.greatest(literal(now) - row.at, 0.0) * rate
        )
        left = case((refill >= 1.0, refill - 1.0), else_=refill)
        statement = (
            insert(RateBucket)
            .values(
                limiter=self._name,
                client=key,
                tokens=burst - 1.0,
                at=now,
                full_at=now + 1.0 / rate,
                passed=True,
            )
            .on_conflict_do_update(
                index_elements=[row.limiter, row.client],
                set_={
                    "tokens": left,
                    "at": func.greatest(row.at, now),
                    "full_at": func.greatest(row.at, now) + (literal(burst) - left) / rate,
                    "passed": refill >= 1.0,
                },
            )
            .returning(row.tokens, row.passed)
        )
        for attempt in (1, 2):
            try:
                async with self._engine.connect() as connection:
                    tokens, passed = (await connection.execute(statement)).one()
                break
            except DBAPIError as exc:  # a connection the server closed: one more try
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        return 0.0 if passed else (1.0 - tokens) / rate


def make_limiter(
    buckets: AsyncEngine | None, name: str, limit: RateLimit, *, max_clients: int
) -> Limiter:
    """Shared buckets through ``buckets`` (PostgreSQL), else in this process's memory."""
    if buckets is not None:
        return DatabaseLimiter(buckets, name, limit)
    return TokenBucketLimiter(limit, max_clients=max_clients)


async def prune_buckets(engine: AsyncEngine, *, now: float) -> int:
    """Forget buckets that are full again (as good as never seen); how many went."""
    async with engine.begin() as connection:
        result = await connection.execute(delete(RateBucket).where(RateBucket.full_at <= now))
    return int(result.rowcount or 0)
