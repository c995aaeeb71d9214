"""Handing out non-public proxies a few at a time (as Tor's rdsys does).

Every proxy sits on a ring at ``HMAC(key, "proxy" | endpoint)``.  A requester
is placed at ``HMAC(key, "req" | network | day)``, where network is its /16
(IPv4) or /32 (IPv6) and day the UTC date, and gets the ``k`` proxies that
follow that point.  Asking again from the same network on the same day gives
the same answer, so a censor learns new proxies only by asking from many
networks over many days: with S networks and M proxies it enumerates about
``1 - (1 - k/M)^S`` of them (``bench/enumeration.py`` measures this).
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
from collections.abc import Sequence
from typing import TypeVar

from resistance.registry.ratelimit import client_network

T = TypeVar("T")


def _point(key: bytes, label: bytes, text: str) -> int:
    return int.from_bytes(hmac.new(key, label + b"\0" + text.encode(), hashlib.sha256).digest()[:8])


def requester_key(host: str | None, day: str) -> str:
    """What a requester is known by: its /16 or /32 network and the UTC day."""
    return f"{client_network(host, v4_prefix=16, v6_prefix=32)}|{day}"


class HashRing:
    """Items on a ring by keyed hash; :meth:`pick` takes ``k`` after a point."""

    __slots__ = ("_key", "_points")

    def __init__(self, key: bytes, names: Sequence[str]) -> None:
        self._key = key
        self._points = sorted((_point(key, b"proxy", name), name) for name in set(names))

    def __len__(self) -> int:
        return len(self._points)

    def pick(self, requester: str, k: int) -> list[str]:
        if not self._points:
            return []
        start = bisect.bisect_left(self._points, (_point(self._key, b"req", requester), ""))
        count = min(k, len(self._points))
        return [self._points[(start + i) % len(self._points)][1] for i in range(count)]
