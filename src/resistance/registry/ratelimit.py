"""Token buckets per client network, in memory, with a bounded table.

Clients are grouped by /24 (IPv4) or /48 (IPv6) so that one host cannot dodge
the limit by hopping addresses in its own subnet.  The table keeps at most
``max_clients`` buckets and forgets the least recently seen first, so a flood
of spoofed networks costs memory bounded by the setting.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

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


class TokenBucketLimiter:
    __slots__ = ("_buckets", "_limit", "_max")

    def __init__(self, limit: RateLimit, *, max_clients: int) -> None:
        self._limit = limit
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> float:
        """0.0 if a request may pass now, else the seconds until one may."""
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
