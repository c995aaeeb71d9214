"""What a client session uses of the listener that accepted it, beyond a node's own.

:class:`~resistance.client.session.ClientSession` forwards through upstreams
instead of dialing destinations; this is all it asks of
:class:`~resistance.client.listener.ConnectNode` for that.  Naming it here,
below both, keeps the session from importing the listener that imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import asyncio

    from resistance.client.upstreams import UpstreamPool


class UpstreamHost(Protocol):
    """The listener as its client sessions see it."""

    loop: asyncio.AbstractEventLoop
    pool: UpstreamPool
    """The upstreams, in the order to try them, with their health."""
    dial_timeout: float
    """Seconds for one dial through one upstream."""
    max_attempts: int
    """Upstreams tried for one request at most."""
    race_after: float | None
    """Seconds before a slow dial gets a rival on the next upstream (``None``: never)."""
    dial_failures: int
    """Failed dials so far, counted by the sessions for the status file."""
