"""Connections counted per client address, for the per-address cap every listener has."""

from __future__ import annotations


class PerAddress:
    """How many connections each client address holds, under a cap.

    Only addresses with a connection open are kept, so the table is bounded
    by the listener's own connection cap.
    """

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def take(self, ip: str) -> bool:
        """Count one more connection from ``ip``, or say no when it holds ``limit``."""
        count = self.counts.get(ip, 0)
        if count >= self.limit:
            return False
        self.counts[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        """One connection from ``ip`` has closed."""
        count = self.counts.get(ip, 0) - 1
        if count > 0:
            self.counts[ip] = count
        else:
            self.counts.pop(ip, None)

    def __len__(self) -> int:
        return len(self.counts)
